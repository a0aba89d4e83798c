"""What every stage shares: its result, dataset facts, seeds and op determinism."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobiletag.config import Config, HardLoss
from mobiletag.data.tfrecords import read_labels, read_stats
from mobiletag.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """Figures for the KFP UI (``metrics``) and the files written (``files``)."""

    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetFacts:
    classes: list[str]
    num_train: int
    num_val: int
    num_test: int
    train_positives: list[int]  # per class, in the order of ``classes``

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def positive_weights(self, loss: HardLoss) -> list[float] | None:
        """The hard loss's per-class positive weights from the training split (``weighted_bce``), else None."""
        from mobiletag.training.losses import positive_weights  # TensorFlow: not for the light paths

        return positive_weights(loss, self.train_positives, self.num_train)


def dataset_facts(dataset_dir: str | Path) -> DatasetFacts:
    stats = read_stats(dataset_dir)
    splits = stats["splits"]
    classes = read_labels(dataset_dir)
    return DatasetFacts(
        classes=classes,
        num_train=splits["train"]["num_images"],
        num_val=splits["val"]["num_images"],
        num_test=splits["test"]["num_images"],
        train_positives=[splits["train"]["positives"].get(name, 0) for name in classes],
    )


def steps_per_epoch(num_images: int, batch_size: int, key: str) -> int:
    """Full batches per epoch (training drops the remainder); an error when there are none."""
    if num_images < batch_size:
        raise ConfigError(
            f"config key '{key}' is {batch_size} but the training split has only {num_images} images; "
            f"set {key} to at most {num_images}"
        )
    return num_images // batch_size


def seed_everything(config: Config) -> None:
    """Python's, NumPy's and TensorFlow's global seeds from ``config.seed`` (weight initialisation,
    dropout; the input pipeline and augmentation take ``config.seed`` directly)."""
    import tf_keras as keras

    keras.utils.set_random_seed(config.seed)


@contextlib.contextmanager
def reproducibility(config: Config) -> Iterator[bool]:
    """A training stage's scope: the seeds set from ``config.seed`` and, with ``config.reproducible``,
    TensorFlow op determinism on; yields whether it is on.

    ``tf.config.experimental.enable_op_determinism`` makes every op pick a deterministic kernel
    (on GPU: cuDNN convolution algorithms, and XLA with ``xla_gpu_deterministic_ops``), makes
    tf.data's ``deterministic`` arguments true, and makes an unseeded random op an error (the
    seeds set here cover Keras' initialisers and dropout). The setting is process-wide: the
    previous state comes back on exit, so a later stage or test in the same process (the
    in-process local runner, pytest) is not changed by it. With ``reproducible: false`` the
    state is left as it is (off unless the process turned it on).
    """
    import tensorflow as tf

    seed_everything(config)
    if config.reproducible:
        one_inter_op_thread()
        if onednn_enabled():
            log.warning(
                "reproducible: TensorFlow's oneDNN CPU kernels are on (TF_ENABLE_ONEDNN_OPTS=1, or TensorFlow was "
                "imported before mobiletag): under load a training step may not repeat bit for bit; unset "
                "TF_ENABLE_ONEDNN_OPTS (mobiletag turns them off) or set reproducible: false"
            )
    elif not onednn_enabled():
        log.info(
            "reproducible: false: TF_ENABLE_ONEDNN_OPTS=1 in the environment would turn TensorFlow's oneDNN CPU "
            "kernels on (a CPU student step about 1.5x faster: bench/README.md, determinism rows)"
        )
    before = op_determinism_enabled()
    if config.reproducible and not before:
        tf.config.experimental.enable_op_determinism()
    log.info(
        "seed %d, reproducible %s (op determinism %s)",
        config.seed,
        "on" if config.reproducible else "off",
        "on" if op_determinism_enabled() else "off",
    )
    try:
        yield op_determinism_enabled()
    finally:
        if not before:
            from tensorflow.python.framework import config as tf_config

            tf_config.disable_op_determinism()  # not exported by TensorFlow: see op_determinism_enabled


def one_inter_op_thread() -> bool:
    """Run a step's independent ops one after the other (each op still uses every core); whether it
    holds in this process.

    Op determinism alone is not enough on CPU: with the teacher's forward pass running beside the
    student's in the distillation step, two runs of the demo's student stage in two processes
    gave different weights from the first epoch; with one inter-op thread they are bit-identical
    (tests/unit/test_reproducible.py). TensorFlow fixes the setting when its runtime starts, so it
    must come before the first op of the process: a training stage's process sets it on entry,
    `mobiletag train --runner inprocess` at its start. Where the runtime already runs (a test
    session, a notebook) it is left as it is, with a warning.
    """
    import tensorflow as tf

    if tf.config.threading.get_inter_op_parallelism_threads() == 1:
        return True
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        log.warning(
            "reproducible: TensorFlow's runtime started before this stage, so its inter-op parallelism cannot be "
            "set to 1 here: a distillation step may not repeat bit for bit in another process (run the stage in a "
            "process of its own, as the pipeline does)"
        )
        return False
    return True


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN CPU kernels in this process (``TF_ENABLE_ONEDNN_OPTS``, read
    once when TensorFlow is imported; ``import mobiletag`` sets it to 0 unless it is set).

    With them on, a training step does not always repeat bit for bit under load: of 20 student
    stages run two at a time beside a busy loop, 4 came out with other weights (the same other
    weights each time, from the first epoch with the backbone trainable); with them off, 0 of 27
    did. The likely cause: TensorFlow's oneDNN adapter (``mkl_threadpool.h``) runs a call on a
    single thread when it comes from one of the intra-op pool's own threads, which depends on
    timing, and a reduction then sums in another order (oneDNN promises the same result only
    for the same thread count).
    """
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def op_determinism_enabled() -> bool:
    """Whether TensorFlow op determinism is on in this process (also through TF_DETERMINISTIC_OPS).

    TensorFlow exports only ``tf.config.experimental.enable_op_determinism``; the getter and
    ``disable_op_determinism`` (which its own tests use) live beside it in
    ``tensorflow.python.framework.config``.
    """
    from tensorflow.python.framework import config as tf_config

    return bool(tf_config.is_op_determinism_enabled())

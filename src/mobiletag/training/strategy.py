"""Devices: distribution strategy, precision policy, XLA, and the check that GPUs are there."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import tensorflow as tf
import tf_keras as keras

from mobiletag.config import MultiGpuConfig
from mobiletag.errors import TrainingError
from mobiletag.training import precision

log = logging.getLogger(__name__)


def require_gpus(expected: int, cfg: MultiGpuConfig, key: str = "multi_gpu.require_gpu") -> int:
    """The number of GPUs TensorFlow sees; an error when GPUs were asked for and there are none.

    ``expected`` is what the step was given (the pipeline's GPU steps pass their GPU count):
    a node that has GPUs but a TensorFlow that cannot use them would otherwise train on the
    CPU for days.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if (expected > 0 or cfg.require_gpu) and not gpus:
        build = tf.sysconfig.get_build_info()
        asked = f"this step was given {expected} GPU(s)" if expected > 0 else f"config key '{key}' is true"
        if not build.get("is_cuda_build", False):
            cause = (
                f"this TensorFlow {tf.__version__} is a CPU-only build; install the CUDA build "
                "(pip install 'tensorflow[and-cuda]') or use the component image"
            )
        else:
            cause = (
                f"TensorFlow {tf.__version__} is built for CUDA {build.get('cuda_version', '?')} / cuDNN "
                f"{build.get('cudnn_version', '?')} but found no usable GPU: check the node's NVIDIA driver "
                "(nvidia-smi; it must support that CUDA version), that the pod requested nvidia.com/gpu and "
                "landed on a GPU node, and that CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES do not hide them"
            )
        raise TrainingError(f"{asked}, but TensorFlow sees no GPU: {cause}. Stopped instead of training on the CPU.")
    if expected > 0 and len(gpus) < expected:
        log.warning("this step was given %d GPUs but TensorFlow sees %d", expected, len(gpus))
    return len(gpus)


def get_strategy(cfg: MultiGpuConfig, devices: list[str] | None = None) -> tf.distribute.Strategy:
    """MirroredStrategy over all GPUs when enabled and more than one is visible, else default.

    ``devices`` forces a MirroredStrategy over the named devices (tests use two logical CPUs).
    One MirroredStrategy per device set and process (:func:`_mirrored`).
    """
    if devices:
        return _mirrored(tuple(devices))
    gpus = tf.config.list_physical_devices("GPU")
    if cfg.enabled and len(gpus) > 1:
        strategy = _mirrored(None)
        log.info("MirroredStrategy over %d GPUs", strategy.num_replicas_in_sync)
        return strategy
    log.info("single device (%s)", "GPU" if gpus else "CPU")
    return tf.distribute.get_strategy()


_MIRRORED: dict[tuple[str, ...] | None, tf.distribute.MirroredStrategy] = {}


def _mirrored(devices: tuple[str, ...] | None) -> tf.distribute.MirroredStrategy:
    """The process's MirroredStrategy over ``devices`` (None: every GPU), created once.

    A second MirroredStrategy in a process numbers its all-reduces from the same instance keys as
    the first, and its first training step then fails with "Shape mismatch in the collective
    instance 100" (tensorflow#62790): the teacher and then the student in one process (the
    in-process runner on a multi-GPU workstation) must share one.
    """
    if devices not in _MIRRORED:
        _MIRRORED[devices] = tf.distribute.MirroredStrategy(list(devices) if devices else None)
    return _MIRRORED[devices]


def set_precision(cfg: MultiGpuConfig) -> str:
    """Set the global Keras precision policy from ``multi_gpu.mixed_precision``; its name."""
    return precision.set_precision(str(cfg.mixed_precision))


def use_jit(cfg: MultiGpuConfig) -> bool:
    """XLA for the training step: ``auto`` = only when a GPU is visible (on CPU it is slower)."""
    if cfg.jit_compile == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return bool(cfg.jit_compile)


def enable_memory_growth() -> None:
    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):  # already initialised
            tf.config.experimental.set_memory_growth(gpu, True)


@dataclass(frozen=True)
class Devices:
    """Where and how a training stage runs."""

    strategy: tf.distribute.Strategy
    policy: str  # the global Keras precision policy
    jit_compile: bool
    steps_per_execution: int
    gpus: int

    def compile(self, model: keras.Model, learning_rate: Any) -> None:
        """Compile ``model`` (a Trainer) with Adam at ``learning_rate`` (a rate or a schedule), in
        this strategy's scope, with its XLA and steps-per-execution choices."""
        with self.strategy.scope():
            model.compile(
                optimizer=keras.optimizers.Adam(learning_rate),
                jit_compile=self.jit_compile,
                steps_per_execution=self.steps_per_execution,
            )


@contextlib.contextmanager
def training_devices(
    cfg: MultiGpuConfig, expected_gpus: int = 0, devices: list[str] | None = None
) -> Iterator[Devices]:
    """Check the GPUs, then choose the strategy, the precision policy and XLA from ``multi_gpu``.

    The global precision policy is float32 again on exit: a later stage in the same process
    (the in-process runner) starts from the default.
    """
    gpus = require_gpus(expected_gpus, cfg)
    enable_memory_growth()
    strategy = get_strategy(cfg, devices)
    policy = set_precision(cfg)
    try:
        yield Devices(strategy, policy, use_jit(cfg), cfg.steps_per_execution, gpus)
    finally:
        precision.set_precision("float32")

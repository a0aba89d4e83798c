"""Devices: distribution strategy, precision policy, XLA, and the check that GPUs are there."""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf
import tf_keras as keras

from mobiletag.config import MultiGpuConfig
from mobiletag.errors import TrainingError
from mobiletag.training import precision
from mobiletag.training.optimizer import OptimizerRecipe

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
            cuda = str(build.get("cuda_version", "?"))
            branch = DRIVER_FOR_CUDA.get(".".join(cuda.split(".")[:2]), f"one for CUDA {cuda}")
            cause = (
                f"TensorFlow {tf.__version__} is built for CUDA {cuda} / cuDNN {build.get('cudnn_version', '?')} "
                f"but found no usable GPU: check the node's NVIDIA driver (here: {nvidia_driver_version()}; it must "
                f"be {branch} or newer, or R525+ through CUDA 12 minor-version compatibility, which cannot JIT PTX; "
                "nvidia-smi), that the pod requested nvidia.com/gpu and "
                "landed on a GPU node, and that CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES do not hide them"
            )
        raise TrainingError(f"{asked}, but TensorFlow sees no GPU: {cause}. Stopped instead of training on the CPU.")
    if expected > 0 and len(gpus) < expected:
        log.warning("this step was given %d GPUs but TensorFlow sees %d", expected, len(gpus))
    return len(gpus)


# the NVIDIA driver branch each CUDA 12 minor version needs (CUDA toolkit release notes, Linux)
DRIVER_FOR_CUDA = {"12.0": "R525", "12.1": "R530", "12.2": "R535", "12.3": "R545", "12.4": "R550", "12.5": "R555",
                   "12.6": "R560", "12.8": "R570", "12.9": "R575"}  # fmt: skip
NVIDIA_VERSION_FILE = Path("/proc/driver/nvidia/version")


def visible_gpus() -> list[str]:
    """TensorFlow's logical GPU devices (``/device:GPU:0`` ...), in order."""
    return [device.name for device in tf.config.list_logical_devices("GPU")]


def run_test_op(device: str) -> None:
    """A 64x64 matmul placed on ``device``, read back and checked (it raises when the GPU cannot run it)."""
    with tf.device(device):
        ones = tf.ones((64, 64))
        total = float(tf.reduce_sum(tf.linalg.matmul(ones, ones)).numpy())
    if total != 64.0**3:
        raise RuntimeError(f"a 64x64 matmul of ones summed to {total}, expected {64**3}")


def gpu_details(device: str) -> dict[str, Any]:
    """``tf.config.experimental.get_device_details`` of the physical GPU behind ``device`` ({} if unknown)."""
    try:
        index = int(device.rsplit(":", 1)[1])
        return dict(tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[index]))
    except (IndexError, ValueError, RuntimeError):
        return {}


def nvidia_driver_version(version_file: Path = NVIDIA_VERSION_FILE, smi: str = "nvidia-smi") -> str:
    """The NVIDIA kernel driver's version (from ``version_file``, else ``nvidia-smi``), or "unknown"."""
    try:
        found = re.search(r"Kernel Module\s+([0-9][0-9.]*)", version_file.read_text())
        if found:
            return found.group(1)
    except OSError:
        pass
    if shutil.which(smi):
        try:
            out = subprocess.run(
                [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return "unknown"


def gpu_failure_message(device: str, error: BaseException, details: dict[str, Any], driver: str) -> str:
    """What failed on ``device``, with the driver, TensorFlow's CUDA / cuDNN build and what to do."""
    build = tf.sysconfig.get_build_info()
    cuda = str(build.get("cuda_version", "?"))
    cudnn = str(build.get("cudnn_version", "?"))
    shipped = [str(c) for c in build.get("cuda_compute_capabilities", [])]
    branch = DRIVER_FOR_CUDA.get(".".join(cuda.split(".")[:2]), f"one for CUDA {cuda}")
    name = details.get("device_name", "unknown GPU")
    capability = details.get("compute_capability")
    cc = f"{capability[0]}.{capability[1]}" if capability else "unknown"
    if capability and f"sm_{capability[0]}{capability[1]}" not in shipped:
        ptx = [c for c in shipped if c.startswith("compute_")]
        advice = (
            f"This TensorFlow ships machine code for {', '.join(c for c in shipped if c.startswith('sm_'))} only, "
            f"so the driver must JIT-compile its {'/'.join(ptx) or 'PTX'} for compute capability {cc}: that needs "
            f"a driver of branch {branch} or newer (built with CUDA {cuda}); upgrade the node's driver (on GKE: the "
            "node pool's GPU driver version 'latest', or a newer node image)"
        )
    else:
        advice = (
            f"Check the node: the driver must run CUDA {cuda} ({branch} or newer; R525+ through CUDA 12 "
            "minor-version compatibility), nvidia-smi must list the "
            "GPU without errors (ECC, Xid in the kernel log); replace the node if the GPU is faulty"
        )
    first_line = (str(error).strip().splitlines() or [""])[0].rstrip(".")
    return (
        f"GPU check failed on {device} ({name}, compute capability {cc}): a 64x64 matmul could not run: "
        f"{type(error).__name__}: {first_line}. "
        f"NVIDIA driver {driver}; TensorFlow {tf.__version__} built for CUDA {cuda}, cuDNN {cudnn}, compute "
        f"capabilities {', '.join(shipped) or 'unknown'}. {advice}. Stopped before training."
    )


def check_gpus(
    devices: list[str] | None = None,
    run_op: Callable[[str], None] | None = None,
    details: Callable[[str], dict[str, Any]] | None = None,
    driver: Callable[[], str] | None = None,
) -> int:
    """Run one small op on each visible GPU (``devices``, default :func:`visible_gpus`); how many passed.

    Raises:
        TrainingError: an op failed; the message names the GPU, the NVIDIA driver, TensorFlow's
            CUDA / cuDNN build and compute capabilities, and what to do (e.g. an H100 needs a
            driver that can JIT-compile the build's PTX).
    """
    names = visible_gpus() if devices is None else devices
    for device in names:
        try:
            (run_op or run_test_op)(device)
        except Exception as exc:
            message = gpu_failure_message(
                device, exc, (details or gpu_details)(device), (driver or nvidia_driver_version)()
            )
            raise TrainingError(message) from exc
    if names:
        log.info("GPU check: a matmul ran on each of %d GPU(s)", len(names))
    return len(names)


def prepare_gpus(expected: int, cfg: MultiGpuConfig) -> int:
    """:func:`require_gpus`, memory growth, then (when the step was given GPUs) :func:`check_gpus`."""
    gpus = require_gpus(expected, cfg)
    enable_memory_growth()  # before the check: the first op initialises the GPUs, fixing their memory mode
    if expected > 0 and gpus:
        check_gpus()
    return gpus


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

    def compile(self, model: keras.Model, learning_rate: Any, recipe: OptimizerRecipe | None = None) -> None:
        """Compile ``model`` (a Trainer) with ``recipe``'s optimizer (default: Adam) at ``learning_rate``
        (a rate or a schedule), in this strategy's scope, with its XLA and steps-per-execution choices."""
        with self.strategy.scope():
            model.compile(
                optimizer=(recipe or OptimizerRecipe()).build(learning_rate),
                jit_compile=self.jit_compile,
                steps_per_execution=self.steps_per_execution,
            )


@contextlib.contextmanager
def training_devices(
    cfg: MultiGpuConfig, expected_gpus: int = 0, devices: list[str] | None = None
) -> Iterator[Devices]:
    """Check the GPUs (each runs one op when the step was given GPUs), then choose the strategy, the precision policy and XLA from ``multi_gpu``.

    The global precision policy is float32 again on exit: a later stage in the same process
    (the in-process runner) starts from the default.
    """
    gpus = prepare_gpus(expected_gpus, cfg)
    strategy = get_strategy(cfg, devices)
    policy = set_precision(cfg)
    try:
        yield Devices(strategy, policy, use_jit(cfg), cfg.steps_per_execution, gpus)
    finally:
        precision.set_precision("float32")


@contextlib.contextmanager
def one_device(cfg: MultiGpuConfig, expected_gpus: int = 0) -> Iterator[Devices]:
    """Check the GPUs, then one device in float32 without XLA (QAT: tfmot supports neither mixed
    precision nor tf.distribute); ``multi_gpu.steps_per_execution`` still groups steps."""
    gpus = prepare_gpus(expected_gpus, cfg)
    policy = precision.set_precision("float32")
    yield Devices(tf.distribute.get_strategy(), policy, False, cfg.steps_per_execution, gpus)

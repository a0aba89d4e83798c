"""Distribution strategy and precision policy."""

from __future__ import annotations

import contextlib
import logging

import tensorflow as tf
import tf_keras as keras

from mobiletag.config import MultiGpuConfig

log = logging.getLogger(__name__)


def get_strategy(cfg: MultiGpuConfig, devices: list[str] | None = None) -> tf.distribute.Strategy:
    """MirroredStrategy over all GPUs when enabled and more than one is visible, else default.

    ``devices`` forces a MirroredStrategy over the named devices (tests use two logical CPUs).
    """
    if devices:
        return tf.distribute.MirroredStrategy(devices)
    gpus = tf.config.list_physical_devices("GPU")
    if cfg.enabled and len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        log.info("MirroredStrategy over %d GPUs", strategy.num_replicas_in_sync)
        return strategy
    log.info("single device (%s)", "GPU" if gpus else "CPU")
    return tf.distribute.get_strategy()


def set_precision(cfg: MultiGpuConfig) -> str:
    """mixed_bfloat16 on Ampere+ GPUs, mixed_float16 on older ones, float32 on CPU."""
    policy = "float32"
    gpus = tf.config.list_physical_devices("GPU")
    if cfg.mixed_precision and gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        capability = details.get("compute_capability", (0, 0))
        policy = "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16"
    keras.mixed_precision.set_global_policy(policy)
    return policy


def enable_memory_growth() -> None:
    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):  # already initialised
            tf.config.experimental.set_memory_growth(gpu, True)

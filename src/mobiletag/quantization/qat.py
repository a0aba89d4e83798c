"""Quantization-aware training with tensorflow-model-optimization.

QAT runs on one device: tfmot does not support tf.distribute officially, and its results
change with the replica count.

tfmot starts every activation range at [-6, 6] and moves it by an exponential moving
average with decay 0.999 per training step: after the ~100 steps of a short QAT run the
ranges have moved ~10% of the way, so ReLU6 outputs waste half their 256 levels on
[-6, 0] and wider tensors (residual sums, projections, logits) are clipped.
:func:`calibrate_ranges` first fits every range to the data, as post-training
quantization would, and QAT then trains from there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

log = logging.getLogger(__name__)


def quantize(model: keras.Model) -> keras.Model:
    """The float student with fake-quantization wrappers (8-bit weights and activations)."""
    return tfmot.quantization.keras.quantize_model(model)


def load_qat_model(path: str | Path) -> keras.Model:
    with tfmot.quantization.keras.quantize_scope():
        return keras.models.load_model(path, compile=False)


@contextlib.contextmanager
def _range_decay(decay: float) -> Iterator[None]:
    """Trace the quantizers' moving-average range updates with another decay than 0.999."""
    original = quant_ops.MovingAvgQuantize

    def moving_avg_quantize(*args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["ema_decay"] = decay
        return original(*args, **kwargs)

    quant_ops.MovingAvgQuantize = moving_avg_quantize
    try:
        yield
    finally:
        quant_ops.MovingAvgQuantize = original


def _batch_norm_layers(model: keras.Model) -> list[keras.layers.Layer]:
    found = []
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)  # QuantizeWrapper(BatchNormalization)
        if isinstance(inner, keras.layers.BatchNormalization):
            found.append(inner)
    return found


def calibrate_ranges(
    model: keras.Model,
    images: tf.data.Dataset,
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    batches: int = 20,
    decay: float = 0.8,
) -> int:
    """Fit the activation ranges of a fresh QAT model to the data; weights stay unchanged.

    Runs forward passes in training mode (the mode in which tfmot updates ranges) with every
    BatchNormalization layer frozen (inference mode, statistics untouched) and a range decay
    of ``decay`` instead of 0.999: after 20 batches the [-6, 6] start weighs 0.8^20 = 1%.
    ``images`` yields image batches (float [0, 255]). Returns the number of batches used.
    """
    batch_norms = _batch_norm_layers(model)
    trainable = [layer.trainable for layer in batch_norms]
    for layer in batch_norms:
        layer.trainable = False
    used = 0
    try:
        with _range_decay(decay):
            forward = tf.function(lambda x: model(preprocess(x), training=True))
            for batch in images.take(batches):
                forward(batch)
                used += 1
    finally:
        for layer, flag in zip(batch_norms, trainable):
            layer.trainable = flag
    log.info("qat: activation ranges calibrated on %d batches", used)
    return used

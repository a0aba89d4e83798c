"""Quantization-aware training with tensorflow-model-optimization.

QAT runs on one device: tfmot does not support tf.distribute officially, and its results
change with the replica count.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow_model_optimization as tfmot
import tf_keras as keras


def quantize(model: keras.Model) -> keras.Model:
    """The float student with fake-quantization wrappers (8-bit weights and activations)."""
    return tfmot.quantization.keras.quantize_model(model)


def load_qat_model(path: str | Path) -> keras.Model:
    with tfmot.quantization.keras.quantize_scope():
        return keras.models.load_model(path, compile=False)

"""evaluate's float models run traced (tf.function, one fixed batch shape), within 1e-5 of eager calls."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras

from mobiletag.models.student import preprocess
from mobiletag.stages.evaluate import keras_scorer


class CountingModel:
    """A Keras model that counts its Python calls: a traced scorer calls it only while tracing."""

    def __init__(self, model: keras.Model) -> None:
        self.model, self.calls = model, 0
        self.input_shape, self.output_shape = model.input_shape, model.output_shape

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def _model(size: int, num_classes: int = 5) -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(x))
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


def test_traced_scorer_matches_eager_calls_and_traces_once():
    model = CountingModel(_model(24))
    pixels = np.random.default_rng(0).integers(0, 256, (2 * 16 + 5, 24, 24, 3)).astype(np.uint8)
    size, score = keras_scorer(model, normalise=True, batch_size=16)  # type: ignore[arg-type]
    assert size == 24
    batches = [pixels[:16], pixels[16:32], pixels[32:], pixels[:40]]  # the last: longer than one batch, split
    got = [score(b) for b in batches]
    assert model.calls == 1, model.calls  # eager scoring called the model once per batch (4 + 1 here)
    for batch, scores in zip(batches, got):
        eager = tf.sigmoid(model.model(preprocess(tf.constant(batch, tf.float32)), training=False)).numpy()
        assert scores.shape == eager.shape == (len(batch), 5)
        assert float(np.max(np.abs(scores - eager))) <= 1e-5
    assert score(pixels[:0]).shape == (0, 5)

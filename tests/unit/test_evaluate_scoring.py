"""evaluate's float models run traced (tf.function, one fixed batch shape), within TRACED_TOLERANCE of eager calls."""

from __future__ import annotations

import numpy as np
import tf_keras as keras

from mobiletag.models.student import build_student
from mobiletag.stages.evaluate import TRACED_TOLERANCE, eager_scorer, keras_scorer


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
    _, eager = eager_scorer(model.model, normalise=True)
    for batch, scores in zip(batches, got):
        want = eager(batch)
        assert scores.shape == want.shape == (len(batch), 5)
        assert float(np.max(np.abs(scores - want))) <= TRACED_TOLERANCE
    assert score(pixels[:0]).shape == (0, 5)


def test_traced_student_matches_eager_calls_within_the_tolerance():
    """The pipeline's student architecture (EfficientNet-Lite1, small input), and raw pixels as the teacher takes them."""
    keras.utils.set_random_seed(5)
    student = build_student(4, 32)
    pixels = np.random.default_rng(1).integers(0, 256, (19, 32, 32, 3)).astype(np.uint8)
    for normalise in (True, False):
        _, traced = keras_scorer(student, normalise=normalise, batch_size=8)
        _, eager = eager_scorer(student, normalise=normalise)
        got, want = traced(pixels), eager(pixels)
        assert got.shape == want.shape == (19, 4)
        assert float(np.max(np.abs(got - want))) <= TRACED_TOLERANCE
    assert eager_scorer(student, normalise=True)[0] == 32

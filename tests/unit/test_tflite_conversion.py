"""The INT8 conversion: what it saves on the way, and the flatbuffer's signature."""

from __future__ import annotations

import numpy as np


def test_conversion_saves_the_variables_not_the_keras_model(monkeypatch):
    """The converter lowers through a SavedModel of the object it is given: the Keras model would
    be saved with every layer traced again (most of the export stage's time on the demo)."""
    import tf_keras as keras
    from ai_edge_litert.interpreter import Interpreter
    from tensorflow.python.saved_model import save as saved_model_save

    from mobiletag.export.tflite import convert_int8

    saved = []
    original = saved_model_save.save

    def recording_save(obj, *args, **kwargs):  # type: ignore[no-untyped-def]
        saved.append(obj)
        return original(obj, *args, **kwargs)

    monkeypatch.setattr(saved_model_save, "save", recording_save)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    representative = np.random.default_rng(0).uniform(0, 255, size=(4, 16, 16, 3)).astype(np.float32)

    flatbuffer = convert_int8(model, representative)

    assert len(saved) == 1 and not isinstance(saved[0], keras.Model)
    assert {id(v) for v in saved[0].trainable_variables} == {id(v) for v in model.trainable_variables}
    signatures = Interpreter(model_content=flatbuffer).get_signature_list()
    assert signatures == {"serving_default": {"inputs": ["image"], "outputs": ["output_0"]}}

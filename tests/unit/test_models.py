"""Teacher and student architectures."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from mobiletag.models.student import build_student, preprocess, round_filters
from mobiletag.models.teacher import backbone_layers, build_teacher, set_phase


@pytest.mark.parametrize(
    ("variant", "low", "high"),
    # published ImageNet parameter counts: Lite0 4.7M, Lite1 5.4M, Lite2 6.1M
    [("efficientnet_lite0", 4.6e6, 4.8e6), ("efficientnet_lite1", 5.3e6, 5.5e6), ("efficientnet_lite2", 6.0e6, 6.2e6)],
)
def test_student_parameter_count_matches_published(variant, low, high):
    model = build_student(1000, 224, variant)
    assert low <= model.count_params() <= high


def test_student_is_flat_quantizable_and_lite_shaped():
    model = build_student(6, 64, "efficientnet_lite1")
    assert model.output_shape == (None, 6)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # one flat model
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "Multiply" not in kinds and "Rescaling" not in kinds and "Normalization" not in kinds
    assert all(layer.max_value == 6.0 for layer in model.layers if isinstance(layer, keras.layers.ReLU))
    assert all(
        layer.activation.__name__ == "linear" for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
    )
    assert model.get_layer("stem_conv").filters == 32 and model.get_layer("top_conv").filters == 1280
    # depth 1.1: block groups 2-6 get ceil(1.1 * repeats); first and last stay
    groups = {}
    for layer in model.layers:
        if layer.name.startswith("block") and layer.name.endswith("_dwconv"):
            groups.setdefault(layer.name[5], set()).add(layer.name[6])
    assert [len(groups[str(g)]) for g in range(1, 8)] == [1, 3, 3, 4, 4, 5, 1]
    quantized = tfmot.quantization.keras.quantize_model(model)  # accepted unchanged
    out = quantized(np.zeros((2, 64, 64, 3), np.float32))
    assert out.shape == (2, 6)
    assert round_filters(40, 1.1) == 48 and round_filters(32, 1.0) == 32


def test_student_preprocess_range():
    x = preprocess(np.array([0.0, 127.0, 255.0]))
    np.testing.assert_allclose(x.numpy(), [-127 / 128, 0.0, 1.0])


def test_teacher_phases():
    model = build_teacher(5, 64, weights="none")
    assert model.output_shape == (None, 5)
    body = backbone_layers(model)
    set_phase(model, "warmup", 0.3)
    assert not any(layer.trainable for layer in body)
    assert model.get_layer("logits").trainable
    set_phase(model, "finetune", 0.3, pretrained=True)
    top = body[len(body) - round(len(body) * 0.3) :]
    bottom = body[: len(body) - round(len(body) * 0.3)]
    assert not any(layer.trainable for layer in bottom)
    assert all(layer.trainable != isinstance(layer, keras.layers.BatchNormalization) for layer in top)
    set_phase(model, "finetune", 0.3, pretrained=False)  # random backbone: train it all
    assert all(layer.trainable for layer in body)


def test_weights_from_file(tmp_path):
    from mobiletag.errors import ConfigError

    with pytest.raises(ConfigError, match=r"config key 'teacher.weights' is '/no/such\.h5'"):
        build_teacher(3, 32, weights="/no/such.h5")


def test_qat_range_calibration_fits_ranges_and_changes_nothing_else():
    import tensorflow as tf

    from mobiletag.quantization.qat import calibrate_ranges, quantize

    keras.utils.set_random_seed(0)
    qat = quantize(build_student(4, 32, "efficientnet_lite0"))
    ranges = {v.name: v for v in qat.variables if v.name.endswith(("output_min:0", "output_max:0"))}
    relu_min = ranges["quant_stem_relu6/output_min:0"]
    assert relu_min.numpy() == -6.0  # tfmot's start
    others = {v.name: v.numpy().copy() for v in qat.variables if not v.name.endswith(("_min:0", "_max:0"))}
    images = tf.data.Dataset.from_tensor_slices(np.random.default_rng(0).uniform(0, 255, (40, 32, 32, 3)))
    used = calibrate_ranges(qat, images.map(lambda x: tf.cast(x, tf.float32)).batch(4).repeat(), preprocess)
    assert used == 20
    assert -0.1 < relu_min.numpy() <= 0.0  # ReLU6 outputs are >= 0: the range no longer wastes [-6, 0]
    assert ranges["quant_stem_relu6/output_max:0"].numpy() <= 6.0
    for name, before in others.items():  # weights and BatchNormalization statistics untouched
        np.testing.assert_array_equal(before, next(v for v in qat.variables if v.name == name).numpy(), err_msg=name)
    assert all(layer.trainable for layer in qat.layers)  # frozen only while calibrating

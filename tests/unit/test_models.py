"""Teacher and student architectures."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot
import tf_keras as keras

from mobiletag.errors import ConfigError
from mobiletag.models.student import build_student, preprocess, round_filters
from mobiletag.models.teacher import INPUT_LAYERS, backbone_layers, build_teacher, set_phase
from mobiletag.training import precision
from mobiletag.training.precision import cast_model, choose_policy, float32_copy, load_float32, set_precision


@pytest.fixture(autouse=True)
def float32_policy():
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


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
    assert body[0].name == "stem_conv_pad" and body[-1].name == "avg_pool"  # no input normalisation, no head
    set_phase(model, "head", 0.3)
    assert not any(layer.trainable for layer in body)
    assert model.get_layer("logits").trainable
    set_phase(model, "fine_tune", 0.3, pretrained=True)
    top = body[len(body) - round(len(body) * 0.3) :]
    bottom = body[: len(body) - round(len(body) * 0.3)]
    assert not any(layer.trainable for layer in bottom)
    assert all(layer.trainable != isinstance(layer, keras.layers.BatchNormalization) for layer in top)
    set_phase(model, "fine_tune", 0.3, pretrained=False)  # random backbone: train it all
    assert all(layer.trainable for layer in body)
    assert not any(model.get_layer(name).trainable for name in INPUT_LAYERS)  # fixed preprocessing


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


# === Precision ===


@pytest.fixture
def gpus(monkeypatch):
    """Pretend TensorFlow sees GPUs of the given compute capabilities."""
    import tensorflow as tf

    def install(*capabilities):
        devices = [f"/physical_device:GPU:{i}" for i in range(len(capabilities))]
        details = dict(zip(devices, capabilities))
        real = tf.config.list_physical_devices
        monkeypatch.setattr(
            tf.config, "list_physical_devices", lambda kind=None: devices if kind == "GPU" else real(kind)
        )
        monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda d: {"compute_capability": details[d]})

    return install


@pytest.mark.parametrize(
    ("capabilities", "mode", "policy"),
    [
        ((), "auto", "float32"),  # no GPU
        ((), "bfloat16", "mixed_bfloat16"),  # forced on the CPU
        ((), "float16", "mixed_float16"),
        ((), "float32", "float32"),
        (((8, 0),), "auto", "mixed_bfloat16"),  # A100
        (((9, 0), (9, 0)), "auto", "mixed_bfloat16"),  # H100s
        (((7, 5),), "auto", "mixed_float16"),  # T4
        (((8, 0), (7, 0)), "auto", "mixed_float16"),  # mixed node: the oldest GPU decides
        (((8, 0),), "float32", "float32"),
        (((7, 5),), "bfloat16", "mixed_bfloat16"),
        (((8, 6),), " Float16 ", "mixed_float16"),
    ],
)
def test_choose_policy(gpus, capabilities, mode, policy):
    gpus(*capabilities)
    assert choose_policy(mode) == policy


def test_set_precision_sets_the_global_policy_and_rejects_unknown_modes():
    assert set_precision("bfloat16") == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert set_precision("float32") == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(ConfigError, match=r"'multi_gpu.mixed_precision' is 'fp16'; choose one of auto, float32, bfl"):
        set_precision("fp16")
    for boolean in ("true", "false"):
        with pytest.raises(ConfigError, match=f"is '{boolean}'; choose one of auto, float32, bfloat16, float16$"):
            set_precision(boolean)
    assert keras.mixed_precision.global_policy().name == "float32"


def _randomize(model: keras.Model, seed: int = 0) -> None:
    """Move every float weight off its initial value (BatchNormalization variances stay positive)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if not weight.dtype.is_floating:
            continue
        value = weight.numpy()
        value = (
            rng.uniform(0.5, 1.5, value.shape)
            if "variance" in weight.name
            else value + rng.normal(0, 0.05, value.shape)
        )
        weight.assign(value.astype(weight.dtype.as_numpy_dtype))
    for layer in model.layers:
        layer.finalize_state()  # Normalization reads its mean/variance here


def _models():
    return {
        "teacher": lambda: build_teacher(4, 32, weights="none"),
        "student": lambda: build_student(4, 32, "efficientnet_lite0"),
    }


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_mixed_checkpoint_loads_as_float32(kind, tmp_path):
    set_precision("bfloat16")
    mixed = _models()[kind]()
    _randomize(mixed)
    policies = precision.layer_policies(mixed)
    assert policies["logits"] == "float32" and "mixed_bfloat16" in policies.values()
    path = tmp_path / f"{kind}.h5"
    mixed.save(str(path))

    keras.mixed_precision.set_global_policy("float32")
    plain = keras.models.load_model(str(path), compile=False)
    assert precision.layer_policies(plain) == policies  # what load_model alone gives: the mixed model again
    loaded = load_float32(path)
    assert set(precision.layer_policies(loaded).values()) == {"float32"}
    assert all(w.dtype == "float32" for w in loaded.weights if w.dtype.is_floating)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in mixed.layers]
    assert [layer.trainable for layer in loaded.layers] == [layer.trainable for layer in mixed.layers]
    before, after = mixed.get_weights(), loaded.get_weights()
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.astype(np.float32), b)

    x = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    x = x if kind == "teacher" else preprocess(x).numpy()
    y_mixed = mixed(x, training=False).numpy()
    y_float = loaded(x, training=False).numpy()
    assert y_mixed.dtype == y_float.dtype == np.float32
    scale = np.abs(y_float).max()
    assert scale > 1e-3  # the randomised network gives non-trivial outputs
    assert np.abs(y_mixed - y_float).max() < 0.05 * scale  # bfloat16 rounding only
    assert not np.array_equal(y_mixed, y_float)  # the loaded model really computes in float32


def test_cast_model_both_ways_keeps_normalisation_and_logits_float32():
    model = build_teacher(3, 32, weights="none")
    mixed = cast_model(model, "mixed_float16")
    policies = precision.layer_policies(mixed)
    float32_layers = {name for name, policy in policies.items() if policy == "float32"}
    assert float32_layers == {"image", *INPUT_LAYERS, "logits"}
    assert set(policies.values()) == {"float32", "mixed_float16"}
    back = float32_copy(mixed)
    assert set(precision.layer_policies(back).values()) == {"float32"}
    for a, b in zip(model.get_weights(), back.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        cast_model(model, "mixed_int4")

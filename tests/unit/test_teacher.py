"""The teacher is Keras' EfficientNetB3(weights="imagenet"), input normalisation included,
for every weight source and under any precision policy; proved without a download.

The weights file is written in Keras' own format (save_weights of a B3 built with
weights=None, random values), as the image's baked efficientnetb3_notop.h5 would be.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import tf_keras as keras
from tf_keras.src.utils import data_utils

from mobiletag.errors import ConfigError
from mobiletag.models import teacher
from mobiletag.models.teacher import (
    IMAGENET_FILE,
    IMAGENET_MD5,
    IMAGENET_URL,
    build_teacher,
    download_imagenet_weights,
    imagenet_weights_path,
)
from mobiletag.training.precision import set_precision

SIZE = 48  # the model's input side; the weights file is written from a 32 px model (the size does not matter)
RNG = np.random.default_rng(7)


def write_b3_weights(path: Path, image_size: int = 32, seed: int = 0) -> Path:
    """save_weights of Keras' EfficientNetB3 notop, every weight moved off its initial value.

    The Normalization layer gets non-trivial mean/variance as the ImageNet file has; variances
    stay positive.
    """
    model = keras.applications.EfficientNetB3(
        include_top=False, weights=None, pooling="avg", input_shape=(image_size, image_size, 3)
    )
    rng = np.random.default_rng(seed)
    values = []
    for weight in model.weights:
        value = weight.numpy()
        if "variance" in weight.name:
            value = rng.uniform(0.5, 1.5, value.shape)
        elif "count" not in weight.name:
            value = value + rng.normal(0.0, 0.05, value.shape)
        values.append(value.astype(weight.dtype.as_numpy_dtype))
    model.set_weights(values)
    normalization = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    mean = rng.uniform(0.4, 0.5, 3)  # about the ImageNet statistics the real file holds
    normalization.set_weights([mean, rng.uniform(0.22, 0.23, 3) ** 2, normalization.get_weights()[2]])
    model.save_weights(str(path))
    return path


@pytest.fixture(autouse=True)
def float32_policy():
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="module")
def b3_weights(tmp_path_factory) -> Path:
    keras.mixed_precision.set_global_policy("float32")
    return write_b3_weights(tmp_path_factory.mktemp("b3") / "random_b3_notop.h5")


@pytest.fixture
def offline(monkeypatch):
    """Keras' get_file fails as it does without network; the calls are recorded."""
    calls = []

    def no_network(*args, **kwargs):
        calls.append((args, kwargs))
        raise Exception(f"URL fetch failure on {IMAGENET_URL}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(data_utils, "get_file", no_network)
    return calls


def pooled(model: keras.Model) -> keras.Model:
    """The teacher up to its pooled features (the layer before head_dropout)."""
    return keras.Model(model.input, model.get_layer("avg_pool").output)


def images(n: int = 3) -> np.ndarray:
    return RNG.uniform(0.0, 255.0, (n, SIZE, SIZE, 3)).astype(np.float32)


def test_weights_file_gives_keras_imagenet_network(b3_weights, monkeypatch):
    asked = []

    def baked_file(fname, origin, **kwargs):
        asked.append((fname, kwargs.get("file_hash")))
        return str(b3_weights)

    monkeypatch.setattr(data_utils, "get_file", baked_file)
    reference = keras.applications.EfficientNetB3(
        include_top=False, weights="imagenet", pooling="avg", input_shape=(SIZE, SIZE, 3)
    )
    assert asked == [(IMAGENET_FILE, IMAGENET_MD5)]  # the same file name and hash that teacher.py asks for
    model = build_teacher(4, SIZE, weights=str(b3_weights))

    x = images()
    expected = reference(x, training=False).numpy()
    got = pooled(model)(x, training=False).numpy()
    assert expected.std() > 0.05  # random but far from trivial features
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert model.output_shape == (None, 4)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # one flat model
    names = [layer.name for layer in model.layers]
    assert names[:5] == ["image", "input_rescaling", "input_normalization", "input_stddev_rescaling", "stem_conv_pad"]
    np.testing.assert_allclose(
        model.get_layer("input_stddev_rescaling").scale, [1 / np.sqrt(s) for s in (0.229, 0.224, 0.225)], rtol=1e-7
    )

    # what weights=None + load_weights (the old code path) gives: inputs at ~0.47x scale, other features
    old_way = keras.applications.EfficientNetB3(
        include_top=False, weights=None, pooling="avg", input_shape=(SIZE, SIZE, 3)
    )
    old_way.load_weights(str(b3_weights))
    assert np.abs(old_way(x, training=False).numpy() - expected).max() > 10 * 1e-6 + 0.01 * np.abs(expected).max()


def test_imagenet_is_the_cached_file(b3_weights, tmp_path, monkeypatch, offline):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(b3_weights, cache / IMAGENET_FILE)
    monkeypatch.setenv("MOBILETAG_CACHE_DIR", str(cache))
    assert imagenet_weights_path() == cache / IMAGENET_FILE

    from_imagenet = build_teacher(4, SIZE, weights="imagenet")
    from_file = build_teacher(4, SIZE, weights=str(b3_weights))
    assert offline == []  # the file was there: no download attempted
    x = images()
    np.testing.assert_array_equal(pooled(from_imagenet)(x).numpy(), pooled(from_file)(x).numpy())
    for a, b in zip(from_imagenet.layers, from_file.layers):
        assert a.name == b.name
        if a.name != "logits":  # the head is initialised at random
            for wa, wb in zip(a.get_weights(), b.get_weights()):
                np.testing.assert_array_equal(wa, wb)


def test_imagenet_without_file_or_network_says_where_it_is_baked(tmp_path, monkeypatch, offline):
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("MOBILETAG_CACHE_DIR", str(cache))
    with pytest.raises(ConfigError) as info:
        build_teacher(3, 32, weights="imagenet")
    message = str(info.value)
    assert "config key 'teacher.weights' is 'imagenet'" in message
    assert str(cache / IMAGENET_FILE) in message
    assert "/opt/mobiletag/weights/efficientnetb3_notop.h5" in message
    assert "MOBILETAG_CACHE_DIR" in message and "gs:// URI" in message and "'none'" in message
    assert "Temporary failure in name resolution" in message
    assert isinstance(info.value.__cause__, Exception)
    # Keras was asked for the file in the cache directory itself (not ~/.keras), hash checked
    ((args, kwargs),) = offline
    assert args == (IMAGENET_FILE, IMAGENET_URL)
    assert kwargs == {"cache_subdir": "", "cache_dir": str(cache), "file_hash": IMAGENET_MD5}


def test_download_imagenet_weights_writes_the_cache_file(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MOBILETAG_CACHE_DIR", str(cache))

    def fake_get_file(fname, origin, cache_subdir, cache_dir, file_hash):
        path = Path(cache_dir, cache_subdir, fname)
        path.write_bytes(b"h5")
        path.chmod(0o600)  # a restrictive umask at build time
        return str(path)

    monkeypatch.setattr(data_utils, "get_file", fake_get_file)
    path = download_imagenet_weights()
    assert path == cache / IMAGENET_FILE and path.read_bytes() == b"h5"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by the image's non-root user

    monkeypatch.setattr(data_utils, "get_file", lambda *a, **k: pytest.fail("downloaded again"))
    assert imagenet_weights_path() == path


def test_wrong_weights_file_is_a_config_error(tmp_path):
    from mobiletag.models.student import build_student

    wrong = tmp_path / "student.h5"
    build_student(3, 32, "efficientnet_lite0").save_weights(str(wrong))
    with pytest.raises(ConfigError, match=r"config key 'teacher.weights' .*not EfficientNetB3 notop weights"):
        build_teacher(3, 32, weights=str(wrong))


@pytest.mark.parametrize("source", ["file", "imagenet"])
def test_teacher_builds_and_runs_under_bfloat16(source, b3_weights, tmp_path, monkeypatch, offline):
    """Under bfloat16 both sources build and run: the input normalisation (Rescaling, Normalization,
    the 1/sqrt(stddev) layer) computes in float32, with no float32 multiply on bfloat16 inputs."""
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(b3_weights, cache / IMAGENET_FILE)
    monkeypatch.setenv("MOBILETAG_CACHE_DIR", str(cache))
    x = images()
    float32_model = build_teacher(4, SIZE, weights=str(b3_weights))
    reference = pooled(float32_model)(x).numpy()
    normalised = keras.Model(float32_model.input, float32_model.get_layer("input_stddev_rescaling").output)(x)

    assert set_precision("bfloat16") == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    model = build_teacher(4, SIZE, weights=str(b3_weights) if source == "file" else "imagenet")

    normalisation = [
        layer for layer in model.layers if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))
    ]
    assert [layer.name for layer in normalisation] == list(teacher.INPUT_LAYERS)
    for layer in [*normalisation, model.get_layer("logits")]:
        assert layer.dtype_policy.name == "float32", layer.name
        assert {w.dtype.name for w in layer.weights if w.dtype.is_floating} <= {"float32"}, layer.name
    body = [layer for layer in model.layers if layer.name not in ("image", "logits", *teacher.INPUT_LAYERS)]
    assert len(body) > 300
    assert {layer.dtype_policy.name for layer in body} == {"mixed_bfloat16"}
    assert model.get_layer("stem_conv").compute_dtype == "bfloat16"

    out = model(x, training=False)
    assert out.dtype == "float32" and np.isfinite(out.numpy()).all()
    # the input normalisation runs in float32: bit for bit what the float32 teacher computes
    stem_input = keras.Model(model.input, model.get_layer("input_stddev_rescaling").output)(x)
    assert stem_input.dtype == "float32"
    np.testing.assert_array_equal(stem_input.numpy(), normalised.numpy())
    features = pooled(model)(x, training=False)
    assert features.dtype == "bfloat16"
    # the same network in bfloat16 (8 bits of mantissa through 26 blocks)
    error = np.abs(features.numpy().astype(np.float32) - reference).max()
    assert error < 0.05 * np.abs(reference).max(), (error, np.abs(reference).max())

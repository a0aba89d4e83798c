"""EfficientNet-Lite, written in tf_keras from layers tensorflow-model-optimization can quantize.

Architecture source: Google's EfficientNet-Lite (github.com/tensorflow/tpu,
models/official/efficientnet/lite/efficientnet_lite_builder.py, and the QAT variant
efficientnet_lite_model_qat.py). Lite differs from EfficientNet in: no squeeze-and-excitation,
ReLU6 instead of swish, and the stem (32 filters) and head (1280 filters) fixed when scaling,
as are the repeats of the first and last block groups. Lite1: width 1.0, depth 1.1, 240 px,
dropout 0.2.

The model is one flat functional model (no nested models, no Rescaling), which QAT needs.
Its input is the image normalised as the original training did: (x - 127) / 128, which
:func:`preprocess` does; with a uint8 TFLite input, an app feeds raw RGB pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf
import tf_keras as keras
from tf_keras import layers

# name: (width coefficient, depth coefficient, resolution, dropout)
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": (1.4, 1.8, 300, 0.3),
}

INPUT_MEAN = 127.0
INPUT_STD = 128.0
BN_MOMENTUM = 0.99
BN_EPSILON = 1e-3
STEM_FILTERS = 32
HEAD_FILTERS = 1280


@dataclass(frozen=True)
class BlockArgs:
    kernel: int
    repeats: int
    filters_in: int
    filters_out: int
    expand_ratio: int
    stride: int


# The EfficientNet-B0 block table (SE ratio dropped for Lite).
BLOCKS = (
    BlockArgs(3, 1, 32, 16, 1, 1),
    BlockArgs(3, 2, 16, 24, 6, 2),
    BlockArgs(5, 2, 24, 40, 6, 2),
    BlockArgs(3, 3, 40, 80, 6, 2),
    BlockArgs(5, 3, 80, 112, 6, 1),
    BlockArgs(5, 4, 112, 192, 6, 2),
    BlockArgs(3, 1, 192, 320, 6, 1),
)


def _conv_init() -> keras.initializers.Initializer:
    # a new instance per layer: one shared instance would give every layer the same weights
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="truncated_normal")


def _dense_init() -> keras.initializers.Initializer:
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_out", distribution="uniform")


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale channel counts by width, keeping them multiples of 8 (as the reference does)."""
    if width == 1.0:
        return filters
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


def preprocess(images: tf.Tensor) -> tf.Tensor:
    """float RGB in [0, 255] -> the student's input range [-0.99, 1.0]."""
    return (tf.cast(images, tf.float32) - INPUT_MEAN) / INPUT_STD


# === Layers ===


def _conv_bn(x: tf.Tensor, filters: int | None, kernel: int, stride: int, name: str, relu: bool = True) -> tf.Tensor:
    """Convolution ('same' padding, no bias), BatchNormalization, then ReLU6 unless ``relu`` is false.

    ``filters`` None: a depthwise convolution ``<name>_dwconv``, then ``<name>_dw_bn`` and
    ``<name>_dw_relu6``; else a Conv2D ``<name>_conv``, then ``<name>_bn`` and ``<name>_relu6``.
    """
    same = {"strides": stride, "padding": "same", "use_bias": False}
    if filters is None:
        x = layers.DepthwiseConv2D(kernel, depthwise_initializer=_conv_init(), name=f"{name}_dwconv", **same)(x)
        name = f"{name}_dw"
    else:
        x = layers.Conv2D(filters, kernel, kernel_initializer=_conv_init(), name=f"{name}_conv", **same)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    if relu:
        x = layers.ReLU(6.0, name=f"{name}_relu6")(x)
    return x


def _mbconv(x: tf.Tensor, args: BlockArgs, filters_in: int, filters_out: int, stride: int, name: str) -> tf.Tensor:
    """Inverted residual block without squeeze-and-excitation."""
    inputs = x
    expanded = filters_in * args.expand_ratio
    if args.expand_ratio != 1:
        x = _conv_bn(x, expanded, 1, 1, f"{name}_expand")
    x = _conv_bn(x, None, args.kernel, stride, name)
    x = _conv_bn(x, filters_out, 1, 1, f"{name}_project", relu=False)
    if stride == 1 and filters_in == filters_out:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


# === Model ===


def build_student(
    num_classes: int,
    image_size: int,
    variant: str = "efficientnet_lite1",
    dropout: float | None = None,
    include_top: bool = True,
) -> keras.Model:
    """EfficientNet-Lite with a multi-label head: dropout + dense logits (one per class)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown student variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    width, depth, _, default_dropout = VARIANTS[variant]
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = _conv_bn(inputs, STEM_FILTERS, 3, 2, "stem")  # stem fixed in Lite
    last = len(BLOCKS) - 1
    for b, args in enumerate(BLOCKS):
        filters_in = STEM_FILTERS if b == 0 else round_filters(args.filters_in, width)
        filters_out = round_filters(args.filters_out, width)
        repeats = args.repeats if b in (0, last) else round_repeats(args.repeats, depth)
        for r in range(repeats):
            x = _mbconv(
                x,
                args,
                filters_in if r == 0 else filters_out,
                filters_out,
                args.stride if r == 0 else 1,
                name=f"block{b + 1}{chr(ord('a') + r)}",
            )
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "top")  # head fixed in Lite
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        rate = default_dropout if dropout is None else dropout
        if rate > 0:
            x = layers.Dropout(rate, name="top_dropout")(x)
        x = layers.Dense(num_classes, kernel_initializer=_dense_init(), dtype="float32", name="logits")(x)
    return keras.Model(inputs, x, name=variant)


def train_head_only(model: keras.Model, head_only: bool, freeze_batch_norm: bool = False) -> int:
    """Freeze (``head_only``) or unfreeze the backbone; the dense head always trains.

    Frozen BatchNormalization layers run in inference mode (tf_keras), so the head phase keeps
    the pretrained statistics as they are; with ``freeze_batch_norm`` the fine-tuning keeps them
    too (as the teacher's fine-tuning does). Returns the number of trainable layers with weights.
    """
    for layer in model.layers:
        frozen_bn = freeze_batch_norm and isinstance(layer, layers.BatchNormalization)
        layer.trainable = layer.name == "logits" or not (head_only or frozen_bn)
    return sum(1 for layer in model.layers if layer.trainable and layer.weights)

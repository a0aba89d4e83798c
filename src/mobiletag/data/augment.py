"""Augmentation inside the training step: uint8 crops in, float32 views out.

The input pipeline (:mod:`mobiletag.data.tf_input`) hands the step one uint8 random-resized
crop per image at the largest training resolution and a per-example stateless seed.
:class:`TrainAugment` does the rest on the device that runs the step (the accelerator when
there is one): conversion to float32, horizontal flip, colour jitter (brightness, contrast,
saturation) and one resize per model resolution. Every resolution gets the same flip, jitter
and resize method: one augmented image, seen by the teacher and the student at their own sizes.

The resize method is drawn per example from ``resize_methods`` (TensorFlow's bilinear,
MediaPipe's top-left aligned bilinear, nearest neighbour, antialiased bilinear, area): apps
resize in different ways (MediaPipe Tasks without antialiasing, PIL and most image libraries
with), and the model should not depend on which. Each configured method resizes the whole
batch and every example keeps the one it drew (a gather, as the flip); antialiased bilinear and
area, which XLA cannot compile, run as two matrix products with the 1-D resize matrices, which
are computed once, outside the graph.

Everything is batched TensorFlow (no Python per example), float32 whatever the Keras
precision policy, and XLA-compatible (``jit_compile=True``): saturation is a blend with the
greyscale image (as torchvision does) rather than TensorFlow's HSV round trip, and the three
colour adjustments compose into one per-example 3x3 affine map. Jitter is applied once, at the
crop's resolution, before the resizes.

Per-example random values come from the example's own seed, never from a batch-level one:
an example is augmented the same way whatever the batch size, the replica it lands on, or
the number of replicas. TensorFlow's stateless ops take one seed per call, so the values are
drawn with SplitMix64 (Steele, Lea and Flood, OOPSLA 2014; Java's ``SplittableRandom``) in
batched int64 arithmetic: wrapping multiplies, xors and shifts, identical on CPU, GPU and
under XLA. The pipeline's seeds are themselves Philox outputs (``stateless_split``) of a
``tf.data.Dataset.random`` stream seeded with ``config.seed``: with ``config.reproducible`` each
example gets the same seed, hence the same crop, flip and jitter, in every run.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from mobiletag.config import AugmentConfig

# SplitMix64 constants as signed int64 (the same bits as the published unsigned values).
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)
_UNIFORM_BITS = 24  # float32 holds 24-bit integers exactly: uniforms on a grid of 2**-24
# ITU-R 601 luma weights, as tf.image.rgb_to_grayscale
_LUMA = (0.2989, 0.5870, 0.1140)

# per-example random values, by position (a value depends on its column only, not on how many are drawn)
_FLIP, _BRIGHTNESS, _CONTRAST, _SATURATION, _RESIZE = range(5)
_NUM_RANDOM = 5


def _resize_matrix(source: int, size: int, method: str) -> tf.Tensor:
    """float32 [size, source]: the 1-D resize as a matrix, from resizing the identity with TensorFlow.

    The identity [source, source] is resized as an image of height ``source``, width 1 and
    ``source`` channels; computed eagerly (``tf.init_scope``), so a traced or XLA-compiled step
    holds a constant.
    """
    with tf.init_scope():
        eye = tf.eye(source, dtype=tf.float32)[tf.newaxis, :, tf.newaxis, :]
        tf_method = "bilinear" if method == "bilinear_antialias" else method
        rows = tf.image.resize(eye, [size, 1], method=tf_method, antialias=method == "bilinear_antialias")
        return tf.constant(rows[0, :, 0, :].numpy())


def resize(x: tf.Tensor, size: int, method: str) -> tf.Tensor:
    """Resize a float32 batch [B, S, S, C] to [B, size, size, C] with one of ``RESIZE_METHODS``.

    ``mediapipe`` is ``ResizeBilinear`` with ``half_pixel_centers=False``: output pixel ``d``
    samples input ``d * S / size``, as MediaPipe Tasks' OpenCV warp (which works on a 1/32-px
    grid: within a fraction of a level). ``bilinear_antialias`` and ``area`` are matrix products
    (XLA-compatible); their crops need a static side.
    """
    if method == "bilinear":
        return tf.image.resize(x, [size, size], method="bilinear")
    if method == "mediapipe":
        return tf.raw_ops.ResizeBilinear(images=x, size=[size, size], align_corners=False, half_pixel_centers=False)
    if method == "nearest":
        return tf.image.resize(x, [size, size], method="nearest")
    if method not in ("bilinear_antialias", "area"):
        raise ValueError(f"resize: unknown method {method!r}; use one of {', '.join(RESIZE_METHODS)}")
    source = x.shape[1]
    if source is None or x.shape[2] != source:
        raise ValueError(f"resize: {method} needs square crops of a static side, got shape {x.shape}")
    matrix = _resize_matrix(int(source), size, method)
    rows = tf.einsum("is,bsxc->bixc", matrix, x)
    return tf.einsum("jx,bixc->bijc", matrix, rows)


RESIZE_METHODS = ("bilinear", "mediapipe", "nearest", "bilinear_antialias", "area")


def crop_size(sizes: Sequence[int]) -> int:
    """Side of the uint8 crop the input pipeline hands the step for these view sizes."""
    if not sizes:
        raise ValueError("crop_size: no image sizes given; pass at least one resolution (e.g. [240])")
    return max(int(s) for s in sizes)


def to_float(images: tf.Tensor) -> tf.Tensor:
    """An evaluation batch (uint8, 0-255) as float32 0-255: a cast, no augmentation."""
    return tf.cast(images, tf.float32)


def _shift_right(x: tf.Tensor, bits: int) -> tf.Tensor:
    """Logical right shift of int64 (tf.bitwise.right_shift is arithmetic on signed types)."""
    return tf.bitwise.bitwise_and(tf.bitwise.right_shift(x, bits), tf.constant((1 << (64 - bits)) - 1, tf.int64))


def _mix64(z: tf.Tensor) -> tf.Tensor:
    """SplitMix64's finaliser: a bijection of int64 that spreads every input bit over the output."""
    z = tf.bitwise.bitwise_xor(z, _shift_right(z, 30)) * tf.constant(_MIX1, tf.int64)
    z = tf.bitwise.bitwise_xor(z, _shift_right(z, 27)) * tf.constant(_MIX2, tf.int64)
    return tf.bitwise.bitwise_xor(z, _shift_right(z, 31))


def stateless_uniforms(seeds: tf.Tensor, num: int) -> tf.Tensor:
    """float32 [B, num] in [0, 1): ``num`` values per example, a pure function of its seed.

    Args:
        seeds: int64 [B, 2], one seed per example (other integer types are cast).
        num: values per example.
    """
    seeds = tf.cast(seeds, tf.int64)
    # one 64-bit state per example from both seed words, then SplitMix64's stream from it
    state = _mix64(seeds[:, 0:1] * tf.constant(_GOLDEN, tf.int64) + _mix64(seeds[:, 1:2]))
    steps = tf.range(1, num + 1, dtype=tf.int64)[tf.newaxis, :] * tf.constant(_GOLDEN, tf.int64)
    bits = _shift_right(_mix64(state + steps), 64 - _UNIFORM_BITS)
    return tf.cast(bits, tf.float32) * (1.0 / (1 << _UNIFORM_BITS))


def _flip(images: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    """Mirror the examples where ``flip`` [B] is true.

    A gather of whole images from [images; mirrored images]: on CPU it costs a fraction of a
    broadcast ``tf.where`` over every pixel.
    """
    batch = tf.shape(images)[0]
    both = tf.concat([images, tf.reverse(images, axis=[2])], axis=0)
    return tf.gather(both, tf.range(batch) + batch * tf.cast(flip, tf.int32))


class TrainAugment:
    """uint8 crops and per-example seeds -> one float32 view per size, the same augmentation in each.

    Args:
        sizes: the views' sides in output order (teacher first, student last when distilling);
            the crops handed to ``__call__`` are ``crop_size(sizes)`` square.
        aug: flip, colour-jitter and resize-method settings (``random_resized_crop`` and
            ``crop_area_min`` act in the input pipeline, not here).
    """

    def __init__(self, sizes: Sequence[int], aug: AugmentConfig) -> None:
        self.sizes = [int(s) for s in sizes]
        self.crop_size = crop_size(self.sizes)
        self.aug = aug

    def __repr__(self) -> str:
        return f"TrainAugment(sizes={self.sizes}, aug={self.aug})"

    def __call__(self, images: tf.Tensor, seeds: tf.Tensor) -> list[tf.Tensor]:
        """Augment a batch.

        Args:
            images: uint8 [B, S, S, 3], RGB (S is normally ``crop_size``; any S works).
            seeds: int64 [B, 2], one stateless seed per example.

        Returns:
            One float32 [B, s, s, 3] tensor in [0, 255] per size in ``sizes``, in that order.
        """
        with tf.name_scope("train_augment"):
            u = stateless_uniforms(seeds, _NUM_RANDOM)
            if self.aug.flip:
                images = _flip(images, u[:, _FLIP] < 0.5)  # on uint8: a quarter of the bytes
            x = to_float(images)
            if self.aug.color_jitter:
                x = self._jitter(x, u)
            methods: list[str] = list(self.aug.resize_methods)
            choice = tf.minimum(tf.cast(u[:, _RESIZE] * len(methods), tf.int32), len(methods) - 1)
            return [self._resize(x, s, methods, choice) for s in self.sizes]

    def _jitter(self, x: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
        """Brightness, contrast, saturation, then a clip to 0-255, as one per-example affine map.

        In sequence (as tf.image.adjust_*): ``y = x + d``; ``y = (y - mean(y)) * k + mean(y)``
        with the per-channel image mean; ``y = g + (y - g) * f`` with ``g`` the greyscale
        (luma) image. All three are affine in the pixel, so they compose into ``M x + c`` with a
        3x3 ``M`` and a 3-vector ``c`` per example: one batched matmul instead of a full-image
        pass per operation (no intermediate clip, as in the sequence; on GPUs where float32
        matmuls run as TF32, pixels move by a fraction of a level).
        """
        aug = self.aug

        def factor(column: int, amount: float) -> tf.Tensor:  # [B], uniform in [-amount, amount]
            return (2.0 * u[:, column] - 1.0) * amount

        shape = tf.shape(x)
        pixels = tf.reshape(x, [shape[0], -1, 3])  # [B, H*W, 3]
        delta = factor(_BRIGHTNESS, aug.brightness * 255.0)[:, tf.newaxis]
        contrast = 1.0 + factor(_CONTRAST, aug.contrast)[:, tf.newaxis, tf.newaxis]
        saturation = 1.0 + factor(_SATURATION, aug.saturation)[:, tf.newaxis, tf.newaxis]
        mean = tf.reduce_mean(pixels, axis=1)  # [B, 3], before the brightness shift
        shift = delta + (1.0 - contrast[:, :, 0]) * mean  # brightness and contrast: contrast * x + shift
        luma = tf.constant(_LUMA, tf.float32)[tf.newaxis, tf.newaxis, :]
        blend = saturation * tf.eye(3, batch_shape=[1]) + (1.0 - saturation) * luma  # [B, 3 out, 3 in]
        matrix = contrast * blend
        offset = tf.linalg.matvec(blend, shift)  # [B, 3]
        out = tf.matmul(pixels, matrix, transpose_b=True) + offset[:, tf.newaxis, :]
        return tf.ensure_shape(tf.reshape(tf.clip_by_value(out, 0.0, 255.0), shape), x.shape)

    def _resize(self, x: tf.Tensor, size: int, methods: list[str], choice: tf.Tensor) -> tf.Tensor:
        """Every example resized with ``methods[choice]`` (choice int32 [B])."""
        if x.shape[1] == size and x.shape[2] == size:
            return x  # every method leaves an image of the target size as it is
        distinct = list(dict.fromkeys(methods))
        if len(distinct) == 1:
            return resize(x, size, distinct[0])
        outputs = [resize(x, size, method) for method in distinct]
        which = tf.gather(tf.constant([distinct.index(m) for m in methods], tf.int32), choice)
        batch = tf.shape(x)[0]
        return tf.gather(tf.concat(outputs, axis=0), tf.range(batch) + batch * which)

"""The app's input path: how an image file becomes the model's input tensor on a phone.

Apps run the model with MediaPipe Tasks' ``ImageClassifier``. This module reproduces what the
documented app path does, so that ``mobiletag predict``, threshold search and evaluation measure
what an app gets:

1. decode the file (PIL), apply its EXIF orientation, convert to RGB (grey is replicated,
   palette expanded, an alpha channel dropped: MediaPipe's ``COLOR_RGBA2RGB``);
2. pre-scale in the app: average blocks of ``kx`` x ``ky`` pixels, ``kx = W // width``,
   ``ky = H // height`` for a ``width`` x ``height`` model input (:func:`prescale`; an image
   less than twice the input size on an axis keeps that axis). MediaPipe's resize has no
   antialiasing: from a phone photo it would keep one pixel in 5-60 and alias the rest;
3. hand the result to MediaPipe, which resizes the whole image (no crop, no padding, aspect
   ratio not kept) to the model's input size: :func:`mediapipe_resize`, here by a factor
   between 1 and 2 (or an upscale).

MediaPipe's ``ImageToTensorOpenCvConverter``
(``mediapipe/calculators/tensor/image_to_tensor_converter_opencv.cc``) maps the region of
interest (here the whole image, rotation 0) onto the tensor with ``cv::getPerspectiveTransform``
and ``cv::warpPerspective(INTER_LINEAR, BORDER_REPLICATE)``. Its sampling is top-left aligned
(output pixel ``d`` reads input ``d * in / out``, not half-pixel centred), without
antialiasing, on OpenCV's fixed-point grid: source coordinates are rounded to 1/32 px and
the bilinear weights are 5-bit fractions. :func:`mediapipe_resize` ports that arithmetic to
numpy and is bit-identical to ``mediapipe`` 0.10.21 and 1.2.2 (checked on 300+ images, sizes
7-2000 px, up- and downscaling).

The pre-scale is integer arithmetic (block sums, ``(sum + n // 2) // n``), so an app in any
language computes the same bytes; docs/app.md has it in Kotlin and Python. This file imports
only numpy and PIL: the MediaPipe tool (``mediapipe_tool.py``) loads it by path to pre-scale
the images it hands MediaPipe in the same way.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image

_SUBPIXEL_BITS = 5  # OpenCV INTER_BITS: coordinates on a 1/32 px grid
_SUBPIXEL = 1 << _SUBPIXEL_BITS
_WEIGHT_BITS = 15  # INTER_REMAP_COEF_BITS: bilinear weights in 15-bit fixed point


# === OpenCV's arithmetic ===


def _lu_solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``cv::hal::LU64f``: Gaussian elimination with partial pivoting, in OpenCV's order of operations."""
    a, b = a.copy(), b.copy()
    m = a.shape[0]
    for i in range(m):
        k = i + int(np.argmax(np.abs(a[i:, i])))  # the first maximum, as OpenCV's strict '>'
        if k != i:
            a[[i, k], i:] = a[[k, i], i:]
            b[[i, k]] = b[[k, i]]
        d = -1.0 / a[i, i]
        for j in range(i + 1, m):
            alpha = a[j, i] * d
            for kk in range(i + 1, m):
                a[j, kk] += alpha * a[i, kk]
            b[j] += alpha * b[i]
    for i in range(m - 1, -1, -1):
        s = b[i]
        for kk in range(i + 1, m):
            s -= a[i, kk] * b[kk]
        b[i] = s / a[i, i]
    return b


def _perspective_matrix(width: int, height: int, out_w: int, out_h: int) -> np.ndarray:
    """``cv::getPerspectiveTransform`` from the whole image's corners to the tensor's corners."""
    src = np.array([[0, height], [0, 0], [width, 0], [width, height]], np.float32)  # cv::boxPoints order
    dst = np.array([[0, out_h], [0, 0], [out_w, 0], [out_w, out_h]], np.float32)
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for i in range(4):
        a[i, 0] = a[i + 4, 3] = src[i, 0]
        a[i, 1] = a[i + 4, 4] = src[i, 1]
        a[i, 2] = a[i + 4, 5] = 1
        a[i, 6] = -src[i, 0] * dst[i, 0]  # float32 products, as in OpenCV
        a[i, 7] = -src[i, 1] * dst[i, 0]
        a[i + 4, 6] = -src[i, 0] * dst[i, 1]
        a[i + 4, 7] = -src[i, 1] * dst[i, 1]
        b[i], b[i + 4] = dst[i, 0], dst[i, 1]
    return np.append(_lu_solve(a, b), 1.0).reshape(3, 3)


def _invert3(m: np.ndarray) -> np.ndarray:
    """``cv::invert(DECOMP_LU)`` of a 3x3 float64 matrix: cofactors times 1/det."""
    det = (
        m[0, 0] * (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1])
        - m[0, 1] * (m[1, 0] * m[2, 2] - m[1, 2] * m[2, 0])
        + m[0, 2] * (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0])
    )
    d = 1.0 / det
    return np.array(
        [
            [
                (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1]) * d,
                (m[0, 2] * m[2, 1] - m[0, 1] * m[2, 2]) * d,
                (m[0, 1] * m[1, 2] - m[0, 2] * m[1, 1]) * d,
            ],
            [
                (m[1, 2] * m[2, 0] - m[1, 0] * m[2, 2]) * d,
                (m[0, 0] * m[2, 2] - m[0, 2] * m[2, 0]) * d,
                (m[0, 2] * m[1, 0] - m[0, 0] * m[1, 2]) * d,
            ],
            [
                (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]) * d,
                (m[0, 1] * m[2, 0] - m[0, 0] * m[2, 1]) * d,
                (m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]) * d,
            ],
        ]
    )


def _fixed_point_coords(inverse: np.ndarray, out_w: int, out_h: int) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates of every output pixel, in 1/32 px, as ``WarpPerspectiveInvoker`` computes them.

    OpenCV walks the output in blocks of ``bw0`` columns and evaluates
    ``X = cvRound((X0 + M0 * x1) * (32 / W))`` with ``X0``, ``W0`` taken at the block's first
    column: the block layout changes the last bit of the rounding, so it is reproduced.
    """
    bh0 = min(16, out_h)
    bw0 = min(1024 // bh0, out_w)
    column = np.arange(out_w, dtype=np.float64)
    block = (column // bw0) * bw0
    x1 = column - block
    y = np.arange(out_h, dtype=np.float64)[:, None]
    m = inverse.ravel()
    x0 = m[0] * block + m[1] * y + m[2]
    y0 = m[3] * block + m[4] * y + m[5]
    w = m[6] * block + m[7] * y + m[8] + m[6] * x1
    w = np.where(w != 0, _SUBPIXEL / np.where(w != 0, w, 1.0), 0.0)
    int32 = np.iinfo(np.int32)
    x = np.rint(np.clip((x0 + m[0] * x1) * w, int32.min, int32.max)).astype(np.int64)  # rint: ties to even
    y_ = np.rint(np.clip((y0 + m[3] * x1) * w, int32.min, int32.max)).astype(np.int64)
    return x, y_


def mediapipe_resize(rgb: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """Resize a whole image as MediaPipe Tasks' CPU ``ImageClassifier`` does for a uint8-input model.

    Bilinear, top-left aligned (output pixel ``d`` samples input ``d * in / out``), no
    antialiasing, edge pixels replicated, OpenCV's 1/32-px fixed-point grid and 5-bit weights:
    the same bytes as ``cv::warpPerspective(INTER_LINEAR, BORDER_REPLICATE)`` in
    ``mediapipe/calculators/tensor/image_to_tensor_converter_opencv.cc``.

    Args:
        rgb: uint8 [H, W, 3] (RGB), [H, W, 4] (RGBA: alpha is dropped) or [H, W] (grey).
        out_w: output width.
        out_h: output height.

    Returns:
        uint8 [out_h, out_w, 3] ([out_h, out_w, 1] for a grey input).
    """
    if rgb.ndim not in (2, 3) or rgb.shape[0] < 1 or rgb.shape[1] < 1 or out_w < 1 or out_h < 1:
        raise ValueError(f"mediapipe_resize: cannot resize an image of shape {rgb.shape} to {out_w}x{out_h}")
    height, width = rgb.shape[:2]
    image = rgb.reshape(height, width, -1)
    x, y = _fixed_point_coords(_invert3(_perspective_matrix(width, height, out_w, out_h)), out_w, out_h)
    x0, fx = x >> _SUBPIXEL_BITS, (x & (_SUBPIXEL - 1))[..., None]
    y0, fy = y >> _SUBPIXEL_BITS, (y & (_SUBPIXEL - 1))[..., None]

    def pixel(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:  # BORDER_REPLICATE; gathers, never widens the image
        return image[np.clip(yy, 0, height - 1), np.clip(xx, 0, width - 1)].astype(np.int64)

    acc = (
        pixel(y0, x0) * ((_SUBPIXEL - fx) * (_SUBPIXEL - fy))
        + pixel(y0, x0 + 1) * (fx * (_SUBPIXEL - fy))
        + pixel(y0 + 1, x0) * ((_SUBPIXEL - fx) * fy)
        + pixel(y0 + 1, x0 + 1) * (fx * fy)
    ) * (1 << (_WEIGHT_BITS - 2 * _SUBPIXEL_BITS))  # the 10-bit products as OpenCV's 15-bit weights
    out = ((acc + (1 << (_WEIGHT_BITS - 1))) >> _WEIGHT_BITS).clip(0, 255).astype(np.uint8)
    return out if out.shape[-1] == 1 else out[..., :3]


# === The app's pre-scale ===


def prescale(rgb: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """The app's pre-scale before MediaPipe: the mean of every ``kx`` x ``ky`` block of pixels.

    ``kx = W // out_w`` and ``ky = H // out_h``, at least 1: the result has ``ceil(W / kx)`` x
    ``ceil(H / ky)`` pixels, at least the input size on an axis that is reduced and less than
    twice it. Where ``kx`` does not divide ``W``, the last column of blocks holds the ``W % kx``
    columns left over and averages those (rows likewise): no pixel is dropped. Each channel's
    mean is rounded half up in integers, ``(sum + n // 2) // n`` over the ``n`` pixels of the
    block. An image with ``kx = ky = 1`` is returned as it is.

    Args:
        rgb: uint8 [H, W, channels] or [H, W].
        out_w: the model input's width.
        out_h: the model input's height.

    Returns:
        uint8 [ceil(H / ky), ceil(W / kx), channels] (or without the channel axis, as given).
    """
    if rgb.ndim not in (2, 3) or rgb.shape[0] < 1 or rgb.shape[1] < 1 or out_w < 1 or out_h < 1:
        raise ValueError(f"prescale: cannot pre-scale an image of shape {rgb.shape} for a {out_w}x{out_h} input")
    height, width = rgb.shape[:2]
    kx, ky = max(1, width // out_w), max(1, height // out_h)
    if kx == 1 and ky == 1:
        return rgb
    sums = rgb.reshape(height, width, -1)  # block sums, rows then columns: exact integers
    if ky > 1:
        sums = _run_sums(sums, ky, 0, np.uint16 if ky <= 257 else np.uint32)  # 255 * ky fits
    if kx > 1:
        sums = _run_sums(sums, kx, 1, np.uint32)
    rows = np.minimum(ky, height - np.arange(0, height, ky))
    cols = np.minimum(kx, width - np.arange(0, width, kx))
    count = (rows[:, None] * cols[None, :])[..., None]
    out = ((sums + count // 2) // count).astype(np.uint8)
    return out.reshape(out.shape[0], out.shape[1], *rgb.shape[2:])


def _run_sums(image: np.ndarray, k: int, axis: int, dtype: type) -> np.ndarray:
    """Sums of every run of ``k`` rows (``axis`` 0) or columns (1) of an [H, W, C] array, in
    ``dtype``; the ``n % k`` left over make a last, shorter run. A reshape and a sum: 4-6x
    faster than ``np.add.reduceat`` (0.8 ms for a 500x375 image at 64 px)."""
    n = image.shape[axis]
    full = n - n % k
    if axis == 0:
        head, tail, shape = image[:full], image[full:], (n // k, k, *image.shape[1:])
    else:
        head, tail, shape = image[:, :full], image[:, full:], (image.shape[0], n // k, k, image.shape[2])
    sums = head.reshape(shape).sum(axis=axis + 1, dtype=dtype)
    if full == n:
        return sums
    return np.concatenate([sums, tail.sum(axis=axis, keepdims=True, dtype=dtype)], axis=axis)


def app_resize(rgb: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """The upright RGB image -> the model's input pixels on the documented app path:
    :func:`prescale`, then MediaPipe's own resize (:func:`mediapipe_resize`)."""
    return mediapipe_resize(prescale(rgb, out_w, out_h), out_w, out_h)


def antialiased_resize(rgb: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """A reference, not the app's path: PIL's ``Image.resize`` with ``Resampling.BILINEAR``
    straight to the input size. PIL widens the bilinear (triangle) filter by the scale factor
    when it downscales, so every source pixel counts: an antialiased resize (the filter
    prepare_dataset stores the training copies with). uint8 RGB [H, W, 3] -> [out_h, out_w, 3]."""
    return np.asarray(Image.fromarray(rgb).resize((out_w, out_h), Image.Resampling.BILINEAR), dtype=np.uint8)


# === Decoding as an app does ===


def app_image(data: bytes) -> np.ndarray:
    """Image file bytes -> the upright uint8 RGB array [H, W, 3] an app hands MediaPipe.

    PIL decode at full resolution, EXIF orientation applied (``ImageOps.exif_transpose``),
    then RGB: grey replicated, palette expanded, alpha dropped (not composited), 16-bit grey
    scaled to 8 bits. Raises ``OSError``/``ValueError`` (from PIL) for a file it cannot decode.
    """
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened) or opened
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            image = image.point(lambda v: v / 256).convert("L")
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def input_size(config: dict[str, Any]) -> tuple[int, int]:
    """(width, height) of the model input, from an inference_config.json dict."""
    _, height, width, _ = config["input"]["shape"]
    return int(width), int(height)


def app_pixels(data: bytes, config: dict[str, Any]) -> np.ndarray:
    """Image file bytes -> the uint8 pixels [H, W, 3] an app feeds the model, per inference_config.json.

    ``app_resize(app_image(data), width, height)``: the one input path that ``mobiletag
    predict``, threshold search and evaluation share with the app.
    """
    return app_resize(app_image(data), *input_size(config))

"""Decoding user images with PIL: every legal format and mode becomes upright RGB."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Phone panoramas and scans are legal input. PIL's decompression-bomb guard (178 MP) would
# refuse them; 1 gigapixel still stops a malicious file from exhausting memory.
Image.MAX_IMAGE_PIXELS = 1_000_000_000
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image

SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF", "MPO")


class ImageProblem(Exception):
    """Why an image cannot be used, as one sentence without the file name."""


@dataclass(frozen=True)
class ImageInfo:
    width: int  # of the original, after EXIF rotation
    height: int
    mode: str  # PIL mode of the file (RGB, L, P, RGBA, CMYK, ...)
    format: str
    jpeg: bytes | None = None  # re-encoded, size-capped JPEG when asked for
    stored_size: tuple[int, int] | None = None  # (width, height) of that JPEG


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; transparent pixels become white, as most viewers show them."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


def decode_image(data: bytes, max_side: int | None = None) -> tuple[Image.Image, ImageInfo]:
    """Decode bytes into an upright RGB image, downscaled so its longest side <= max_side.

    Raises ImageProblem for an empty, truncated, unsupported or undecodable file.
    """
    if not data:
        raise ImageProblem("the file is empty (0 bytes)")
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        fmt = image.format or "?"
        mode = image.mode
        width, height = image.size  # of the file; draft() below may shrink the decoded image
        if image.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientation with a 90-degree turn
            width, height = height, width
        if fmt not in SUPPORTED_FORMATS:
            raise ImageProblem(f"format {fmt} is not supported; use JPEG, PNG, BMP or GIF")
        if max_side is not None and fmt in ("JPEG", "MPO"):
            # Decode at 1/2, 1/4 or 1/8 scale straight from the DCT when the target is small:
            # 3-8x cheaper for phone photos, and the resize below still sets the exact size.
            image.draft("RGB", (max_side, max_side))
        image.load()
        image = ImageOps.exif_transpose(image) or image
        image = to_rgb(image)
    except ImageProblem:
        raise
    except UnidentifiedImageError as exc:
        raise ImageProblem("not an image PIL can read (unknown or corrupt format)") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageProblem(f"cannot be decoded: {exc}") from exc
    if width < 1 or height < 1:
        raise ImageProblem(f"has no pixels ({width}x{height})")
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(width, height)
        new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = image.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return image, ImageInfo(width=width, height=height, mode=mode, format=fmt)


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2, optimize=False)
    return out.getvalue()


def inspect_image(data: bytes, max_side: int | None = None, jpeg_quality: int | None = None) -> ImageInfo:
    """Check that file bytes are a usable image; with jpeg_quality, also return it re-encoded."""
    image, info = decode_image(data, max_side=max_side)
    if jpeg_quality is None:
        return info
    return ImageInfo(info.width, info.height, info.mode, info.format, encode_jpeg(image, jpeg_quality), image.size)

"""The development suite: generated multi-label datasets, each stressing one thing real data does.

``make bench-quality`` (bench/quality.py) trains the recipe on each and compares it with a pixel
regression and a constant predictor: a recipe choice is kept only if it helps across the suite.
Every generator writes the layout the pipeline reads (``images/``, ``{train,val,test}_labels.csv``,
optionally ``config.yaml``), takes a seed (the same seed writes the same files) and returns the
image count per split; each takes seconds.

- ``small-objects``: :func:`mobiletag.data.sample.make_hard_dataset` (ten small shapes in four slots).
- ``glyphs``: mosaics of up to three stroke-drawn digits; a mirrored 2 is a 5, so the set's
  ``config.yaml`` turns horizontal flips off (``data.augment.flip: false``).
- ``imbalance``: shapes at prevalences from 40% down to 3% of images, and pairs that co-occur;
  360 validation and 360 test images, so that every class has 10 or more positives in each.
- ``textures``: the class is a texture patch (stripes, checks, dots...) among random clutter.
- ``photos``: 1200x900 JPEGs of large shapes, some stored sideways with an EXIF orientation tag;
  two classes differ only by orientation (a horizontal and a vertical bar).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mobiletag.artifacts import SourceDataset
from mobiletag.data.sample import HARD_CLASSES, HARD_SPLITS, draw_hard_shape, make_hard_dataset, write_labels_csv

SPLITS = HARD_SPLITS  # 420 / 90 / 90 images
SIZE = 96

# A label sampler draws one image's labels; a renderer draws the image for them.
Sampler = Callable[[np.random.Generator], list[str]]
Renderer = Callable[[np.random.Generator, list[str]], Image.Image]


def _write_set(
    out_dir: str | Path,
    seed: int,
    classes: tuple[str, ...],
    sample: Sampler,
    render: Renderer,
    splits: tuple[tuple[str, int], ...] = SPLITS,
    ext: str = "png",
    save: Callable[[Image.Image, Path, np.random.Generator], None] | None = None,
    min_positives: int = 2,
) -> dict[str, int]:
    """Write ``splits`` of images drawn by ``sample`` / ``render``; every class gets at least
    ``min_positives`` positives in every split (added to the split's first images)."""
    root = Path(out_dir)
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, count in splits:
        forced = [c for c in classes for _ in range(min_positives)]
        rows = []
        (root / "images" / split).mkdir(exist_ok=True)
        for i in range(count):
            labels = sample(rng)
            if i < len(forced) and forced[i] not in labels:
                labels = sorted([forced[i], *labels[:2]])
            rel = f"{split}/img_{i:04d}.{ext}"
            image = render(rng, labels)
            if save is None:
                image.save(root / "images" / rel, format="PNG")
            else:
                save(image, root / "images" / rel, rng)
            rows.append((rel, "|".join(labels)))
        write_labels_csv(root, split, rows)
    return {split: count for split, count in splits}


def _uniform_sampler(classes: tuple[str, ...], p: tuple[float, ...] = (0.1, 0.3, 0.35, 0.25)) -> Sampler:
    """0 to 3 distinct classes, drawn uniformly."""

    def sample(rng: np.random.Generator) -> list[str]:
        k = int(rng.choice(len(p), p=p))
        return sorted(rng.choice(classes, size=k, replace=False).tolist())

    return sample


def _light_background(rng: np.random.Generator, width: int, height: int, noise: float = 10.0) -> Image.Image:
    base = (rng.integers(150, 230) + rng.integers(-20, 21, size=3)).astype(np.float32)
    grain = rng.standard_normal((height, width, 1), dtype=np.float32) * noise  # one grain for all channels
    pixels = base[None, None, :] + grain
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


# ------------------------------------------------------------------------------------------
# glyphs: stroke-drawn digits, where a mirror image changes the label
# ------------------------------------------------------------------------------------------

GLYPH_CLASSES = tuple(f"digit_{d}" for d in range(10))
# seven segments: a top, b top right, c bottom right, d bottom, e bottom left, f top left, g middle
_SEGMENT_ENDS = {
    "a": ((0, 0), (1, 0)),
    "b": ((1, 0), (1, 1)),
    "c": ((1, 1), (1, 2)),
    "d": ((0, 2), (1, 2)),
    "e": ((0, 1), (0, 2)),
    "f": ((0, 0), (0, 1)),
    "g": ((0, 1), (1, 1)),
}
# a mirrored 2 is a 5 (and a mirrored 5 a 2): flips change the label
DIGIT_SEGMENTS = ("abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg")
GLYPH_CONFIG = "data:\n  augment:\n    flip: false  # a mirrored 2 is a 5\n"


def _draw_glyph(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, digit: int, x0: float, y0: float, w: float, h: float
) -> None:
    """One digit as hand-drawn strokes: jittered corners, a slant, a random pen width and ink."""
    corners = {
        (cx, cy): (
            x0 + cx * w + rng.normal(0, 0.08) * w,
            y0 + cy * h / 2 + rng.normal(0, 0.05) * h,
        )
        for cx in (0, 1)
        for cy in (0, 1, 2)
    }
    slant = rng.uniform(-0.25, 0.25)
    width = int(rng.integers(2, 4))
    ink = tuple(int(v) for v in rng.integers(0, 90, size=3))
    for segment in DIGIT_SEGMENTS[digit]:
        (ax, ay), (bx, by) = (corners[end] for end in _SEGMENT_ENDS[segment])
        mx, my = (ax + bx) / 2 + rng.normal(0, 0.04) * w, (ay + by) / 2 + rng.normal(0, 0.04) * w
        points = [(x + slant * (y0 + h - y), y) for x, y in ((ax, ay), (mx, my), (bx, by))]
        draw.line(points, fill=ink, width=width, joint="curve")


def _glyph_image(rng: np.random.Generator, labels: list[str]) -> Image.Image:
    image = _light_background(rng, SIZE, SIZE)
    draw = ImageDraw.Draw(image)
    cells = rng.permutation(4)[: len(labels)]  # a 2x2 mosaic, one glyph per cell
    for label, cell in zip(labels, cells):
        h = rng.uniform(0.26, 0.36) * SIZE
        w = h * rng.uniform(0.45, 0.6)
        x0 = (cell % 2 + 0.5) * SIZE / 2 - w / 2 + rng.uniform(-0.04, 0.04) * SIZE
        y0 = (cell // 2 + 0.5) * SIZE / 2 - h / 2 + rng.uniform(-0.04, 0.04) * SIZE
        _draw_glyph(draw, rng, int(label[-1]), x0, y0, w, h)
    return image


def make_glyph_dataset(
    out_dir: str | Path, seed: int = 0, splits: tuple[tuple[str, int], ...] = SPLITS
) -> dict[str, int]:
    """Fine strokes: 96-px mosaics of 0-3 hand-drawn seven-segment digits (10 classes, 420 / 90 /
    90 images) and a ``config.yaml`` that turns horizontal flips off (a mirrored 2 is a 5)."""
    counts = _write_set(out_dir, seed, GLYPH_CLASSES, _uniform_sampler(GLYPH_CLASSES), _glyph_image, splits)
    (Path(out_dir) / SourceDataset.CONFIG).write_text(GLYPH_CONFIG, encoding="utf-8")
    return counts


# ------------------------------------------------------------------------------------------
# imbalance: common and rare classes, pairs that co-occur
# ------------------------------------------------------------------------------------------

# share of images holding each class (before a pair's partner is added)
IMBALANCE_PREVALENCE = {
    "circle": 0.40,
    "square": 0.40,
    "triangle": 0.20,
    "ring": 0.12,
    "cross": 0.08,
    "diamond": 0.05,
    "bar": 0.03,
    "star": 0.03,
    "frame": 0.03,
    "xmark": 0.03,
}
IMBALANCE_CLASSES = tuple(sorted(IMBALANCE_PREVALENCE))
# (class, partner, P(partner | class)): the rare class mostly comes with a common one
IMBALANCE_PAIRS = (("star", "circle", 0.9), ("xmark", "square", 0.9), ("ring", "triangle", 0.6))


# Validation and test large enough that every class has at least MIN_POSITIVES (10) positive images
# in each at its own prevalence (seed 0: 11 and 12 for the rarest), the count below which the
# dataset summary warns that a class's AP and threshold move a lot between training seeds. At 90 the
# rare classes had 3-5 and made most of the spread over seeds that the suite's goal is judged on:
# what it measured was which few images a run ranked first, not the recipe. The training split
# stays at 420 (the four rarest classes' 8-15 training positives are the set's difficulty).
IMBALANCE_SPLITS = (("train", 420), ("val", 360), ("test", 360))


def _imbalance_labels(rng: np.random.Generator) -> list[str]:
    labels = {c for c, p in IMBALANCE_PREVALENCE.items() if rng.random() < p}
    for cls, partner, p in IMBALANCE_PAIRS:
        if cls in labels and rng.random() < p:
            labels.add(partner)
    if len(labels) > 4:  # four slots: keep the rarest four; of two as common, the later name (a fixed
        # order: the order of a set of names moves with PYTHONHASHSEED, and with it the dataset)
        labels = set(sorted(labels, key=lambda c: (-IMBALANCE_PREVALENCE[c], c))[-4:])
    return sorted(labels)


def _shapes_image(rng: np.random.Generator, labels: list[str]) -> Image.Image:
    image = _light_background(rng, SIZE, SIZE, noise=12.0)
    draw = ImageDraw.Draw(image)
    for shape, slot in zip(labels, rng.permutation(4)):
        r = float(rng.uniform(0.11, 0.16)) * SIZE
        cx = (slot % 2 + 0.5) * SIZE / 2 + rng.uniform(-0.04, 0.04) * SIZE
        cy = (slot // 2 + 0.5) * SIZE / 2 + rng.uniform(-0.04, 0.04) * SIZE
        draw_hard_shape(draw, shape, cx, cy, r, tuple(int(v) for v in rng.integers(0, 110, size=3)))
    return image


def make_imbalance_dataset(
    out_dir: str | Path, seed: int = 0, splits: tuple[tuple[str, int], ...] = IMBALANCE_SPLITS
) -> dict[str, int]:
    """Heavy imbalance and co-occurrence: ten shapes at 40% down to 3% of images (star mostly with
    circle, xmark with square, ring with triangle); 96 px, 420 / 360 / 360 images, every class with
    at least two positives per split."""
    return _write_set(out_dir, seed, IMBALANCE_CLASSES, _imbalance_labels, _shapes_image, splits)


# ------------------------------------------------------------------------------------------
# textures: a textured patch among clutter
# ------------------------------------------------------------------------------------------

TEXTURE_CLASSES = ("checks", "dots", "grid", "hstripes", "rings", "speckle", "vstripes", "zigzag")


def _texture(rng: np.random.Generator, kind: str, side: int) -> np.ndarray:
    """[side, side] bool: where the texture is inked."""
    period = int(rng.integers(4, 7))
    phase = int(rng.integers(0, period))
    y, x = np.mgrid[0:side, 0:side] + phase
    thick = max(1, period // 2 - 1)
    if kind == "hstripes":
        return y % period < thick
    if kind == "vstripes":
        return x % period < thick
    if kind == "grid":
        return (x % period == 0) | (y % period == 0)
    if kind == "checks":
        return (x // period + y // period) % 2 == 0
    if kind == "dots":
        return ((x % period) - period // 2) ** 2 + ((y % period) - period // 2) ** 2 <= 1
    if kind == "rings":
        c = side / 2
        return np.hypot(x - phase - c, y - phase - c).astype(int) % period < thick
    if kind == "zigzag":
        return (y + np.abs((x % (2 * period)) - period)) % period < thick
    if kind == "speckle":
        return rng.random((side, side)) < 0.35
    raise ValueError(kind)  # pragma: no cover - TEXTURE_CLASSES is closed


def _texture_image(rng: np.random.Generator, labels: list[str]) -> Image.Image:
    image = _light_background(rng, SIZE, SIZE, noise=8.0)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(8, 16))):  # clutter: strokes and blobs in any colour
        x, y = rng.uniform(0, SIZE, size=2)
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if rng.random() < 0.6:
            angle, length = rng.uniform(0, math.pi), rng.uniform(8, 30)
            end = (x + length * math.cos(angle), y + length * math.sin(angle))
            draw.line([(x, y), end], fill=colour, width=int(rng.integers(1, 3)))
        else:
            r = rng.uniform(2, 6)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    pixels = np.asarray(image).copy()
    for kind, slot in zip(labels, rng.permutation(4)):
        side = int(rng.integers(26, 38))
        x0 = int(np.clip((slot % 2 + 0.5) * SIZE / 2 - side / 2 + rng.integers(-4, 5), 0, SIZE - side))
        y0 = int(np.clip((slot // 2 + 0.5) * SIZE / 2 - side / 2 + rng.integers(-4, 5), 0, SIZE - side))
        patch = pixels[y0 : y0 + side, x0 : x0 + side]
        paper = rng.integers(170, 250, size=3)
        ink = rng.integers(0, 100, size=3)
        patch[:] = np.where(_texture(rng, kind, side)[..., None], ink, paper).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def make_texture_dataset(
    out_dir: str | Path, seed: int = 0, splits: tuple[tuple[str, int], ...] = SPLITS
) -> dict[str, int]:
    """Textures among clutter: 96-px images with 8-15 random strokes and blobs and 0-3 square
    patches of eight textures (stripes either way, grid, checks, dots, rings, zigzag, speckle) at
    a random period, paper and ink colour; 420 / 90 / 90 images."""
    return _write_set(out_dir, seed, TEXTURE_CLASSES, _uniform_sampler(TEXTURE_CLASSES), _texture_image, splits)


# ------------------------------------------------------------------------------------------
# photos: phone-sized JPEGs with EXIF orientation
# ------------------------------------------------------------------------------------------

PHOTO_CLASSES = tuple(sorted((*[c for c in HARD_CLASSES if c not in ("bar", "xmark")], "hbar", "vbar")))
PHOTO_SIZE = (1200, 900)  # width, height as displayed (landscape)
PHOTO_SPLITS = (("train", 300), ("val", 60), ("test", 60))
EXIF_ORIENTATION = 0x0112
# the displayed image turned for storage, by the orientation tag that turns it back
_STORED_TURN = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}


def _photo_image(rng: np.random.Generator, labels: list[str]) -> Image.Image:
    width, height = PHOTO_SIZE
    image = _light_background(rng, width, height, noise=8.0)  # per-pixel sensor-like grain
    draw = ImageDraw.Draw(image)
    for shape, slot in zip(labels, rng.permutation(4)):
        r = float(rng.uniform(0.12, 0.18)) * height
        cx = (slot % 2 + 0.5) * width / 2 + rng.uniform(-0.05, 0.05) * width
        cy = (slot // 2 + 0.5) * height / 2 + rng.uniform(-0.05, 0.05) * height
        colour = tuple(int(v) for v in rng.integers(0, 110, size=3))
        if shape == "hbar":
            draw_hard_shape(draw, "bar", cx, cy, r, colour)
        elif shape == "vbar":
            w = r * 0.3
            draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
        else:
            draw_hard_shape(draw, shape, cx, cy, r, colour)
    return image


def _save_photo(image: Image.Image, path: Path, rng: np.random.Generator) -> None:
    """JPEG; half the photos stored turned with the EXIF orientation tag that turns them upright."""
    orientation = int(rng.choice([1, 1, 1, 6, 8, 3]))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    stored = image.transpose(_STORED_TURN[orientation]) if orientation in _STORED_TURN else image
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=85, exif=exif.tobytes())
    path.write_bytes(buffer.getvalue())


def make_photo_dataset(
    out_dir: str | Path, seed: int = 0, splits: tuple[tuple[str, int], ...] = PHOTO_SPLITS
) -> dict[str, int]:
    """Phone-sized photos: 1200x900 JPEGs (as displayed) of 0-3 large shapes (ten classes; a
    horizontal and a vertical bar differ only by orientation), half stored turned by 90 or 180
    degrees with the EXIF orientation tag (6, 8 or 3) that turns them upright; 300 / 60 / 60 images."""
    return _write_set(
        out_dir,
        seed,
        PHOTO_CLASSES,
        _uniform_sampler(PHOTO_CLASSES),
        _photo_image,
        splits=splits,
        ext="jpg",
        save=_save_photo,
    )


# name -> generator(out_dir, seed=0, splits=...) -> image count per split
SUITE: dict[str, Callable[..., dict[str, int]]] = {
    "small-objects": make_hard_dataset,
    "glyphs": make_glyph_dataset,
    "imbalance": make_imbalance_dataset,
    "textures": make_texture_dataset,
    "photos": make_photo_dataset,
}
# the classes each set declares
SUITE_CLASSES = {
    "small-objects": HARD_CLASSES,
    "glyphs": GLYPH_CLASSES,
    "imbalance": IMBALANCE_CLASSES,
    "textures": TEXTURE_CLASSES,
    "photos": PHOTO_CLASSES,
}
# the splits each set's generator writes by default (bench-quality's: image count per split)
SUITE_SPLITS = {
    "small-objects": HARD_SPLITS,
    "glyphs": SPLITS,
    "imbalance": IMBALANCE_SPLITS,
    "textures": SPLITS,
    "photos": PHOTO_SPLITS,
}

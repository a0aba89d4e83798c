"""A generated multi-label dataset: coloured shapes on noisy backgrounds.

Each image holds zero to three different shapes (a few images hold none: legal negatives),
so a small model learns it well on a CPU in minutes while it still exercises everything a
real dataset does: several labels per image, JPEG and PNG files, sub-folders, all three splits.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mobiletag.artifacts import SourceDataset

CLASSES = ("circle", "cross", "ring", "square", "star", "triangle")
# Each shape has its own hue (with jitter) on a greyish background: colour and form both tell
# the class, so a small model trained from scratch learns the set in minutes on a CPU.
COLOURS = {
    "circle": (220, 40, 40),
    "cross": (40, 170, 40),
    "ring": (40, 80, 230),
    "square": (240, 200, 30),
    "star": (200, 40, 200),
    "triangle": (30, 200, 210),
}
SPLIT_SHARES = (("train", 0.7), ("val", 0.15), ("test", 0.15))


def write_labels_csv(root: Path, split: str, rows: list[tuple[str, str]]) -> None:
    """``<split>_labels.csv`` in ``root``: the header and one (path under images/, labels joined by |) row each."""
    with open(root / SourceDataset.labels_csv(split), "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filepath", "labels"])
        writer.writerows(rows)


def _polygon_star(cx: float, cy: float, r: float, points: int = 5) -> list[tuple[float, float]]:
    out = []
    for k in range(points * 2):
        radius = r if k % 2 == 0 else r * 0.45
        angle = math.pi * k / points - math.pi / 2
        out.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return out


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour: tuple[int, ...]) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r * 0.3)))
    elif shape == "square":
        draw.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)], fill=colour)
    elif shape == "star":
        draw.polygon(_polygon_star(cx, cy, r), fill=colour)
    elif shape == "cross":
        w = r * 0.32
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    else:  # pragma: no cover - CLASSES is closed
        raise ValueError(shape)


def _image(rng: np.random.Generator, labels: list[str], scale: float = 1.0) -> Image.Image:
    width, height = int(rng.integers(112, 192) * scale), int(rng.integers(104, 176) * scale)
    base = rng.integers(70, 190) + rng.integers(-15, 16, size=3)
    gradient = np.linspace(-25, 25, width)[None, :, None] * rng.choice([-1, 1])
    noise = rng.normal(0, 12, size=(height, width, 3))
    pixels = np.clip(base[None, None, :] + gradient + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    cells = rng.permutation(4)[: len(labels)]  # one quadrant each, so shapes rarely hide each other
    for shape, cell in zip(labels, cells):
        r = float(rng.uniform(0.2, 0.28)) * min(width, height)
        cx = (cell % 2 + 0.5) * width / 2 + rng.uniform(-0.08, 0.08) * width
        cy = (cell // 2 + 0.5) * height / 2 + rng.uniform(-0.08, 0.08) * height
        colour = tuple(int(v) for v in np.clip(np.array(COLOURS[shape]) + rng.integers(-25, 26, size=3), 0, 255))
        _draw(draw, shape, cx, cy, r, colour)
    return image


def make_sample_dataset(
    out_dir: str | Path, num_images: int = 600, seed: int = 0, scale: float = 1.0
) -> dict[str, int]:
    """Write the dataset layout into out_dir; returns the image count per split.

    ``scale`` multiplies the images' sides (112-192 x 104-176 px at 1): at 14 every image has
    2.3 to 6.6 megapixels, as phone photos do, with per-pixel sensor-like noise, so how an app
    downscales (with or without antialiasing) matters as it does for real photos.
    """
    if num_images < 20:
        raise ValueError("the sample dataset needs at least 20 images (to fill three splits)")
    root = Path(out_dir)
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[tuple[str, str]]] = {s: [] for s, _ in SPLIT_SHARES}
    split_of = rng.choice([s for s, _ in SPLIT_SHARES], size=num_images, p=[p for _, p in SPLIT_SHARES])
    # never an empty split, and every class has a training positive however small the set
    split_of[: len(CLASSES) + 2] = ["train"] * len(CLASSES) + ["val", "test"]
    for i in range(num_images):
        count = int(rng.choice([0, 1, 2, 3], p=[0.05, 0.35, 0.4, 0.2]))
        labels = sorted(rng.choice(CLASSES, size=count, replace=False).tolist())
        if i < len(CLASSES) and CLASSES[i] not in labels:
            labels = sorted([CLASSES[i], *labels[:2]])
        image = _image(rng, labels, scale)
        folder = f"set{i % 4}"
        ext = "png" if i % 10 == 3 else "jpg"
        rel = f"{folder}/img_{i:05d}.{ext}"
        (root / "images" / folder).mkdir(exist_ok=True)
        if ext == "png":
            image.save(root / "images" / rel, format="PNG")
        else:
            image.save(root / "images" / rel, format="JPEG", quality=90)
        rows[str(split_of[i])].append((rel, "|".join(labels)))
    for split, split_rows in rows.items():
        write_labels_csv(root, split, split_rows)
    return {split: len(r) for split, r in rows.items()}


# The hard set: ten small shapes, several per image, few images. Colour says nothing about the
# class (every object gets a random colour), objects are about a tenth of the image wide, and
# each sits in one of four slots with some jitter: a model must see form at small scale.
HARD_CLASSES = (
    "bar",
    "circle",
    "cross",
    "diamond",
    "frame",
    "ring",
    "square",
    "star",
    "triangle",
    "xmark",
)
HARD_SIZE = 96
JITTER = 0.05
HARD_SPLITS = (("train", 420), ("val", 90), ("test", 90))


def draw_hard_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour: tuple[int, ...]
) -> None:
    """One of the hard set's shapes (HARD_CLASSES or "bar") centred at (cx, cy) with radius r; the suite's sets draw with it too."""
    w = max(1.5, r * 0.3)
    if shape == "bar":
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    elif shape == "frame":
        draw.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), outline=colour, width=int(w))
    elif shape == "xmark":
        d = w * 0.75
        draw.polygon(
            [(cx - r, cy - r + d), (cx - r + d, cy - r), (cx + r, cy + r - d), (cx + r - d, cy + r)], fill=colour
        )
        draw.polygon(
            [(cx + r, cy - r + d), (cx + r - d, cy - r), (cx - r, cy + r - d), (cx - r + d, cy + r)], fill=colour
        )
    else:
        _draw(draw, shape, cx, cy, r, colour)


def _hard_image(rng: np.random.Generator, labels: list[str]) -> Image.Image:
    size = HARD_SIZE
    base = rng.integers(140, 220) + rng.integers(-20, 21, size=3)
    noise = rng.normal(0, 14, size=(size, size, 3))
    pixels = np.clip(base[None, None, :] + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    slots = rng.permutation(4)[: len(labels)]
    for shape, slot in zip(labels, slots):
        r = float(rng.uniform(0.08, 0.12)) * size
        cx = (slot % 2 + 0.5) * size / 2 + rng.uniform(-JITTER, JITTER) * size
        cy = (slot // 2 + 0.5) * size / 2 + rng.uniform(-JITTER, JITTER) * size
        colour = rng.integers(0, 110, size=3)  # dark, any hue, on a light background
        draw_hard_shape(draw, shape, cx, cy, r, tuple(int(v) for v in colour))
    return image


def make_hard_dataset(
    out_dir: str | Path, seed: int = 0, splits: tuple[tuple[str, int], ...] = HARD_SPLITS
) -> dict[str, int]:
    """A small, hard multi-label set: 96-px images with 0-3 of ten small shapes in four slots,
    every object a random colour; 420 / 90 / 90 images by default. Returns the image count
    per split."""
    root = Path(out_dir)
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, count in splits:
        rows = []
        for i in range(count):
            k = int(rng.choice([0, 1, 2, 3], p=[0.1, 0.3, 0.35, 0.25]))
            labels = sorted(rng.choice(HARD_CLASSES, size=k, replace=False).tolist())
            if split == "train" and i < len(HARD_CLASSES) and HARD_CLASSES[i] not in labels:
                labels = sorted([HARD_CLASSES[i], *labels[:2]])
            rel = f"{split}/img_{i:04d}.png"
            (root / "images" / split).mkdir(exist_ok=True)
            _hard_image(rng, labels).save(root / "images" / rel, format="PNG")
            rows.append((rel, "|".join(labels)))
        write_labels_csv(root, split, rows)
    return {split: count for split, count in splits}

"""The data and models `make bench-scale` (bench/scale.py) measures the late stages on:
generated JPEGs (a pool of distinct ones, the rest hard links), a dataset folder per N, and the
pipeline's models at configs/fast.yaml's sizes with random weights, in the stages' layout.

The models are untrained, so the bench's config turns export's parity gates off: the bench
times the stages, it does not judge a model.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from mobiletag.artifacts import QatModel, StudentModel, TeacherModel

REPO = Path(__file__).resolve().parents[1]
TEACHER_SIZE, STUDENT_SIZE = 80, 64  # configs/fast.yaml
SOURCE_SIZE = (500, 375)
POOL = 400  # distinct JPEGs; the dataset's files are hard links to them
MODEL_DIRS = ("teacher", "distilled", "baseline", "student", "qat")
# untrained models: export's parity with the QAT model is not what the bench measures
UNGATED = {"export": {"parity_max_mean_abs_diff": 1.0, "parity_min_agreement": 0.0}}


def load_bench_config():
    from mobiletag.config import load_config

    return load_config(REPO / "configs" / "default.yaml", REPO / "configs" / "fast.yaml", UNGATED)


def split_sizes(n: int) -> dict[str, int]:
    """Images per split for N test images."""
    return {"train": n // 2, "val": n, "test": n}


def make_images(images_dir: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` JPEG names in ``images_dir``: POOL distinct images (a smooth colour field with
    noise), the rest hard links to them."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images_dir.mkdir(parents=True, exist_ok=True)
    width, height = SOURCE_SIZE
    names = []
    for i in range(count):
        name = f"img_{i:05d}.jpg"
        if i < POOL:
            coarse = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8), "RGB")
            field = np.asarray(coarse.resize((width, height), Image.Resampling.BILINEAR), dtype=np.int16)
            noise = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
            image = Image.fromarray(np.clip(field + noise, 0, 255).astype(np.uint8), "RGB")
            image.save(images_dir / name, quality=85)
        else:
            os.link(images_dir / names[i % POOL], images_dir / name)
        names.append(name)
    return names


def write_dataset(root: Path, images_dir: Path, names: list[str], n: int, seed: int = 1) -> None:
    """A dataset folder of ``split_sizes(n)`` over the first shared images (images/ is a link to them)."""
    from mobiletag.data.sample import CLASSES

    root.mkdir(parents=True, exist_ok=True)
    (root / "images").symlink_to(images_dir, target_is_directory=True)
    rng = np.random.default_rng(seed)
    start = 0
    for split, count in split_sizes(n).items():
        rows = []
        for i, name in enumerate(names[start : start + count]):
            picked = {CLASSES[int(c)] for c in rng.choice(len(CLASSES), size=int(rng.integers(0, 3)), replace=False)}
            if split == "train":
                picked.add(CLASSES[i % len(CLASSES)])  # every class has training positives
            rows.append((name, "|".join(sorted(picked))))
        start += count
        with open(root / f"{split}_labels.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["filepath", "labels"])
            writer.writerows(rows)


def make_models(work: Path, num_classes: int) -> dict[str, Path]:
    """Teacher, distilled and baseline student checkpoints, select-student's folder and the
    shipped student's QAT model (random weights), in the stages' layout; export runs per dataset
    (its parity images are the dataset's first validation images)."""
    import tf_keras as keras

    from mobiletag.artifacts import write_json
    from mobiletag.models.student import build_student
    from mobiletag.models.teacher import build_teacher
    from mobiletag.quantization.qat import quantize
    from mobiletag.stages import select_student

    keras.utils.set_random_seed(0)
    dirs = {name: work / name for name in MODEL_DIRS}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    build_teacher(num_classes, TEACHER_SIZE, "none").save(dirs["teacher"] / TeacherModel.CHECKPOINT)
    for name, val_map in (("baseline", 0.5), ("distilled", 0.6)):  # the distilled one ships
        build_student(num_classes, STUDENT_SIZE).save(dirs[name] / StudentModel.CHECKPOINT)
        write_json(dirs[name] / StudentModel.METRICS, {"metrics": {"val_map": val_map}, "alpha": 0.5, "history": {}})
    select_student.run(load_bench_config(), dirs["distilled"], dirs["baseline"], dirs["student"])
    student = keras.models.load_model(dirs["student"] / StudentModel.CHECKPOINT, compile=False)
    quantize(student).save(dirs["qat"] / QatModel.CHECKPOINT)
    return dirs

"""`make bench`: the pipeline's speed as ratios of two things measured in the same run.

Writes bench/results.json and prints a table. Every ratio is measured over several rounds
that alternate its two sides (A B A B ...), one ratio per round, in two blocks of rounds, one
before the whole demo run and one after it; it is reported as the median with its spread
(min-max; quartiles and every sample in results.json); a ratio is "met" when every round meets
its goal, "missed" when none does and "unstable" when the spread crosses it. When the results
file it replaces came from the same CPU, the table ends with how the two runs agree: a ratio
agrees when each run's median lies within the other's [min, max]. It trains nothing to
convergence, it times steps: about 16 minutes on 2 cores, 9 of them the whole demo run (one
run, not repeated).

    python bench/run.py [--skip-run] [--only SECTION] [--out bench/results.json]

``--only SECTION`` measures one section (input, host_input, training, determinism, model, run,
process_start, spread) and updates that section of the results file, keeping the others.
``spread`` (``make bench-spread``, 29 minutes here with other jobs beside it: three training runs with ``reproducible:
false``) runs only when asked for.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf_keras for QAT, before TensorFlow is imported

import argparse
import contextlib
import csv
import inspect
import json
import operator
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras
import yaml

from mobiletag.config import AugmentConfig, Config, load_config
from mobiletag.data.augment import TrainAugment
from mobiletag.data.dataset import index_dataset
from mobiletag.data.pipeline import _random_crop, list_shards, make_dataset
from mobiletag.data.sample import make_sample_dataset
from mobiletag.data.tfrecords import build_tfrecords
from mobiletag.export.tflite import convert_int8
from mobiletag.models.student import build_student, preprocess
from mobiletag.models.teacher import build_teacher
from mobiletag.quantization.qat import quantize
from mobiletag.training.fit import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stats  # bench/stats.py, beside this script

REPO = Path(__file__).resolve().parents[1]
PAUSE = 0.2  # seconds between alternated samples: what one leaves running in the background ends off the clock
# Each ratio is measured in BLOCKS blocks of ROUNDS rounds: the first block before the whole run, the
# second after it (about 9 minutes later, the machine in another state), so the spread holds slow
# drift of a shared machine too and not only the noise of a minute (issue 19: two runs' medians moved
# 3-5%, outside one run's spread, when all 7 rounds were taken within a minute).
BLOCKS = 2
ROUNDS = 5
# A section measured in blocks: setup and its first block on the first next(), each further block on
# the next; the results dict is the generator's return value (see run_sections)
Blocked = Generator[None, None, dict]


def rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("inf")


# === 1. Input pipeline ===


def bench_input(
    data_dir: Path, tfrecords: Path, config, sizes: dict[str, int], batch: int, rounds: int = ROUNDS
) -> Blocked:
    """The training pipeline (student size) against a one-thread JPEG decode loop and against PIL on
    the original files, the three measured in turn for ``rounds`` rounds per block; one ratio per round."""
    # the naive way: open the original files with PIL in a Python loop, RGB, resize, to float
    from PIL import Image

    files = sorted((data_dir / "images").rglob("*.*"))[:200]

    def pil_all():
        for f in files:
            with Image.open(f) as im:
                np.asarray(im.convert("RGB").resize((sizes["student"],) * 2, Image.Resampling.BILINEAR), np.float32)

    # raw decode of the same JPEG bytes in a tight loop (the floor of what tf.data can do)
    records = [r.numpy() for r in tf.data.TFRecordDataset(list_shards(tfrecords, "train"))]
    feature = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
    jpegs = [tf.io.parse_single_example(r, feature)["image/encoded"] for r in records][:400]
    decode = tf.function(lambda b: tf.io.decode_jpeg(b, channels=3))

    def decode_all():
        for j in jpegs:
            decode(j)

    def pipeline(size_list: list[int]):
        return make_dataset(
            tfrecords,
            "train",
            image_sizes=size_list,
            batch_size=batch,
            training=True,
            repeat=True,
            num_classes=6,
            config=config,
        )

    steps = 15
    student_ds = pipeline([sizes["student"]])

    def student_batches() -> float:
        """Seconds for ``steps`` batches of a fresh iterator after its first (shuffle buffer filled,
        functions traced): its buffers start empty, and nothing runs on once it is dropped."""
        it = iter(student_ds)
        next(it)
        start = time.perf_counter()
        for _ in range(steps):
            next(it)
        return time.perf_counter() - start

    seconds: dict[str, list[float]] = {}
    for block in range(BLOCKS):
        stats.extend(
            seconds,
            stats.alternate({"pipeline": student_batches, "raw": decode_all, "pil": pil_all}, rounds, pause=PAUSE),
        )
        if block < BLOCKS - 1:
            yield
    rates = {
        "pipeline": [steps * batch / s for s in seconds["pipeline"]],
        "raw": [len(jpegs) / s for s in seconds["raw"]],
        "pil": [len(files) / s for s in seconds["pil"]],
    }
    out: dict = {
        "method": (
            f"{BLOCKS} blocks x {rounds} rounds of: {steps} batches of {batch} from the training pipeline (student size), "
            f"a one-thread decode_jpeg loop over {len(jpegs)} stored JPEGs, PIL decode+resize of {len(files)} files"
        ),
        "pil_files_images_per_s": stats.summarize(rates["pil"], digits=1),
        "raw_decode_images_per_s_1_thread": stats.summarize(rates["raw"], digits=1),
        "pipeline_student_images_per_s": stats.summarize(rates["pipeline"], digits=1),
    }
    # the teacher's and distillation's pipelines: a rate each, for scale (no goal)
    for name, size_list in (
        ("teacher", [sizes["teacher"]]),
        ("distill_two_views", [sizes["teacher"], sizes["student"]]),
    ):
        other = iter(pipeline(size_list))
        for _ in range(3):
            next(other)
        start = time.perf_counter()
        for _ in range(steps):
            next(other)
        out[f"pipeline_{name}_images_per_s"] = round(rate(steps * batch, time.perf_counter() - start), 1)
        del other
    out["pipeline_student_vs_raw_decode"] = stats.summarize(
        stats.per_round(operator.truediv, rates["pipeline"], rates["raw"]), ">= 1"
    )
    out["pipeline_student_vs_pil_files"] = stats.summarize(
        stats.per_round(operator.truediv, rates["pipeline"], rates["pil"]), "> 1"
    )
    return out


# === 1b. Host input per core at production sizes (issue 13, item 6) ===

PRODUCTION_SOURCE = (1152, 864)  # ~1 MP, a downscaled phone photo
PRODUCTION_CLASSES = ("beach", "cat", "dog", "food", "night", "people")


def make_photo_dataset(root: Path, num_images: int, seed: int = 0) -> None:
    """A dataset of ~1 MP JPEGs in the package's layout: smooth colour fields with texture
    and a few shapes, so that JPEG sizes and decode costs are those of photos, not of flat
    synthetic images. Nearly all go to train (the split measured); val and test get a few."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    width, height = PRODUCTION_SOURCE
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for i in range(num_images):
        coarse = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8), "RGB")
        image = coarse.resize((width, height), Image.Resampling.BICUBIC)
        texture = Image.effect_noise((width, height), 40).convert("RGB")
        image = Image.blend(image, texture, 0.12)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 6))):
            x, y = int(rng.integers(0, width - 200)), int(rng.integers(0, height - 200))
            w, h = int(rng.integers(60, 400)), int(rng.integers(60, 400))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + w, y + h), fill=colour)
        rel = f"photo_{i:05d}.jpg"
        image.save(root / "images" / rel, format="JPEG", quality=90)
        split = "val" if i % 20 == 1 else "test" if i % 20 == 2 else "train"
        first = PRODUCTION_CLASSES[i % len(PRODUCTION_CLASSES)]  # every class in train
        second = PRODUCTION_CLASSES[int(rng.integers(len(PRODUCTION_CLASSES)))]
        rows[split].append((rel, "|".join(sorted({first, second}))))
    for split, split_rows in rows.items():
        with open(root / f"{split}_labels.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["filepath", "labels"])
            writer.writerows(split_rows)


def _before_augment(jpeg: tf.Tensor, seed: tf.Tensor, sizes: list[int], aug: AugmentConfig) -> list[tf.Tensor]:
    """The host augmentation before item 6, kept verbatim as the baseline: random resized crop,
    flip, one float32 view per size, colour jitter on every view (HSV saturation)."""
    seeds = tf.random.experimental.stateless_split(seed, num=6)
    image = _random_crop(jpeg, seeds[0], aug)  # the crop is unchanged by item 6: the pipeline's own
    if aug.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    image = tf.cast(image, tf.float32)
    views = [tf.image.resize(image, [s, s], method="bilinear") for s in sizes]
    if aug.color_jitter:
        delta = tf.random.stateless_uniform([], seeds[2], -aug.brightness, aug.brightness)
        contrast = tf.random.stateless_uniform([], seeds[3], 1 - aug.contrast, 1 + aug.contrast)
        saturation = tf.random.stateless_uniform([], seeds[4], 1 - aug.saturation, 1 + aug.saturation)
        jittered = []
        for view in views:
            x = view / 255.0
            x = tf.image.adjust_brightness(x, delta)
            x = tf.image.adjust_contrast(x, contrast)
            x = tf.image.adjust_saturation(x, saturation)
            jittered.append(tf.clip_by_value(x, 0.0, 1.0) * 255.0)
        views = jittered
    return views


def before_dataset(tfrecords: Path, config: Config, sizes: list[int], batch: int) -> tf.data.Dataset:
    """The training input before item 6: make_dataset's training branch as it was (same reads,
    shuffle, seeds and batching), with the host augmentation above."""
    files = list_shards(tfrecords, "train")
    seed = config.seed
    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/labels": tf.io.FixedLenFeature([len(PRODUCTION_CLASSES)], tf.float32),
        "image/filepath": tf.io.FixedLenFeature([], tf.string),
    }
    ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 16),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=False,
    )
    ds = ds.shuffle(config.data.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def train_map(serialized: tf.Tensor, random_pair: tf.Tensor) -> tuple[object, tf.Tensor]:
        ex = tf.io.parse_single_example(serialized, features)
        views = _before_augment(ex["image/encoded"], random_pair, sizes, config.data.augment)
        return tuple(views), ex["image/labels"]

    ds = tf.data.Dataset.zip((ds, randoms)).map(train_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.batch(batch, drop_remainder=True, num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_deterministic = False
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def plain_decode_dataset(tfrecords: Path, batch: int) -> tf.data.Dataset:
    """The floor: parse the records and decode the stored JPEGs whole, nothing else (the stored
    images share one size here, so they batch)."""
    feature = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
    ds = tf.data.TFRecordDataset(list_shards(tfrecords, "train")).repeat()
    ds = ds.map(
        lambda r: tf.io.decode_jpeg(tf.io.parse_single_example(r, feature)["image/encoded"], channels=3),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def one_thread(ds: tf.data.Dataset) -> tf.data.Dataset:
    """All of tf.data's work on one thread: rates are per host core."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def _bytes_per_image(batch: object) -> float:
    tensors = tf.nest.flatten(batch)
    return sum(t.numpy().nbytes for t in tensors) / int(tensors[0].shape[0])


def _one_run(make, batches: int) -> dict[str, float]:
    """A fresh iterator; the clock starts after its first batch (shuffle buffer filled, functions
    traced), so a run measures the steady state: ``batches`` batches produced by one thread."""
    it = iter(make())
    first = next(it)
    n = batches * int(tf.nest.flatten(first)[0].shape[0])
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    del it
    return {"wall": n / wall, "cpu": n / cpu, "cpu_per_wall": cpu / wall}


def _spread(values: list[float]) -> dict:
    return stats.summarize(values, digits=2)


def bench_host_input(work: Path, rounds: int = 4, batches: int = 24, num_images: int = 320) -> Blocked:
    """Input pipeline images/second per host core at production sizes, before and after item 6.

    Three pipelines, each confined to one tf.data thread, measured in turn (the order rotates
    every round, so a slow spell of the shared machine hits all three alike):
    before (two float32 views, flip and colour jitter on the host), after (one uint8 crop and a
    seed; the rest runs in the training step) and a plain decode of the stored JPEGs. The
    per-core rate is images per second of process CPU time (all threads counted); the wall-clock
    rate with its one thread is reported beside it.
    """
    config = load_config(REPO / "configs" / "default.yaml")
    sizes = [config.teacher.image_size, config.student.image_size]
    batch = 32
    data, tfrecords = work / "photos", work / "photos-tfrecords"
    started = time.perf_counter()
    make_photo_dataset(data, num_images)
    record_stats = build_tfrecords(index_dataset(data, config), config, tfrecords)
    prepare_s = time.perf_counter() - started
    train_records = list(tf.data.TFRecordDataset(list_shards(tfrecords, "train")))
    num_train = len(train_records)
    sources = sorted((data / "images").glob("*.jpg"))

    pipelines = {
        "before": lambda: one_thread(before_dataset(tfrecords, config, sizes, batch)),
        "after": lambda: one_thread(
            make_dataset(
                tfrecords,
                "train",
                image_sizes=sizes,
                batch_size=batch,
                training=True,
                repeat=True,
                num_classes=len(PRODUCTION_CLASSES),
                config=config,
            )
        ),
        "plain_decode": lambda: one_thread(plain_decode_dataset(tfrecords, batch)),
    }
    example = {name: next(iter(make())) for name, make in pipelines.items()}
    bytes_per_image = {name: round(_bytes_per_image(b)) for name, b in example.items()}
    (crops, seeds), _ = example["after"]
    assert crops.dtype == tf.uint8 and tuple(crops.shape[1:]) == (max(sizes), max(sizes), 3), crops.shape

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in pipelines}
    names = list(pipelines)
    for block in range(BLOCKS):
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                runs[name].append(_one_run(pipelines[name], batches))
        if block < BLOCKS - 1:
            yield

    def series(name: str, key: str) -> list[float]:
        return [run[key] for run in runs[name]]

    def ratios(a: str, b: str, goal: str | None = None) -> dict:  # per round, then median and spread
        values = stats.per_round(operator.truediv, series(a, "cpu"), series(b, "cpu"))
        return stats.summarize(values, goal) | {
            "of_medians": round(float(np.median(series(a, "cpu")) / np.median(series(b, "cpu"))), 3)
        }

    # the work moved into the step, in CPU time on this machine for scale (on a GPU it runs there)
    augment = tf.function(TrainAugment(sizes, config.data.augment).__call__)
    augment(crops, seeds)
    cpu = time.process_time()
    for _ in range(5):
        augment(crops, seeds)[-1].numpy()
    step_cpu_ms = (time.process_time() - cpu) * 1000 / (5 * batch)

    out: dict = {
        "sizes": {"teacher": sizes[0], "student": sizes[1], "stored_side": config.stored_image_side},
        "source_images": f"{num_images} JPEGs of {PRODUCTION_SOURCE[0]}x{PRODUCTION_SOURCE[1]}, {num_train} in train",
        "source_jpeg_kb_per_image": round(float(np.mean([f.stat().st_size for f in sources])) / 1000, 1),
        "stored_jpeg_kb_per_image": round(record_stats["stored_bytes"]["train"] / num_train / 1000, 1),
        "prepare_seconds": round(prepare_s, 1),
        "method": (
            f"{BLOCKS} blocks x {rounds} rounds x 3 pipelines in rotating order; a run = {batches} batches of "
            f"{batch} after a "
            "warm-up batch, fresh iterator; tf.data on one thread (private_threadpool_size=1, "
            "max_intra_op_parallelism=1); per-core rate = images / process CPU seconds"
        ),
    }
    for name in pipelines:
        out[name] = {
            "images_per_core_second": _spread(series(name, "cpu")),
            "images_per_s_wall_one_thread": _spread(series(name, "wall")),
            "cpu_per_wall": round(float(np.median(series(name, "cpu_per_wall"))), 2),
            "host_to_device_bytes_per_image": bytes_per_image[name],
        }
    out["after_vs_before"] = ratios("after", "before", "> 1")
    out["after_vs_plain_decode"] = ratios("after", "plain_decode")
    out["bytes_before_vs_after"] = round(bytes_per_image["before"] / bytes_per_image["after"], 2)
    out["in_step_augment_cpu_ms_per_image"] = round(step_cpu_ms, 3)
    return out


# === 2. Training steps ===


def _step_fn(trainer: Trainer):
    """One compiled training step on a batch of the pipeline's structure: ((uint8 crops, seeds), labels)."""

    @tf.function
    def step(images, seeds, labels):
        return trainer.train_step(((images, seeds), labels))

    return step


def bench_training(
    tfrecords: Path, config, sizes: dict[str, int], batch: int, rounds: int = ROUNDS, steps: int = 4
) -> Blocked:
    """Training steps on batches as the input pipeline gives them: uint8 crops and per-example
    seeds, turned into float views by TrainAugment inside the step (in-memory batches too, so
    the in-memory baseline does the same work as the pipeline-fed step).

    Three ratios, each from ``rounds`` alternated rounds per block of ``steps`` steps per side:
    the student step fed by the pipeline against the same step in memory; the distillation step
    against the student step plus the teacher's forward pass (inference mode) on the same
    batch, the work distillation adds being that forward pass; the QAT step against the float
    student step.
    """
    out: dict = {
        "method": (
            f"{BLOCKS} blocks x {rounds} alternated rounds (A B A B ...) of {steps} steps per side; one ratio per round"
        ),
        "steps_per_sample": steps,
    }
    keras.utils.set_random_seed(0)
    s, t = sizes["student"], sizes["teacher"]
    aug = config.data.augment
    rng = np.random.default_rng(0)
    xs = tf.constant(rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8))
    xt = tf.constant(rng.integers(0, 256, (batch, t, t, 3), dtype=np.uint8))
    seeds = tf.constant(rng.integers(-(2**62), 2**62, (batch, 2)), tf.int64)
    y = tf.constant((rng.uniform(size=(batch, 6)) > 0.6).astype(np.float32))

    student = build_student(6, s)
    plain = Trainer(student, preprocess=preprocess, augment=TrainAugment([s], aug))
    plain.compile(optimizer=keras.optimizers.Adam(1e-4))
    step = _step_fn(plain)

    def student_steps():
        for _ in range(steps):
            step(xs, seeds, y)

    # the same step fed by the real input pipeline: a fresh iterator per sample, timed after its first
    # batch, so that no sample is served from buffers filled while the machine was idle or while the
    # in-memory side ran, and no pipeline works on in the background of the next sample
    ds = make_dataset(
        tfrecords, "train", image_sizes=[s], batch_size=batch, training=True, repeat=True, num_classes=6, config=config
    )

    def fed() -> float:
        it = iter(ds)
        next(it)
        start = time.perf_counter()
        for _ in range(steps):
            (images, step_seeds), labels = next(it)
            step(images, step_seeds, labels)
        return time.perf_counter() - start

    # distillation: one crop at the teacher's size, views for the teacher (first) and student (last)
    teacher = build_teacher(6, t, weights="none")
    distill = Trainer(
        student, teacher, alpha=0.7, temperature=2.0, preprocess=preprocess, augment=TrainAugment([t, s], aug)
    )
    distill.compile(optimizer=keras.optimizers.Adam(1e-4))
    d_step = _step_fn(distill)
    xt_float = tf.cast(xt, tf.float32)
    teacher_fwd = tf.function(lambda x: teacher(x, training=False))

    def distill_steps():
        for _ in range(steps):
            d_step(xt, seeds, y)

    def teacher_forwards():
        for _ in range(steps):
            teacher_fwd(xt_float).numpy()  # numpy(): wait for it, as a training step's update does

    qat_model = quantize(build_student(6, s))
    qat = Trainer(qat_model, preprocess=preprocess, augment=TrainAugment([s], aug))
    qat.compile(optimizer=keras.optimizers.Adam(1e-5))
    q_step = _step_fn(qat)

    def qat_steps():
        for _ in range(steps):
            q_step(xs, seeds, y)

    fed_s: dict[str, list[float]] = {}
    d: dict[str, list[float]] = {}
    q: dict[str, list[float]] = {}
    for block in range(BLOCKS):
        stats.extend(fed_s, stats.alternate({"in_memory": student_steps, "fed": fed}, rounds, pause=PAUSE))
        sides = {"distill": distill_steps, "student": student_steps, "teacher": teacher_forwards}
        stats.extend(d, stats.alternate(sides, rounds, pause=PAUSE))
        stats.extend(q, stats.alternate({"float": student_steps, "qat": qat_steps}, rounds, pause=PAUSE))
        if block < BLOCKS - 1:
            yield

    out["student_step_ms_in_memory"] = stats.milliseconds(fed_s["in_memory"], steps)
    out["student_step_ms_fed_by_pipeline"] = stats.milliseconds(fed_s["fed"], steps)
    out["pipeline_fed_vs_in_memory_step_rate"] = stats.summarize(
        stats.per_round(operator.truediv, fed_s["in_memory"], fed_s["fed"]), ">= 0.90"
    )
    out["distill_step_ms"] = stats.milliseconds(d["distill"], steps)
    out["student_step_ms_beside_distill"] = stats.milliseconds(d["student"], steps)
    out["teacher_forward_ms"] = stats.milliseconds(d["teacher"], steps)
    out["distill_vs_student_step_plus_teacher_forward"] = stats.summarize(
        stats.per_round(lambda a, b, c: a / (b + c), d["distill"], d["student"], d["teacher"]), "<= 1.10"
    )
    out["float_step_ms_beside_qat"] = stats.milliseconds(q["float"], steps)
    out["qat_step_ms"] = stats.milliseconds(q["qat"], steps)
    out["qat_vs_float_student_step"] = stats.summarize(
        stats.per_round(operator.truediv, q["qat"], q["float"]), "<= 1.40"
    )
    return out


# === 3. The shipped model ===


def bench_model(image_size: int, work: Path, processes: int = 3, rounds: int = ROUNDS, images: int = 30) -> Blocked:
    """Size and latency of the INT8 model against the float TFLite model of the same student.

    Latency with 1 and 2 threads, in ``processes`` fresh processes per block (bench/latency.py:
    LiteRT without TensorFlow, as an app), each ``rounds`` alternated rounds (INT8, float, INT8,
    float ..., a pause before each sample), each sample the median of ``images`` single-image
    runs; one ratio per round. Processes, because latency moves by a few percent from one process
    to the next while staying steady within one (see bench/latency.py); many short rounds, because
    on this 2-vCPU VM 2-thread latency also switches between regimes lasting seconds (float: 7.8
    or 9.8 ms, even in one interpreter on an idle machine).
    """
    keras.utils.set_random_seed(0)
    student = build_student(6, image_size)
    qat_model = quantize(student)
    rng = np.random.default_rng(0)
    representative = rng.uniform(0, 255, (32, image_size, image_size, 3)).astype(np.float32)
    int8 = convert_int8(qat_model, representative)
    converter = tf.lite.TFLiteConverter.from_keras_model(student)
    float_model = converter.convert()
    paths = {"int8": work / "model_int8.tflite", "float": work / "model_float.tflite"}
    paths["int8"].write_bytes(int8)
    paths["float"].write_bytes(float_model)
    out: dict = {
        "image_size": image_size,
        "method": (
            f"{BLOCKS} blocks x {processes} fresh processes (bench/latency.py, LiteRT without TensorFlow) x "
            f"{rounds} alternated rounds per thread count, {PAUSE} s pause before each sample; a sample = median "
            f"of {images} single-image runs"
        ),
        "int8_bytes": len(int8),
        "float_bytes": len(float_model),
        "size_int8_vs_float": stats.summarize([len(int8) / len(float_model)], "<= 0.30", exact=True),
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    child = [sys.executable, str(Path(__file__).with_name("latency.py")), str(paths["int8"]), str(paths["float"])]
    child += ["--rounds", str(rounds), "--images", str(images), "--pause", str(PAUSE)]
    ms: dict[str, dict[str, list[float]]] = {threads: {"int8": [], "float": []} for threads in ("1", "2")}
    for block in range(BLOCKS):
        for _ in range(processes):
            result = subprocess.run(child, capture_output=True, text=True, env=env)
            if result.returncode != 0:
                raise SystemExit(f"bench/latency.py failed:\n{result.stderr[-3000:]}")
            for threads, by_model in json.loads(result.stdout.splitlines()[-1]).items():
                stats.extend(ms[threads], by_model)
        if block < BLOCKS - 1:
            yield
    for threads, by_model in ms.items():
        label = "1_thread" if threads == "1" else f"{threads}_threads"
        for name, values in by_model.items():
            out[f"{name}_ms_{label}"] = stats.summarize(values)
        out[f"latency_int8_vs_float_{label}"] = stats.summarize(
            stats.per_round(operator.truediv, by_model["int8"], by_model["float"]), "<= 0.55"
        )
    return out


# === 4. The whole run ===


def bench_run(data_dir: Path, work: Path) -> dict:
    """`mobiletag train` (kfp.local) on the sample data with configs/fast.yaml."""
    exe = Path(sys.executable).parent / "mobiletag"
    start = time.perf_counter()
    result = subprocess.run(
        [
            str(exe),
            "train",
            "--data-dir",
            str(data_dir),
            "--out-dir",
            str(work / "out"),
            "--config",
            str(REPO / "configs" / "fast.yaml"),
            "--work-dir",
            str(work / "kfp"),
            "--log-file",
            str(work / "train.log"),
        ],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"mobiletag train failed:\n{result.stderr[-3000:]}")
    # the console shows stages and epochs only; kfp.local's timestamped task lines are in the log file
    log = re.sub(r"\x1b\[[0-9;]*m", "", (work / "train.log").read_text(encoding="utf-8", errors="replace"))
    task_seconds: dict[str, float] = {}
    started: dict[str, float] = {}
    for h, m, sec, frac, event, task in re.findall(
        r"^(\d\d):(\d\d):(\d\d)\.(\d+) - \w+ - (Executing task|Task) '([a-z-]+)'", log, flags=re.MULTILINE
    ):
        t = int(h) * 3600 + int(m) * 60 + int(sec) + float(f"0.{frac}")
        if event == "Executing task":
            started[task] = t
        elif task in started:
            task_seconds[task] = round(t - started.pop(task), 1)
    compute = {}
    for metrics_file in (work / "kfp").rglob("executor_output.json"):
        data = json.loads(metrics_file.read_text())
        for artifact in data.get("artifacts", {}).values():
            for a in artifact.get("artifacts", []):
                meta = a.get("metadata", {})
                if "seconds" in meta:
                    compute[metrics_file.parent.name] = float(meta["seconds"])
    overhead = {
        task: round(1 - compute[task] / total, 3)
        for task, total in task_seconds.items()
        if task in compute and total > 0
    }
    metrics = json.loads((work / "out" / "metrics.json").read_text())
    block = metrics.get("distillation") or {}
    return {
        "wall_seconds": round(wall, 1),
        "console_lines": len(result.stdout.splitlines()) + len(result.stderr.splitlines()),
        "quality": {
            "test_map_macro_int8": metrics["test"]["map_macro"],
            "test_map_macro_float_student": metrics["compare"]["student"]["map_macro"],
            "test_map_macro_teacher": metrics["compare"]["teacher"]["map_macro"],
            "test_f1_micro_int8": metrics["test"]["f1_micro"],
            "shipped_student": block.get("shipped"),
            "distilled_minus_baseline_test_map": block.get("test_difference"),
            "students": block.get("students"),
        },
        "task_seconds": task_seconds,
        "stage_compute_seconds": compute,
        "overhead_share": overhead,
        "outside_compute_share": round(1 - sum(compute.values()) / wall, 3) if compute else None,
    }


def bench_spread(data_dir: Path, work: Path, runs: int = 3) -> dict:
    """Run-to-run spread of test mAP with ``reproducible: false``: the demo's training (configs/fast.yaml,
    in-process runner, no baseline student) ``runs`` times on the same data and seed. What a change
    must beat to be told from chance (gate.min_improvement)."""
    exe = Path(sys.executable).parent / "mobiletag"
    config = work / "spread.yaml"
    fast = yaml.safe_load((REPO / "configs" / "fast.yaml").read_text())
    config.write_text(yaml.safe_dump({**fast, "reproducible": False}))
    figures: dict[str, list[float]] = {"test_map_macro_int8": [], "test_map_macro_float_student": []}
    seconds = []
    for i in range(runs):
        out = work / f"spread-{i}"
        start = time.perf_counter()
        result = subprocess.run(
            [
                *(str(exe), "train", "--runner", "inprocess", "--no-baseline-student", "--data-dir", str(data_dir)),
                *("--config", str(config), "--out-dir", str(out), "--log-file", str(work / f"spread-{i}.log")),
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise SystemExit(f"mobiletag train failed:\n{result.stderr[-3000:]}")
        seconds.append(round(time.perf_counter() - start, 1))
        metrics = json.loads((out / "metrics.json").read_text())
        figures["test_map_macro_int8"].append(metrics["test"]["map_macro"])
        figures["test_map_macro_float_student"].append(metrics["compare"]["student"]["map_macro"])
    return {
        "method": f"{runs} runs of `mobiletag train --runner inprocess --no-baseline-student`, configs/fast.yaml "
        "with reproducible: false, the same data and seed",
        "seconds": seconds,
        **{name: stats.summarize(values, digits=4) for name, values in figures.items()},
    }


def bench_process_start(repeats: int = 3) -> dict:
    """What a stage pays before its own code runs: a fresh Python process and its imports.

    kfp.local (like a cluster) starts every task as a new process; these figures explain the
    overhead share of short stages.
    """
    imports = {
        "tensorflow_tf_keras": "import tensorflow, tf_keras",
        "stage_evaluate": "import mobiletag.stages.evaluate",
    }
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    seconds = stats.alternate(
        {
            name: lambda code=code: subprocess.run(
                [sys.executable, "-c", code], check=True, env=env, capture_output=True
            )
            for name, code in imports.items()
        },
        repeats,
        warm_up=False,
    )
    return {f"{name}_s": stats.summarize(values, digits=2) for name, values in seconds.items()}


# === 5. The cost of op determinism (issue 20) ===

DETERMINISM_MODES = ("off", "on")


def determinism_child(mode: str, tfrecords: Path) -> None:
    """A child of :func:`bench_determinism`: the student step with op determinism ``mode``.

    With ``on``: ``tf.config.experimental.enable_op_determinism()`` before anything runs, and
    the training dataset's ``tf.data.Options.deterministic`` set. Prints ``READY`` after its
    warm-up, then for each line ``KIND STEPS`` read from stdin (KIND: in_memory or fed) runs
    STEPS steps and prints ``SECONDS s``.
    """
    if mode == "on":
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)
    config = load_config(REPO / "configs" / "fast.yaml")
    s, batch = config.student.image_size, config.student.batch_size
    rng = np.random.default_rng(0)
    xs = tf.constant(rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8))
    seeds = tf.constant(rng.integers(-(2**62), 2**62, (batch, 2)), tf.int64)
    y = tf.constant((rng.uniform(size=(batch, 6)) > 0.6).astype(np.float32))
    trainer = Trainer(build_student(6, s), preprocess=preprocess, augment=TrainAugment([s], config.data.augment))
    trainer.compile(optimizer=keras.optimizers.Adam(1e-4))
    step = _step_fn(trainer)
    ds = make_dataset(
        tfrecords, "train", image_sizes=[s], batch_size=batch, training=True, repeat=True, num_classes=6, config=config
    )
    if mode == "on":
        options = tf.data.Options()
        options.deterministic = True
        ds = ds.with_options(options)

    def run(kind: str, steps: int) -> float:
        """Seconds of ``steps`` steps; fed: by a fresh iterator, timed after its first batch (as in
        bench_training)."""
        if kind == "fed":
            it = iter(ds)
            next(it)
        start = time.perf_counter()
        for _ in range(steps):
            if kind == "fed":
                (images, step_seeds), labels = next(it)
                step(images, step_seeds, labels)
            else:
                step(xs, seeds, y)
        return time.perf_counter() - start

    run("in_memory", 2)
    run("fed", 2)
    print("READY", flush=True)
    for line in iter(sys.stdin.readline, ""):
        kind, steps = line.split()
        print(f"SECONDS {run(kind, int(steps))}", flush=True)


def bench_determinism(tfrecords: Path, work: Path, rounds: int = ROUNDS, steps: int = 4) -> Blocked:
    """The student training step with op determinism on against off (issue 20).

    Op determinism is process-wide: TensorFlow has ``disable_op_determinism()`` (not exported;
    ``_pywrap_determinism.enable(False)``), but kernels and datasets read the flag when they
    are built and a traced step keeps them, so one process could not switch a step between
    the two. Two child processes therefore run this script's :func:`determinism_child`, one
    per mode, both warmed up before timing; they are asked in turn (off, on, off, on ...) for
    ``steps`` steps in memory and then fed by the pipeline, ``rounds`` rounds per block; the one
    not asked waits on its stdin (between the blocks too).
    """
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    children: dict[str, subprocess.Popen] = {}
    logs = {mode: work / f"determinism-{mode}.log" for mode in DETERMINISM_MODES}

    def fail(mode: str, what: str) -> SystemExit:
        tail = logs[mode].read_text(errors="replace")[-3000:] if logs[mode].is_file() else ""
        return SystemExit(f"determinism child ({mode}): {what}; its log {logs[mode]} ends:\n{tail}")

    def read(mode: str, prefix: str) -> str:
        stdout = children[mode].stdout
        assert stdout is not None
        for line in iter(stdout.readline, ""):
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        raise fail(mode, f"exited (code {children[mode].wait()}) before printing {prefix.strip()}")

    try:
        for mode in DETERMINISM_MODES:
            children[mode] = subprocess.Popen(
                [sys.executable, __file__, "--determinism-child", mode, "--tfrecords", str(tfrecords)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=logs[mode].open("w"),
                text=True,
                env=env,
            )
        for mode in DETERMINISM_MODES:
            read(mode, "READY")

        def ask(mode: str, kind: str) -> None:
            time.sleep(PAUSE)
            stdin = children[mode].stdin
            assert stdin is not None
            stdin.write(f"{kind} {steps}\n")
            stdin.flush()
            seconds[kind][mode].append(float(read(mode, "SECONDS ")))

        seconds = {kind: {mode: [] for mode in DETERMINISM_MODES} for kind in ("in_memory", "fed")}
        for block in range(BLOCKS):
            for _ in range(rounds):
                for kind in seconds:
                    for mode in DETERMINISM_MODES:
                        ask(mode, kind)
            if block < BLOCKS - 1:
                yield
    finally:
        for child in children.values():
            if child.stdin:
                child.stdin.close()
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
    out: dict = {
        "method": (
            f"two child processes (op determinism off / on, the latter with tf.data deterministic), "
            f"{BLOCKS} blocks x {rounds} rounds asked in turn, {steps} steps per sample; one ratio per round"
        ),
    }
    for kind, by_mode in seconds.items():
        for mode, values in by_mode.items():
            out[f"student_step_ms_{kind}_determinism_{mode}"] = stats.milliseconds(values, steps)
        out[f"{kind}_step_determinism_on_vs_off"] = stats.summarize(
            stats.per_round(operator.truediv, by_mode["on"], by_mode["off"])
        )
    return out


# === The machine ===

# CPU features the INT8 (and float) kernels of XNNPACK / TensorFlow can use, as /proc/cpuinfo names them
CPU_FEATURES = (
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "avxvnni",
    "avx_vnni_int8",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "asimdhp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
)


def cpu() -> dict:
    """CPU model and the instruction sets INT8 kernels use: from /proc/cpuinfo on Linux, else what
    Python's platform module (and sysctl on macOS) tells."""
    model, flags = "", None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ("model name", "Hardware", "cpu model", "Model") and not model:
            model = value
        elif key in ("flags", "Features") and flags is None:
            flags = set(value.split())
    if not model and sys.platform == "darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            model = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count()
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "cores_available": available,
        "cpu_features": sorted(f for f in CPU_FEATURES if f in flags) if flags is not None else "unknown",
    }


def version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(package)
    except PackageNotFoundError:
        return None


def machine() -> dict:
    return {
        **cpu(),
        "architecture": platform.machine(),
        "platform": platform.platform(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tf_keras": version("tf_keras"),
        "litert": version("ai-edge-litert"),
        "tfmot": version("tensorflow-model-optimization"),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


SECTIONS = ("input", "host_input", "training", "determinism", "model", "run", "process_start", "spread")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "bench" / "results.json"))
    parser.add_argument("--skip-run", action="store_true", help="skip the whole-run measurement")
    parser.add_argument(
        "--only", choices=SECTIONS, help="measure this section only and update it in --out, keeping the others"
    )
    parser.add_argument("--determinism-child", choices=DETERMINISM_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--tfrecords", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.determinism_child:
        determinism_child(args.determinism_child, args.tfrecords)
        return
    started = time.perf_counter()
    config = load_config(REPO / "configs" / "fast.yaml")
    sizes = {"teacher": config.teacher.image_size, "student": config.student.image_size}
    batch = config.student.batch_size
    out_path = Path(args.out)
    results: dict = {}
    previous = json.loads(out_path.read_text()) if out_path.is_file() else {}
    if args.only:
        results = dict(previous)  # the other sections stay as they were
    elif "spread" in previous:
        results["spread"] = previous["spread"]  # make bench-spread's, which make bench does not measure
    results.update({"machine": machine(), "sizes": sizes, "batch": batch})
    with tempfile.TemporaryDirectory(prefix="mobiletag-bench-") as tmp:
        work = Path(tmp)

        def sample() -> tuple[Path, Path]:
            """The sample dataset and its TFRecords (fast.yaml sizes), built on first use."""
            if not (work / "tfrecords").is_dir():
                make_sample_dataset(work / "data", num_images=1000, seed=0)
                build_tfrecords(index_dataset(work / "data", config), config, work / "tfrecords")
            return work / "data", work / "tfrecords"

        sections = [
            ("input", "input pipeline", lambda: bench_input(*sample(), config, sizes, batch)),
            (
                "host_input",
                "input pipeline per host core, production sizes (300/240 px, ~1 MP sources)",
                lambda: bench_host_input(work),
            ),
            ("training", "training steps", lambda: bench_training(sample()[1], config, sizes, batch)),
            ("determinism", "op determinism on / off (two processes)", lambda: bench_determinism(sample()[1], work)),
            ("model", "model", lambda: bench_model(240, work)),
            ("run", "whole run (mobiletag train, configs/fast.yaml)", lambda: bench_run(sample()[0], work)),
            ("process_start", "new process + imports", bench_process_start),
            ("spread", "run-to-run spread, reproducible: false (3 runs)", lambda: bench_spread(sample()[0], work)),
        ]
        if args.only:
            sections = [section for section in sections if section[0] == args.only]
        elif args.skip_run:
            sections = [section for section in sections if section[0] not in ("run", "process_start", "spread")]
        else:
            sections = [section for section in sections if section[0] != "spread"]  # make bench-spread
        section_seconds = dict(results.get("bench_seconds", {})) if args.only else {}
        results.update(run_sections(sections, section_seconds))
        results["bench_seconds"] = section_seconds
    if not args.only:
        results["bench_seconds"]["total"] = round(time.perf_counter() - started, 1)
    measured = [key for key, _, _ in sections]
    agreement = stats.agreement({k: previous.get(k, {}) for k in measured}, {k: results[k] for k in measured})
    if agreement["of"] and previous.get("machine", {}).get("cpu_model") == results["machine"]["cpu_model"]:
        rows = results.get("previous_run", {}).get("ratios", {}) if args.only else {}  # the other sections' rows
        rows = {path: row for path, row in rows.items() if path.split(".")[0] not in measured}
        rows.update(agreement["ratios"])
        results["previous_run"] = {
            "date": previous["machine"].get("date"),
            "ratios": dict(sorted(rows.items())),
            "agree": sum(row["agree"] for row in rows.values()),
            "of": len(rows),
        }
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def run_sections(sections: list[tuple[str, str, Callable[[], object]]], seconds: dict[str, float]) -> dict:
    """Measures the sections in order, a blocked one's (:data:`Blocked`) first block in that order and
    its further blocks after every section has run (so, in `make bench`, after the whole run); adds
    each section's seconds to ``seconds`` and returns the results by section."""
    results: dict = {}
    blocked: dict[str, tuple[str, Blocked]] = {}
    for key, title, measure in sections:
        print(f"{title} ...", flush=True)
        start = time.perf_counter()
        result = measure()
        if inspect.isgenerator(result):
            next(result)  # set up and measure the first block
            blocked[key] = (title, result)
        else:
            results[key] = result
        seconds[key] = round(time.perf_counter() - start, 1)
    for key, (title, gen) in blocked.items():
        print(f"{title}: the other blocks ...", flush=True)
        start = time.perf_counter()
        while True:
            try:
                next(gen)
            except StopIteration as done:
                results[key] = done.value
                break
        seconds[key] = round(seconds[key] + time.perf_counter() - start, 1)
    return {key: results[key] for key, _, _ in sections}  # in the sections' order


# === The table ===


def _fmt(x: object) -> str:
    """A figure: the median of a summary, or the figure itself."""
    return str(x["median"]) if isinstance(x, dict) else str(x)


def _row(measure: str, figures: str, ratio: object, goal: str = "") -> tuple[str, ...]:
    """measure | figures | median | [min, max] | n | goal | status, from a summary (or a bare figure of
    an older results file)."""
    if isinstance(ratio, dict):
        spread = f"[{ratio['min']}, {ratio['max']}]" if ratio.get("n", 1) > 1 else ""
        return (
            measure,
            figures,
            str(ratio["median"]),
            spread,
            str(ratio.get("n", "")),
            ratio.get("goal", goal),
            ratio.get("status", ""),
        )
    return (measure, figures, "" if ratio is None else str(ratio), "", "1" if ratio not in ("", None) else "", goal, "")


def _section_rows(key: str, r: dict) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    if key == "input":
        i = r["input"]
        pipe = _fmt(i["pipeline_student_images_per_s"])
        rows += [
            (
                _row(
                    "input: train pipeline (student size) / raw JPEG decode, img/s",
                    f"{pipe} / {_fmt(i['raw_decode_images_per_s_1_thread'])}",
                    i["pipeline_student_vs_raw_decode"],
                    ">= 1",
                )
            ),
            _row(
                "input: train pipeline (student size) / PIL decode+resize of the files, img/s",
                f"{pipe} / {_fmt(i['pil_files_images_per_s'])}",
                i["pipeline_student_vs_pil_files"],
                "> 1",
            ),
        ]
    elif key == "host_input":
        h = r["host_input"]

        def per_core(name: str) -> str:
            return _fmt(h[name]["images_per_core_second"])

        sides = f"{h['sizes']['teacher']}/{h['sizes']['student']} px"
        rows += [
            _row(
                f"host input per core at {sides}: after item 6 / before, img/s",
                f"{per_core('after')} / {per_core('before')}",
                h["after_vs_before"],
                "> 1",
            ),
            _row(
                "host input per core: after item 6 / plain decode of the stored JPEGs, img/s",
                f"{per_core('after')} / {per_core('plain_decode')}",
                h["after_vs_plain_decode"],
            ),
            _row(
                "host-to-device bytes per image: before / after item 6",
                f"{h['before']['host_to_device_bytes_per_image']} / {h['after']['host_to_device_bytes_per_image']}",
                h["bytes_before_vs_after"],
            ),
        ]
    elif key == "training":
        t = r["training"]
        rows += [
            _row(
                "student step rate: fed by pipeline / in memory",
                f"{_fmt(t['student_step_ms_fed_by_pipeline'])} / {_fmt(t['student_step_ms_in_memory'])} ms",
                t["pipeline_fed_vs_in_memory_step_rate"],
                ">= 0.90",
            ),
            _row(
                "distill step / (student step + teacher forward, inference mode)",
                f"{_fmt(t['distill_step_ms'])} / ({_fmt(t['student_step_ms_beside_distill'])} + "
                f"{_fmt(t['teacher_forward_ms'])}) ms",
                t["distill_vs_student_step_plus_teacher_forward"],
                "<= 1.10",
            ),
            _row(
                "QAT step / float student step",
                f"{_fmt(t['qat_step_ms'])} / {_fmt(t['float_step_ms_beside_qat'])} ms",
                t["qat_vs_float_student_step"],
                "<= 1.40",
            ),
        ]
    elif key == "determinism":
        d = r["determinism"]
        for kind, label in (("in_memory", "in memory"), ("fed", "fed by the pipeline")):
            rows.append(
                _row(
                    f"student step {label}: op determinism on / off",
                    f"{_fmt(d[f'student_step_ms_{kind}_determinism_on'])} / "
                    f"{_fmt(d[f'student_step_ms_{kind}_determinism_off'])} ms",
                    d[f"{kind}_step_determinism_on_vs_off"],
                )
            )
    elif key == "model":
        m = r["model"]
        rows.append(
            _row(
                f"INT8 / float TFLite size (Lite1 @{m['image_size']})",
                f"{m['int8_bytes']} / {m['float_bytes']} B",
                m["size_int8_vs_float"],
                "<= 0.30",
            )
        )
        for label, name in (("1_thread", "1 thread"), ("2_threads", "2 threads")):
            rows.append(
                _row(
                    f"INT8 / float latency, {name}",
                    f"{_fmt(m[f'int8_ms_{label}'])} / {_fmt(m[f'float_ms_{label}'])} ms",
                    m[f"latency_int8_vs_float_{label}"],
                    "<= 0.55",
                )
            )
    elif key == "run":
        run = r["run"]
        wall = run["wall_seconds"]
        rows.append(
            _row(
                "whole demo run (`mobiletag train`, kfp.local), s",
                f"{wall}",
                stats.summarize([wall], "< 900", digits=1),
            )
        )
        if "console_lines" in run:
            lines = run["console_lines"]
            rows.append(
                _row(
                    "`mobiletag train` console lines (the full log goes to a file)",
                    f"{lines}",
                    stats.summarize([lines], "< 80"),
                )
            )
        if quality := run.get("quality"):
            figures = (
                f"INT8 {quality['test_map_macro_int8']}, float student {quality['test_map_macro_float_student']}, "
                f"teacher {quality['test_map_macro_teacher']}; shipped: {quality['shipped_student']}"
            )
            rows.append(_row("demo test macro mAP", figures, ""))
            gap = round(quality["test_map_macro_int8"] - quality["test_map_macro_float_student"], 4)
            rows.append(
                _row(
                    "demo test macro mAP: abs(INT8 - float student)",
                    f"{gap:+.4f}",
                    stats.summarize([abs(gap)], "<= 0.02", digits=4),
                )
            )
            if diff := quality.get("distilled_minus_baseline_test_map"):
                rows.append(
                    _row(
                        "demo test macro mAP: distilled - baseline student (95% bootstrap)",
                        f"{diff['value']} [{diff['ci'][0]}, {diff['ci'][1]}]",
                        "",
                    )
                )
        for task, total in run["task_seconds"].items():
            share = run["overhead_share"].get(task)
            compute = run["stage_compute_seconds"].get(task)
            figures = f"{total} s, {compute} s in the stage" if compute is not None else f"{total} s"
            summary = stats.summarize([share], "<= 0.20") if share is not None else ""
            rows.append(_row(f"stage {task}: overhead share", figures, summary, "<= 0.20"))
    elif key == "spread":
        spread = r["spread"]
        for name, label in (("test_map_macro_int8", "INT8"), ("test_map_macro_float_student", "float student")):
            summary = spread[name]
            rows.append(
                _row(
                    f"test macro mAP, {label}, reproducible: false: spread over {summary['n']} runs",
                    ", ".join(str(v) for v in summary["samples"]),
                    summary,
                )
            )
    elif key == "process_start":
        start = r["process_start"]
        rows.append(
            _row(
                "new process + imports (median), s",
                ", ".join(f"{k[:-2]} {_fmt(v)}" for k, v in start.items()),
                "",
            )
        )
    return rows


def table(r: dict) -> str:
    """The Markdown table of the sections present in r (``--only`` may have measured one)."""
    rows: list[tuple[str, ...]] = []
    for key in SECTIONS:
        if key not in r:
            continue
        try:
            rows += _section_rows(key, r)
        except (KeyError, TypeError):  # a section of an older results file
            rows.append((f"{key}: recorded in an older format, re-measure with --only {key}", "", "", "", "", "", ""))
    if "bench_seconds" in r:
        spent = dict(r["bench_seconds"])
        total = spent.pop("total", round(sum(spent.values()), 1))
        rows.append(
            _row(
                "this benchmark, s",
                f"{total} ({', '.join(f'{k} {v}' for k, v in spent.items())})",
                stats.summarize([total], "< 1200", digits=1),
            )
        )
    m = r["machine"]
    features = m.get("cpu_features", "unknown")
    machine_line = (
        f"{m.get('cpu_model', '?')}, {m.get('cores')} cores "
        f"({', '.join(features) if isinstance(features, list) else features}); "
        f"{m.get('gpus', 0)} GPU; Python {m.get('python')}, TensorFlow {m.get('tensorflow')}, "
        f"LiteRT {m.get('litert')}; {m.get('date')}"
    )
    lines = [
        machine_line,
        "",
        "| measure | figures (medians) | ratio (median) | [min, max] | n | goal | status |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    if previous := r.get("previous_run"):
        lines += [
            "",
            f"Against the previous run ({previous['date']}): {previous['agree']} of {previous['of']} ratios agree "
            "(each run's median within the other's [min, max]).",
            "",
            "| ratio | previous: median [min, max] | this run: median [min, max] | agree |",
            "|---|---|---|---|",
        ]
        for path, row in previous["ratios"].items():
            (a, a_min, a_max), (b, b_min, b_max) = row["previous"], row["current"]
            agree = "yes" if row["agree"] else "**no**"
            lines.append(f"| {path} | {a} [{a_min}, {a_max}] | {b} [{b_min}, {b_max}] | {agree} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""`make bench`: the pipeline's speed as ratios of two things measured in the same run.

Writes bench/results.json and prints a table. Small enough to finish in under 10 minutes
on 2 cores: it trains nothing to convergence, it times steps.

    python bench/run.py [--skip-run] [--only SECTION] [--out bench/results.json]

``--only SECTION`` measures one section (input, host_input, training, model, run,
process_start) and updates that section of the results file, keeping the others.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf_keras for QAT, before TensorFlow is imported

import argparse
import csv
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from mobiletag.config import AugmentConfig, Config, load_config
from mobiletag.data.augment import TrainAugment
from mobiletag.data.dataset import index_dataset
from mobiletag.data.pipeline import _random_crop, list_shards, make_dataset
from mobiletag.data.sample import make_sample_dataset
from mobiletag.data.tfrecords import build_tfrecords
from mobiletag.export.tflite import TFLiteModel, convert_int8
from mobiletag.models.student import build_student, preprocess
from mobiletag.models.teacher import build_teacher
from mobiletag.quantization.qat import quantize
from mobiletag.training.fit import Trainer

REPO = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() over repeats, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def paired(fa, fb, repeats: int) -> tuple[float, float]:
    """Median seconds of fa() and of fb(), called in turn (A B A B ...) after a warm-up of each,
    so that a slow spell of a shared machine hits both sides of a ratio alike."""
    fa()
    fb()
    a: list[float] = []
    b: list[float] = []
    for _ in range(repeats):
        for fn, times in ((fa, a), (fb, b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return float(np.median(a)), float(np.median(b))


def rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("inf")


# === 1. Input pipeline ===


def bench_input(data_dir: Path, tfrecords: Path, config, sizes: dict[str, int], batch: int) -> dict:
    out: dict = {}
    # the naive way: open the original files with PIL in a Python loop, RGB, resize, to float
    from PIL import Image

    files = sorted((data_dir / "images").rglob("*.*"))[:300]

    def pil_all():
        for f in files:
            with Image.open(f) as im:
                np.asarray(im.convert("RGB").resize((sizes["student"],) * 2, Image.Resampling.BILINEAR), np.float32)

    pil = rate(len(files), timed(pil_all, 2))
    out["pil_files_images_per_s"] = round(pil, 1)
    # raw decode of the same JPEG bytes in a tight loop (the floor of what tf.data can do)
    records = [r.numpy() for r in tf.data.TFRecordDataset(list_shards(tfrecords, "train"))]
    feature = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
    jpegs = [tf.io.parse_single_example(r, feature)["image/encoded"] for r in records]
    decode = tf.function(lambda b: tf.io.decode_jpeg(b, channels=3))
    n = len(jpegs)

    def decode_all():
        for j in jpegs:
            decode(j)

    raw = rate(n, timed(decode_all, 3))
    out["raw_decode_images_per_s_1_thread"] = round(raw, 1)
    for name, size_list in (
        ("student", [sizes["student"]]),
        ("teacher", [sizes["teacher"]]),
        ("distill_two_views", [sizes["teacher"], sizes["student"]]),
    ):
        ds = make_dataset(
            tfrecords,
            "train",
            image_sizes=size_list,
            batch_size=batch,
            training=True,
            repeat=True,
            num_classes=6,
            config=config,
        )
        it = iter(ds)
        for _ in range(3):
            next(it)
        steps = 30
        start = time.perf_counter()
        for _ in range(steps):
            next(it)
        seconds = time.perf_counter() - start
        out[f"pipeline_{name}_images_per_s"] = round(rate(steps * batch, seconds), 1)
    out["pipeline_student_vs_raw_decode"] = round(out["pipeline_student_images_per_s"] / raw, 3)
    out["pipeline_student_vs_pil_files"] = round(out["pipeline_student_images_per_s"] / pil, 3)
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


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(float(np.median(values)), 2),
        "min": round(float(np.min(values)), 2),
        "max": round(float(np.max(values)), 2),
    }


def bench_host_input(work: Path, rounds: int = 5, batches: int = 24, num_images: int = 320) -> dict:
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
    stats = build_tfrecords(index_dataset(data, config), config, tfrecords)
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
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            runs[name].append(_one_run(pipelines[name], batches))

    def series(name: str, key: str) -> list[float]:
        return [run[key] for run in runs[name]]

    def ratios(a: str, b: str) -> dict[str, float]:  # per round, then median and spread
        values = [x / y for x, y in zip(series(a, "cpu"), series(b, "cpu"))]
        return {k: round(v, 3) for k, v in _spread(values).items()} | {
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
        "stored_jpeg_kb_per_image": round(stats["stored_bytes"]["train"] / num_train / 1000, 1),
        "prepare_seconds": round(prepare_s, 1),
        "method": (
            f"{rounds} rounds x 3 pipelines in rotating order; a run = {batches} batches of {batch} after a "
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
    out["after_vs_before"] = ratios("after", "before")
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


def bench_training(tfrecords: Path, config, sizes: dict[str, int], batch: int) -> dict:
    """Training steps on batches as the input pipeline gives them: uint8 crops and per-example
    seeds, turned into float views by TrainAugment inside the step (in-memory batches too, so
    the in-memory baseline does the same work as the pipeline-fed step)."""
    out: dict = {}
    keras.utils.set_random_seed(0)
    s, t = sizes["student"], sizes["teacher"]
    aug = config.data.augment
    rng = np.random.default_rng(0)
    xs = tf.constant(rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8))
    xt = tf.constant(rng.integers(0, 256, (batch, t, t, 3), dtype=np.uint8))
    seeds = tf.constant(rng.integers(-(2**62), 2**62, (batch, 2)), tf.int64)
    y = tf.constant((rng.uniform(size=(batch, 6)) > 0.6).astype(np.float32))
    steps = 5

    student = build_student(6, s)
    plain = Trainer(student, preprocess=preprocess, augment=TrainAugment([s], aug))
    plain.compile(optimizer=keras.optimizers.Adam(1e-4))
    step = _step_fn(plain)

    # the same step fed by the real input pipeline
    ds = make_dataset(
        tfrecords, "train", image_sizes=[s], batch_size=batch, training=True, repeat=True, num_classes=6, config=config
    )
    it = iter(ds)

    def fed():
        for _ in range(steps):
            (images, step_seeds), labels = next(it)
            step(images, step_seeds, labels)

    # 7 alternated rounds: on a shared 2-core machine 3 rounds left the ratio at the mercy of one slow spell
    in_memory, fed_s = paired(lambda: [step(xs, seeds, y) for _ in range(steps)], fed, 7)
    in_memory, fed_s = in_memory / steps, fed_s / steps
    out["student_step_ms_in_memory"] = round(in_memory * 1000, 1)
    out["student_step_ms_fed_by_pipeline"] = round(fed_s * 1000, 1)
    out["pipeline_fed_vs_in_memory_step_rate"] = round(in_memory / fed_s, 3)

    teacher = build_teacher(6, t, weights="none")
    teacher_only = Trainer(teacher, augment=TrainAugment([t], aug))
    teacher_only.compile(optimizer=keras.optimizers.Adam(1e-4))
    t_step = _step_fn(teacher_only)
    teacher_fwd_bwd = timed(lambda: [t_step(xt, seeds, y) for _ in range(steps)], 2) / steps
    xt_float = tf.cast(xt, tf.float32)
    teacher_fwd = tf.function(lambda x: teacher(x, training=False))
    teacher_forward = timed(lambda: [teacher_fwd(xt_float) for _ in range(steps)], 2) / steps

    # distillation: one crop at the teacher's size, views for the teacher (first) and student (last)
    distill = Trainer(
        student, teacher, alpha=0.7, temperature=2.0, preprocess=preprocess, augment=TrainAugment([t, s], aug)
    )
    distill.compile(optimizer=keras.optimizers.Adam(1e-4))
    d_step = _step_fn(distill)
    distill_s = timed(lambda: [d_step(xt, seeds, y) for _ in range(steps)], 2) / steps
    out["distill_step_ms"] = round(distill_s * 1000, 1)
    out["teacher_forward_ms"] = round(teacher_forward * 1000, 1)
    out["teacher_forward_backward_ms"] = round(teacher_fwd_bwd * 1000, 1)
    out["distill_vs_student_step_plus_teacher_forward"] = round(distill_s / (in_memory + teacher_forward), 3)
    out["distill_vs_sum_of_both_forward_backward"] = round(distill_s / (in_memory + teacher_fwd_bwd), 3)

    qat_model = quantize(build_student(6, s))
    qat = Trainer(qat_model, preprocess=preprocess, augment=TrainAugment([s], aug))
    qat.compile(optimizer=keras.optimizers.Adam(1e-5))
    q_step = _step_fn(qat)
    float_s, qat_s = paired(
        lambda: [step(xs, seeds, y) for _ in range(steps)], lambda: [q_step(xs, seeds, y) for _ in range(steps)], 3
    )
    float_s, qat_s = float_s / steps, qat_s / steps
    out["float_step_ms_beside_qat"] = round(float_s * 1000, 1)
    out["qat_step_ms"] = round(qat_s * 1000, 1)
    out["qat_vs_float_student_step"] = round(qat_s / float_s, 3)
    return out


# === 3. The shipped model ===


def bench_model(image_size: int) -> dict:
    keras.utils.set_random_seed(0)
    student = build_student(6, image_size)
    qat_model = quantize(student)
    rng = np.random.default_rng(0)
    representative = rng.uniform(0, 255, (32, image_size, image_size, 3)).astype(np.float32)
    int8 = convert_int8(qat_model, representative)
    converter = tf.lite.TFLiteConverter.from_keras_model(student)
    float_model = converter.convert()
    out: dict[str, float] = {"image_size": image_size, "int8_bytes": len(int8), "float_bytes": len(float_model)}
    for threads in (1, 2):
        # INT8 and float in turn, three rounds of 50 images each: a slow spell hits both
        runners = {"int8": TFLiteModel(int8, threads), "float": TFLiteModel(float_model, threads)}
        ms: dict[str, list[float]] = {"int8": [], "float": []}
        for _ in range(3):
            for name, runner in runners.items():
                ms[name].append(runner.latency_ms(50))
        for name, values in ms.items():
            out[f"{name}_ms_{threads}_thread"] = round(float(np.median(values)), 3)
    out["size_int8_vs_float"] = round(len(int8) / len(float_model), 3)
    out["latency_int8_vs_float_1_thread"] = round(out["int8_ms_1_thread"] / out["float_ms_1_thread"], 3)
    out["latency_int8_vs_float_2_threads"] = round(out["int8_ms_2_thread"] / out["float_ms_2_thread"], 3)
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
        ],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"mobiletag train failed:\n{result.stderr[-3000:]}")
    log = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)  # kfp.local colours task names
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
    return {
        "wall_seconds": round(wall, 1),
        "task_seconds": task_seconds,
        "stage_compute_seconds": compute,
        "overhead_share": overhead,
        "outside_compute_share": round(1 - sum(compute.values()) / wall, 3) if compute else None,
    }


def bench_process_start() -> dict:
    """What a stage pays before its own code runs: a fresh Python process and its imports.

    kfp.local (like a cluster) starts every task as a new process; these figures explain the
    overhead share of short stages.
    """
    imports = {
        "tensorflow_tf_keras": "import tensorflow, tf_keras",
        "stage_evaluate": "import mobiletag.stages.evaluate",
    }
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = {}
    for name, code in imports.items():
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
            seconds.append(time.perf_counter() - start)
        out[f"{name}_s"] = round(sorted(seconds)[1], 2)
    return out


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "platform": platform.platform(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


SECTIONS = ("input", "host_input", "training", "model", "run", "process_start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "bench" / "results.json"))
    parser.add_argument("--skip-run", action="store_true", help="skip the whole-run measurement")
    parser.add_argument(
        "--only", choices=SECTIONS, help="measure this section only and update it in --out, keeping the others"
    )
    args = parser.parse_args()
    config = load_config(REPO / "configs" / "fast.yaml")
    sizes = {"teacher": config.teacher.image_size, "student": config.student.image_size}
    batch = config.student.batch_size
    out_path = Path(args.out)
    results: dict = {}
    if args.only and out_path.is_file():
        results = json.loads(out_path.read_text())  # the other sections stay as last measured
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
            ("model", "model", lambda: bench_model(240)),
            ("run", "whole run (mobiletag train, configs/fast.yaml)", lambda: bench_run(sample()[0], work)),
            ("process_start", "new process + imports", bench_process_start),
        ]
        if args.only:
            sections = [section for section in sections if section[0] == args.only]
        elif args.skip_run:
            sections = [section for section in sections if section[0] not in ("run", "process_start")]
        section_seconds = dict(results.get("bench_seconds", {})) if args.only else {}
        for key, title, measure in sections:
            print(f"{title} ...", flush=True)
            start = time.perf_counter()
            results[key] = measure()
            section_seconds[key] = round(time.perf_counter() - start, 1)
        results["bench_seconds"] = section_seconds
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def table(r: dict) -> str:
    """The Markdown table of the sections present in r (``--only`` may have measured one)."""
    rows: list[tuple[str, object, object, str]] = []
    if "input" in r:
        i = r["input"]
        rows += [
            (
                "input: train pipeline (student size) / raw JPEG decode, img/s",
                f"{i['pipeline_student_images_per_s']} / {i['raw_decode_images_per_s_1_thread']}",
                i["pipeline_student_vs_raw_decode"],
                ">= 1 (parallel)",
            ),
            (
                "input: train pipeline (student size) / PIL decode+resize of the files, img/s",
                f"{i['pipeline_student_images_per_s']} / {i['pil_files_images_per_s']}",
                i["pipeline_student_vs_pil_files"],
                "> 1",
            ),
        ]
    if "host_input" in r:
        h = r["host_input"]

        def per_core(name: str) -> str:
            f = h[name]["images_per_core_second"]
            return f"{f['median']} ({f['min']}-{f['max']})"

        sides = f"{h['sizes']['teacher']}/{h['sizes']['student']} px"
        rows += [
            (
                f"host input per core at {sides}: after item 6 / before, img/s (min-max)",
                f"{per_core('after')} / {per_core('before')}",
                f"{h['after_vs_before']['median']} ({h['after_vs_before']['min']}-{h['after_vs_before']['max']})",
                "> 1",
            ),
            (
                "host input per core: after item 6 / plain decode of the stored JPEGs, img/s (min-max)",
                f"{per_core('after')} / {per_core('plain_decode')}",
                f"{h['after_vs_plain_decode']['median']} "
                f"({h['after_vs_plain_decode']['min']}-{h['after_vs_plain_decode']['max']})",
                "",
            ),
            (
                "host-to-device bytes per image: before / after item 6",
                f"{h['before']['host_to_device_bytes_per_image']} / {h['after']['host_to_device_bytes_per_image']}",
                h["bytes_before_vs_after"],
                "",
            ),
        ]
    if "training" in r:
        t = r["training"]
        rows += [
            (
                "student step rate: fed by pipeline / in memory",
                f"{t['student_step_ms_fed_by_pipeline']} / {t['student_step_ms_in_memory']} ms",
                t["pipeline_fed_vs_in_memory_step_rate"],
                ">= 0.90",
            ),
            (
                "distill step / (student step + teacher fwd+bwd)",
                f"{t['distill_step_ms']} / {t['student_step_ms_in_memory']} + {t['teacher_forward_backward_ms']} ms",
                t["distill_vs_sum_of_both_forward_backward"],
                "<= 1.10",
            ),
            (
                "QAT step / float student step",
                f"{t['qat_step_ms']} / {t['float_step_ms_beside_qat']} ms",
                t["qat_vs_float_student_step"],
                "<= 1.40",
            ),
        ]
    if "model" in r:
        m = r["model"]
        rows += [
            (
                "INT8 / float TFLite size (Lite1 @240)",
                f"{m['int8_bytes']} / {m['float_bytes']} B",
                m["size_int8_vs_float"],
                "<= 0.30",
            ),
            (
                "INT8 / float latency, 1 thread",
                f"{m['int8_ms_1_thread']} / {m['float_ms_1_thread']} ms",
                m["latency_int8_vs_float_1_thread"],
                "<= 0.55",
            ),
            (
                "INT8 / float latency, 2 threads",
                f"{m['int8_ms_2_thread']} / {m['float_ms_2_thread']} ms",
                m["latency_int8_vs_float_2_threads"],
                "<= 0.55",
            ),
        ]
    if "run" in r:
        run = r["run"]
        rows.append(("whole demo run (`mobiletag train`, kfp.local), s", f"{run['wall_seconds']}", "", "< 900"))
        for task, total in run["task_seconds"].items():
            share = run["overhead_share"].get(task)
            compute = run["stage_compute_seconds"].get(task)
            figures = f"{total} s, {compute} s in the stage" if compute is not None else f"{total} s"
            rows.append((f"stage {task}: overhead share", figures, "" if share is None else share, "<= 0.20"))
        start = r.get("process_start")
        if start:
            rows.append(
                (
                    "new process + imports (median of 3), s",
                    ", ".join(f"{k[:-2]} {v}" for k, v in start.items()),
                    "",
                    "",
                )
            )
    if "bench_seconds" in r:
        spent = r["bench_seconds"]
        rows.append(
            (
                "this benchmark, s",
                f"{round(sum(spent.values()), 1)} ({', '.join(f'{k} {v}' for k, v in spent.items())})",
                "",
                "< 600",
            )
        )
    machine_line = ", ".join(f"{k} {v}" for k, v in r["machine"].items())
    lines = [f"{machine_line}", "", "| measure | figures | ratio | goal |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

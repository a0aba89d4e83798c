"""Input sections: the training input pipeline against a one-thread JPEG decode and PIL on the
original files (``input``), and images per host core at production sizes, the augmentation in the
training step against the host-side augmentation baseline (``host_input``)."""

from __future__ import annotations

import csv
import operator
import time
from pathlib import Path

import numpy as np
import stats
import tensorflow as tf

from mobiletag.config import AugmentConfig, Config, load_config
from mobiletag.data.augment import TrainAugment
from mobiletag.data.dataset import index_dataset
from mobiletag.data.tf_input import _random_crop, list_shards, make_dataset
from mobiletag.data.tfrecords import build_tfrecords
from sections import BLOCKS, PAUSE, REPO, ROUNDS, Blocked, rate


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


# host input per core at production sizes

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


def _host_augment(jpeg: tf.Tensor, seed: tf.Tensor, sizes: list[int], aug: AugmentConfig) -> list[tf.Tensor]:
    """The host-side augmentation baseline: random resized crop, flip, one float32 view per size,
    colour jitter on every view (HSV saturation), all on the host."""
    seeds = tf.random.experimental.stateless_split(seed, num=6)
    image = _random_crop(jpeg, seeds[0], aug)  # the same crop as the pipeline's
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


def host_augment_dataset(tfrecords: Path, config: Config, sizes: list[int], batch: int) -> tf.data.Dataset:
    """The training input with the augmentation on the host: make_dataset's reads, shuffle, seeds
    and batching, with :func:`_host_augment` in the map instead of one uint8 crop and a seed."""
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
        views = _host_augment(ex["image/encoded"], random_pair, sizes, config.data.augment)
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
    """Input pipeline images/second per host core at production sizes, with the augmentation in the
    training step against the host-side augmentation baseline.

    Three pipelines, each confined to one tf.data thread, measured in turn (the order rotates
    every round, so a slow spell of the shared machine hits all three alike):
    ``augment_on_host`` (two float32 views, flip and colour jitter on the host),
    ``augment_in_step`` (make_dataset: one uint8 crop and a seed; the rest runs in the training
    step) and ``plain_decode`` of the stored JPEGs. The
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
        "augment_on_host": lambda: one_thread(host_augment_dataset(tfrecords, config, sizes, batch)),
        "augment_in_step": lambda: one_thread(
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
    (crops, seeds), _ = example["augment_in_step"]
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
    out["augment_in_step_vs_on_host"] = ratios("augment_in_step", "augment_on_host", "> 1")
    out["augment_in_step_vs_plain_decode"] = ratios("augment_in_step", "plain_decode")
    out["bytes_augment_on_host_vs_in_step"] = round(
        bytes_per_image["augment_on_host"] / bytes_per_image["augment_in_step"], 2
    )
    out["in_step_augment_cpu_ms_per_image"] = round(step_cpu_ms, 3)
    return out

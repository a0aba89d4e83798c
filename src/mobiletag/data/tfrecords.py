"""TFRecord building: the validated dataset as pre-resized JPEG shards, labels.txt, stats.json,
and the original files of the evaluation splits.

Images are decoded once, checked, downscaled so their longest side is a little above the
largest training resolution and re-encoded: the input pipeline then decodes small JPEGs
(7-8x cheaper than phone photos). The output is deterministic: the same dataset and config
give byte-identical shards.

The val and test source files are also copied byte for byte to
``originals/<split>/<record index, 6 digits><extension>`` with ``originals/<split>.json``
listing them in record order: threshold search and evaluation read those, through the app's
input path (:mod:`mobiletag.export.app_input`), not the shrunk re-encoded JPEGs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from mobiletag.config import Config
from mobiletag.data.dataset import DatasetIndex, Problems, Row, map_images
from mobiletag.data.images import ImageInfo, inspect_image
from mobiletag.errors import DataError

log = logging.getLogger(__name__)

LABELS_FILE = "labels.txt"
STATS_FILE = "stats.json"
ORIGINALS_DIR = "originals"
ORIGINAL_SPLITS = ("val", "test")  # the splits measured through the app's input path
FORMAT_VERSION = 2  # 2: originals/ added


def original_name(index: int, filepath: str) -> str:
    """File name of a split's ``index``-th original: the record index and the source's extension."""
    return f"{index:06d}{PurePosixPath(filepath).suffix.lower()}"


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}.tfrecord"


def _example(jpeg: bytes, info: ImageInfo, stored: tuple[int, int], labels: np.ndarray, path: str) -> bytes:
    import tensorflow as tf

    feature = {
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        "image/width": tf.train.Feature(int64_list=tf.train.Int64List(value=[stored[0]])),
        "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[stored[1]])),
        "image/source_width": tf.train.Feature(int64_list=tf.train.Int64List(value=[info.width])),
        "image/source_height": tf.train.Feature(int64_list=tf.train.Int64List(value=[info.height])),
        "image/labels": tf.train.Feature(float_list=tf.train.FloatList(value=labels.tolist())),
        "image/filepath": tf.train.Feature(bytes_list=tf.train.BytesList(value=[path.encode("utf-8")])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _ordered_rows(split: str, rows: tuple[Row, ...], seed: int) -> list[Row]:
    """Train rows in a seeded random order (CSVs are often sorted by class); others as listed."""
    if split != "train":
        return list(rows)
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order]


def build_tfrecords(index: DatasetIndex, config: Config, out_dir: str | Path) -> dict[str, Any]:
    """Write shards for every split, labels.txt and stats.json into out_dir.

    Every image is checked while it is encoded; if any is unusable a DataError lists them
    all and out_dir is left as it was (the shards are written to a temporary sibling first).
    """
    import tensorflow as tf

    out = Path(out_dir)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    side = config.stored_image_side
    quality = config.data.jpeg_quality
    problems = Problems(config.data.max_errors)
    started = time.perf_counter()
    shards: dict[str, list[str]] = {}
    stored_bytes: dict[str, int] = {}
    split_labels: dict[str, np.ndarray] = {}  # built once per split: for the records and for stats.json
    try:
        for split, split_rows in index.splits.items():
            rows = _ordered_rows(split, split_rows, config.seed)
            num_shards = max(1, math.ceil(len(rows) / config.data.images_per_shard))
            labels = split_labels[split] = index.multi_hot(rows)
            position = {row.filepath: i for i, row in enumerate(rows)}
            names = [shard_name(split, s, num_shards) for s in range(num_shards)]
            shards[split] = names
            keep = None
            if split in ORIGINAL_SPLITS:
                originals_dir = tmp / ORIGINALS_DIR / split
                originals_dir.mkdir(parents=True)
                listing = [
                    {"file": original_name(i, row.filepath), "filepath": row.filepath} for i, row in enumerate(rows)
                ]
                (tmp / ORIGINALS_DIR / f"{split}.json").write_text(
                    json.dumps(listing, indent=0, ensure_ascii=False) + "\n", encoding="utf-8"
                )

                def keep(row: Row, data: bytes, folder: Path = originals_dir, at: dict[str, int] = position) -> None:
                    (folder / original_name(at[row.filepath], row.filepath)).write_bytes(data)

            writers = [tf.io.TFRecordWriter(str(tmp / n)) for n in names]
            total = 0
            try:
                done = 0
                for row, info in map_images(
                    index,
                    split,
                    rows,
                    config,
                    problems,
                    lambda data: inspect_image(data, max_side=side, jpeg_quality=quality),
                    keep,
                ):
                    assert info.jpeg is not None and info.stored_size is not None
                    i = position[row.filepath]
                    shard = i * num_shards // len(rows)
                    writers[shard].write(_example(info.jpeg, info, info.stored_size, labels[i], row.filepath))
                    total += len(info.jpeg)
                    done += 1
                    if done % 1000 == 0:
                        log.info("%s: %d/%d images written", split, done, len(rows))
            finally:
                for w in writers:
                    w.close()
            stored_bytes[split] = total
        problems.raise_if_any(f"dataset {index.root} has unusable images")

        (tmp / LABELS_FILE).write_text("".join(f"{c}\n" for c in index.classes), encoding="utf-8")
        stats = index.summary(split_labels)
        stats.update(
            format_version=FORMAT_VERSION,
            num_classes=len(index.classes),
            stored_image_side=side,
            jpeg_quality=quality,
            shards=shards,
            stored_bytes=stored_bytes,
            originals={
                split: _folder_bytes(tmp / ORIGINALS_DIR / split) for split in shards if split in ORIGINAL_SPLITS
            },
            warnings=list(index.warnings),
        )
        (tmp / STATS_FILE).write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "wrote %s: %s in %.1f s",
        out,
        ", ".join(f"{s} {len(r)} images / {len(shards[s])} shard(s)" for s, r in index.splits.items()),
        time.perf_counter() - started,
    )
    return stats


def _folder_bytes(folder: Path) -> dict[str, int]:
    files = [p for p in folder.iterdir() if p.is_file()]
    return {"files": len(files), "bytes": sum(p.stat().st_size for p in files)}


def originals_of(dataset_dir: str | Path, split: str) -> list[Path]:
    """The split's original image files in record order (the copies prepare_dataset made).

    Raises DataError when the dataset has none for the split: it was built before originals
    were kept (format 1), or the split is not one of ORIGINAL_SPLITS.
    """
    listing_file = Path(dataset_dir, ORIGINALS_DIR, f"{split}.json")
    if not listing_file.is_file():
        if split not in ORIGINAL_SPLITS:
            raise DataError(
                f"{dataset_dir}: prepare_dataset keeps the original images of the {' and '.join(ORIGINAL_SPLITS)} "
                f"splits only, not of {split!r}; read its TFRecords instead (source='records')"
            )
        raise DataError(
            f"{dataset_dir}: the dataset has no original images for the {split} split ({listing_file} is missing): "
            "it was built by an older prepare_dataset, and evaluation and threshold search now measure the "
            "original files. Re-run prepare_dataset (in a pipeline, with caching disabled for it, or with "
            "`mobiletag train`), then the stages after it"
        )
    return [file for _, file in originals_listing(dataset_dir, split)]


def originals_listing(dataset_dir: str | Path, split: str) -> list[tuple[str, Path]]:
    """(path in the dataset's CSV, the copy's file) of the split's originals, in record order."""
    listing_file = Path(dataset_dir, ORIGINALS_DIR, f"{split}.json")
    if not listing_file.is_file():
        originals_of(dataset_dir, split)  # raises the DataError that says what to do
    folder = listing_file.parent / split
    entries = json.loads(listing_file.read_text(encoding="utf-8"))
    return [(entry["filepath"], folder / entry["file"]) for entry in entries]


def read_labels(dataset_dir: str | Path) -> list[str]:
    return Path(dataset_dir, LABELS_FILE).read_text(encoding="utf-8").splitlines()


def read_stats(dataset_dir: str | Path) -> dict[str, Any]:
    return json.loads(Path(dataset_dir, STATS_FILE).read_text(encoding="utf-8"))

"""TFRecord building: the validated dataset as pre-resized JPEG shards, labels.txt, stats.json,
and the manifest of the evaluation splits' originals.

Images are decoded once, checked, downscaled so their longest side is a little above the
largest training resolution and re-encoded: the input pipeline then decodes small JPEGs
(7-8x cheaper than phone photos). The output is deterministic: the same dataset and config
give byte-identical shards.

The val and test source files stay where they are: ``originals.json``
(:mod:`mobiletag.data.originals`) records, in record order, where each one lives with its size,
CRC32C and version; threshold search and evaluation read them from there, through the app's input
path (:mod:`mobiletag.export.app_input`), not the shrunk re-encoded JPEGs.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from mobiletag.artifacts import Dataset, atomic_dir, read_json, write_json
from mobiletag.config import Config
from mobiletag.data.dataset import DatasetIndex, Problems, Row, SourceVersion, map_images
from mobiletag.data.images import ImageInfo, inspect_image
from mobiletag.data.originals import ORIGINAL_SPLITS, Original, read_manifest, write_manifest
from mobiletag.errors import DataError
from mobiletag.progress import report_result
from mobiletag.storage import is_gcs

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # of the dataset artifact; read_stats refuses any other


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
    side = config.stored_image_side
    quality = config.data.jpeg_quality
    problems = Problems(config.data.max_errors)
    started = time.perf_counter()
    shards: dict[str, list[str]] = {}
    stored_bytes: dict[str, int] = {}
    split_labels: dict[str, np.ndarray] = {}  # built once per split: for the records and for stats.json
    originals: dict[str, list[Original | None]] = {}
    with atomic_dir(out) as tmp:
        for split, split_rows in index.splits.items():
            rows = _ordered_rows(split, split_rows, config.seed)
            num_shards = max(1, math.ceil(len(rows) / config.data.images_per_shard))
            labels = split_labels[split] = index.multi_hot(rows)
            position = {row.filepath: i for i, row in enumerate(rows)}
            names = [Dataset.shard(split, s, num_shards) for s in range(num_shards)]
            shards[split] = names
            keep = None
            if split in ORIGINAL_SPLITS:
                found = originals[split] = [None] * len(rows)

                def keep(
                    row: Row,
                    data: bytes,
                    version: SourceVersion,
                    name: str = split,
                    into: list[Original | None] = found,
                    at: dict[str, int] = position,
                ) -> None:
                    into[at[row.filepath]] = Original.of(name, row.filepath, data, version)

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

        (tmp / Dataset.LABELS).write_text("".join(f"{c}\n" for c in index.classes), encoding="utf-8")
        stats = index.summary(split_labels)
        stats.update(
            format_version=FORMAT_VERSION,
            num_classes=len(index.classes),
            stored_image_side=side,
            jpeg_quality=quality,
            shards=shards,
            stored_bytes=stored_bytes,
            originals={
                split: {"files": len(found), "bytes": sum(o.size for o in found if o is not None)}
                for split, found in originals.items()
            },
        )
        for warning in stats["warnings"][len(index.warnings) :]:  # the index's own were logged when found
            log.warning("%s", warning)
        root = index.root if is_gcs(index.root) else str(Path(index.root).resolve())
        write_manifest(tmp, root, {split: [o for o in found if o is not None] for split, found in originals.items()})
        write_json(tmp / Dataset.STATS, stats)
    report_result(
        log,
        "wrote %s: %s in %.1f s",
        out,
        ", ".join(f"{s} {len(r)} images / {len(shards[s])} shard(s)" for s, r in index.splits.items()),
        time.perf_counter() - started,
    )
    return stats


def originals_of(dataset_dir: str | Path, split: str) -> list[Original]:
    """Where the split's original image files live (with their size, CRC32C, version), in record order.

    Read them with :func:`mobiletag.data.originals.read_original` (checked against this) or
    ``iter_originals``. Raises DataError when the dataset has none for the split: it was built
    by an older prepare_dataset, or the split is not one of ORIGINAL_SPLITS.
    """
    read_stats(dataset_dir)  # an older format says to re-run prepare_dataset
    return read_manifest(dataset_dir, split)


def read_labels(dataset_dir: str | Path) -> list[str]:
    return Path(dataset_dir, Dataset.LABELS).read_text(encoding="utf-8").splitlines()


def read_stats(dataset_dir: str | Path) -> dict[str, Any]:
    """stats.json; DataError when the dataset was written in another format than this code reads."""
    stats: dict[str, Any] = read_json(Path(dataset_dir, Dataset.STATS))
    found = stats.get("format_version", 1)
    if found != FORMAT_VERSION:
        raise DataError(
            f"{dataset_dir}: the dataset is in format {found}, this mobiletag reads format {FORMAT_VERSION} "
            "(format 3: the val and test originals are read where they live, through originals.json, not copied "
            "into the dataset). Re-run prepare_dataset (in a pipeline, with caching disabled for it, or with "
            "`mobiletag prepare` / `mobiletag train`), then the stages after it"
        )
    return stats

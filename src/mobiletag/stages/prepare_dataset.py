"""Stage: validate the dataset and write TFRecord shards, labels.txt, stats.json and originals.json
(where the val and test originals live, with their sizes and checksums: they are not copied)."""

from __future__ import annotations

import time
from pathlib import Path

from mobiletag.config import Config
from mobiletag.data.dataset import index_dataset
from mobiletag.data.tfrecords import build_tfrecords
from mobiletag.stages.common import StageResult


def run(config: Config, data_uri: str, out_dir: str | Path, data_fingerprint: str = "") -> StageResult:
    """Build the TFRecords of ``data_uri``.

    ``data_fingerprint`` (from resolve_config) is not read: it is an input so that KFP's cache
    key changes when the data do; it is kept in the dataset's metadata for the record.
    """
    started = time.perf_counter()
    stats = build_tfrecords(index_dataset(data_uri, config), config, out_dir)
    splits = stats["splits"]
    metrics = {f"{split}_images": float(v["num_images"]) for split, v in splits.items()}
    metrics["num_classes"] = float(stats["num_classes"])
    details = {
        "classes": stats["classes"],
        "stored_image_side": stats["stored_image_side"],
        "num_images": {split: v["num_images"] for split, v in splits.items()},
        "data_fingerprint": data_fingerprint,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return StageResult(metrics=metrics, details=details)

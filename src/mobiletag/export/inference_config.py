"""inference_config.json: everything an app needs to run the model, and the preprocessing
that evaluation and ``mobiletag predict`` share with an app."""

from __future__ import annotations

import io
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mobiletag.errors import DataError
from mobiletag.export.litert import MODEL_FILE, TFLiteModel

Scorer = Callable[[np.ndarray], np.ndarray]  # uint8 pixels [B, size, size, 3] -> probabilities [B, C]
# Images per batch when a split streams through the models (scores are kept, pixels are not).
EVAL_BATCH = 64


def build_inference_config(
    model: TFLiteModel, labels: list[str], thresholds: dict[str, float] | None = None
) -> dict[str, Any]:
    size = model.image_size
    inp, out = model.input, model.output
    return {
        "model_file": MODEL_FILE,
        "input": {
            "shape": inp.shape,
            "dtype": inp.dtype,
            "color_order": "RGB",
            "layout": "NHWC",
            "resize": "bilinear",
            "crop": "none: the whole image is resized to the input size (aspect ratio not kept)",
            "value_range": [0, 255],
            "normalization": "none: feed pixel values; the model normalises (x - 127) / 128 inside",
            "quantization": {"scale": inp.scale, "zero_point": inp.zero_point},
            "how_to": (
                f"decode to RGB, apply EXIF orientation, resize to {size}x{size} (bilinear), then "
                + (
                    "feed the pixels as they are"
                    if inp.dtype == "uint8" and inp.scale == 1.0 and inp.zero_point == 0
                    else "quantize: q = round(pixel / scale + zero_point)"
                )
            ),
        },
        "output": {
            "shape": out.shape,
            "dtype": out.dtype,
            "activation": "sigmoid (already applied: the output is a probability per class)",
            "quantization": {"scale": out.scale, "zero_point": out.zero_point},
            "dequantize": "probability = scale * (q - zero_point)",
        },
        "labels": list(labels),
        "thresholds": dict(thresholds or {}),
        "decision": "a label applies when its probability >= its threshold",
    }


def app_pixels(image: Image.Image, config: dict[str, Any]) -> np.ndarray:
    """An RGB PIL image -> the uint8 pixel array an app feeds, per inference_config.json."""
    _, height, width, _ = config["input"]["shape"]
    if image.mode != "RGB":
        image = image.convert("RGB")
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


@dataclass(frozen=True)
class EvalBatch:
    """A batch of a split as an app sees it: uint8 pixels [B, size, size, 3] per requested
    size, the labels [B, C] (float32, 0/1) and the original file paths."""

    pixels: list[np.ndarray]
    labels: np.ndarray
    paths: list[str]


def _decode_record(raw: bytes, configs: list[dict[str, Any]]) -> tuple[list[np.ndarray], list[float], str]:
    """One serialized tf.train.Example -> app pixels at every size (decoded once), labels, path."""
    from tensorflow.core.example.example_pb2 import Example

    feature = Example.FromString(raw).features.feature
    with Image.open(io.BytesIO(feature["image/encoded"].bytes_list.value[0])) as image:
        pixels = [app_pixels(image, config) for config in configs]
    labels = list(feature["image/labels"].float_list.value)
    return pixels, labels, feature["image/filepath"].bytes_list.value[0].decode("utf-8")


def iter_eval_batches(
    dataset_dir: str | Path,
    split: str,
    sizes: Sequence[int],
    *,
    batch_size: int = EVAL_BATCH,
    limit: int | None = None,
    workers: int | None = None,
) -> Iterator[EvalBatch]:
    """Stream a split's images preprocessed exactly as inference_config.json tells an app (PIL
    decode, whole image, bilinear resize), in record order, ``batch_size`` at a time.

    Each image is decoded once for all ``sizes``; decoding runs on ``workers`` threads (PIL
    releases the GIL) with a bounded window of records in flight, so memory is O(batch), not
    O(split): the caller keeps only what it computes from each batch (scores).
    """
    import tensorflow as tf

    from mobiletag.data.pipeline import list_shards

    configs = [{"input": {"shape": [1, size, size, 3]}} for size in sizes]
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    window = max(batch_size, workers * 4)
    records: Iterator[bytes] = (raw.numpy() for raw in tf.data.TFRecordDataset(list_shards(dataset_dir, split)))
    if limit is not None:
        records = itertools.islice(records, limit)

    def emit(done: list[tuple[list[np.ndarray], list[float], str]]) -> EvalBatch:
        return EvalBatch(
            pixels=[np.stack([d[0][k] for d in done]) for k in range(len(sizes))],
            labels=np.asarray([d[1] for d in done], dtype=np.float32),
            paths=[d[2] for d in done],
        )

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval-decode") as pool:
        pending: deque[Future[tuple[list[np.ndarray], list[float], str]]] = deque(
            pool.submit(_decode_record, raw, configs) for raw in itertools.islice(records, window)
        )
        done: list[tuple[list[np.ndarray], list[float], str]] = []
        try:
            while pending:
                done.append(pending.popleft().result())
                for raw in itertools.islice(records, 1):
                    pending.append(pool.submit(_decode_record, raw, configs))
                if len(done) == batch_size:
                    yield emit(done)
                    done = []
            if done:
                yield emit(done)
        finally:
            for future in pending:
                future.cancel()


def stream_scores(
    dataset_dir: str | Path, split: str, scorers: dict[str, tuple[int, Scorer]]
) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """Stream a split once through every model: ``scorers`` maps a name to (input size, scorer).

    Each image is decoded once (at every size the models need) and its pixels are dropped
    after its batch: memory holds the scores [N, C] per model, the labels and the paths.
    """
    sizes = sorted({size for size, _ in scorers.values()})
    scores: dict[str, list[np.ndarray]] = {name: [] for name in scorers}
    labels: list[np.ndarray] = []
    paths: list[str] = []
    for batch in iter_eval_batches(dataset_dir, split, sizes, batch_size=EVAL_BATCH):
        for name, (size, scorer) in scorers.items():
            scores[name].append(scorer(batch.pixels[sizes.index(size)]))
        labels.append(batch.labels)
        paths.extend(batch.paths)
    if not labels:
        raise DataError(f"{dataset_dir}: the {split} split has no images; scoring it needs at least one")
    return {name: np.concatenate(v) for name, v in scores.items()}, np.concatenate(labels), paths


def eval_pixels(
    dataset_dir: str | Path, split: str, sizes: Sequence[int], limit: int | None = None
) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """The first ``limit`` images of a split as float pixel arrays 0..255 (one per size), with
    labels and paths: for small samples only (export's representative and parity images).
    A whole split goes through ``iter_eval_batches`` instead."""
    batches = list(iter_eval_batches(dataset_dir, split, sizes, limit=limit))
    if not batches:
        return [np.zeros((0, s, s, 3), np.float32) for s in sizes], np.zeros((0, 0), np.float32), []
    pixels = [np.concatenate([b.pixels[k] for b in batches]).astype(np.float32) for k in range(len(sizes))]
    return pixels, np.concatenate([b.labels for b in batches]), [p for b in batches for p in b.paths]

"""inference_config.json: everything an app needs to run the model, and the streaming of a
split through the app's input path (:mod:`mobiletag.export.app_input`) that threshold search
and evaluation share with ``mobiletag predict``."""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from mobiletag.artifacts import Dataset, OutputFolder
from mobiletag.data.originals import Original, read_original
from mobiletag.errors import DataError
from mobiletag.export.app_input import antialiased_resize, app_image, app_resize
from mobiletag.export.litert import TFLiteModel

Scorer = Callable[[np.ndarray], np.ndarray]  # uint8 pixels [B, size, size, 3] -> probabilities [B, C]
# Images per batch when a split streams through the models (scores are kept, pixels are not).
EVAL_BATCH = 64
Source = Literal["originals", "records"]
SOURCES: tuple[str, ...] = ("originals", "records")
RESIZE = "bilinear as MediaPipe Tasks (OpenCV warpPerspective, no antialiasing, no crop or padding)"
PRESCALE = (
    "before MediaPipe, average blocks of kx x ky pixels of the upright image, kx = W // width, ky = H // height "
    "(at least 1; an image less than twice the input size on an axis keeps that axis), each channel rounded half "
    "up: (sum + n // 2) // n over the n pixels of the block; the last column and row of blocks average the pixels "
    "left over. The result is ceil(W / kx) x ceil(H / ky) pixels, which MediaPipe resizes to the input size"
)
# How a split's images become pixels: the documented app path (app_resize), or the reference
# antialiased resize straight to the input size (antialiased_resize) that evaluate compares it with.
APP, ANTIALIASED = "app", "antialiased"
RESIZES: tuple[str, ...] = (APP, ANTIALIASED)
View = tuple[int, str]  # (input size, one of RESIZES)


def build_inference_config(
    model: TFLiteModel, labels: list[str], thresholds: dict[str, float] | None = None
) -> dict[str, Any]:
    inp, out = model.input, model.output
    _, height, width, _ = inp.shape
    return {
        "model_file": OutputFolder.MODEL,
        "input": {
            "shape": inp.shape,
            "dtype": inp.dtype,
            "color_order": "RGB",
            "layout": "NHWC",
            "decode": (
                "decode the file at full resolution, apply its EXIF orientation, convert to RGB "
                "(grey replicated, palette expanded, alpha dropped)"
            ),
            "exif_orientation": "applied (the image is turned upright before resizing)",
            "prescale": PRESCALE,
            "resize": RESIZE,
            "resize_sampling": (
                "output pixel (x, y) samples the input at (x * W / width, y * H / height), top-left aligned; "
                "OpenCV fixed point (1/32 px coordinates, 5-bit bilinear weights), edge pixels replicated"
            ),
            "crop": "none: the whole image is resized to the input size (aspect ratio not kept)",
            "value_range": [0, 255],
            "normalization": "none: feed pixel values; the model normalises (x - 127) / 128 inside",
            "quantization": {"scale": inp.scale, "zero_point": inp.zero_point},
            "how_to": (
                "decode to RGB, apply EXIF orientation, pre-scale (prescale: the mean of kx x ky blocks, "
                f"kx = W // {width}, ky = H // {height}), resize the whole image to "
                f"{width}x{height} with MediaPipe Tasks' bilinear (no antialiasing), then "
                + (
                    "feed the pixels as they are"
                    if inp.dtype == "uint8" and inp.scale == 1.0 and inp.zero_point == 0
                    else "quantize: q = round(pixel / scale + zero_point)"
                )
                + "; the app pre-scales and hands the result to MediaPipe Tasks' ImageClassifier, which does the rest"
            ),
            "reference": (
                "mobiletag.export.app_input.app_pixels (the pre-scale and a numpy port of MediaPipe's CPU "
                "preprocessing); docs/app.md has the pre-scale in Kotlin and Python"
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


def _view_pixels(rgb: np.ndarray, view: View) -> np.ndarray:
    """The upright RGB image as one view's pixels [size, size, 3]."""
    size, resize = view
    if resize == APP:
        return app_resize(rgb, size, size)
    if resize == ANTIALIASED:
        return antialiased_resize(rgb, size, size)
    raise ValueError(f"_view_pixels: resize {resize!r} is not one of {', '.join(RESIZES)}")


@dataclass(frozen=True)
class EvalBatch:
    """A batch of a split as an app sees it: uint8 pixels [B, size, size, 3] per requested
    size, the labels [B, C] (float32, 0/1) and the original file paths."""

    pixels: list[np.ndarray]
    labels: np.ndarray
    paths: list[str]


Decoded = tuple[dict[View, np.ndarray], list[float], str]  # pixels by view, labels, path


def _decode_record(raw: bytes, views: Sequence[View], original: Original | None) -> Decoded:
    """One serialized tf.train.Example -> pixels of every view (decoded once), labels, path.

    The pixels come from ``original`` (the source file, read where it lives and checked against
    the dataset's manifest) when given, else from the record's stored JPEG. With no ``views``
    the image is neither read nor decoded (labels and path only).
    """
    from tensorflow.core.example.example_pb2 import Example

    feature = Example.FromString(raw).features.feature
    path = feature["image/filepath"].bytes_list.value[0].decode("utf-8")
    if original is not None and original.filepath != path:
        raise DataError(
            f"the {original.split} records and the dataset's {Dataset.ORIGINALS} disagree ({path} in the records, "
            f"{original.filepath} in the manifest): the dataset is inconsistent; re-run prepare_dataset"
        )
    labels = list(feature["image/labels"].float_list.value)
    if not views:
        return {}, labels, path
    data = read_original(original) if original is not None else feature["image/encoded"].bytes_list.value[0]
    try:
        rgb = app_image(data)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        where = original.describe() if original is not None else f"the stored image of {path}"
        raise DataError(f"{where} cannot be decoded: {exc}; re-run prepare_dataset") from exc
    return {view: _view_pixels(rgb, view) for view in views}, labels, path


def _decoded_records(
    dataset_dir: str | Path,
    split: str,
    views_of: Callable[[int], Sequence[View]],
    *,
    window: int,
    limit: int | None = None,
    workers: int | None = None,
    source: Source = "originals",
) -> Iterator[tuple[int, Decoded]]:
    """(record index, decoded record) of a split in record order; record ``i`` decoded into the
    views ``views_of(i)`` (none: not read). Decoding runs on ``workers`` threads with at most
    ``window`` records in flight."""
    import tensorflow as tf

    from mobiletag.data.tf_input import list_shards
    from mobiletag.data.tfrecords import originals_of

    if source not in SOURCES:
        raise ValueError(f"iter_eval_batches: source {source!r} is not one of {', '.join(SOURCES)}")
    files: list[Original] | None = None
    if source == "originals":
        files = list(originals_of(dataset_dir, split))
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    window = max(window, workers * 4)
    records: Iterator[tuple[int, bytes]] = enumerate(
        raw.numpy() for raw in tf.data.TFRecordDataset(list_shards(dataset_dir, split))
    )
    if limit is not None:
        records = itertools.islice(records, limit)

    def submit(pool: ThreadPoolExecutor, i: int, raw: bytes) -> tuple[int, Future[Decoded]]:
        if files is not None and i >= len(files):
            raise DataError(
                f"{dataset_dir}: the {split} split has more records than original images "
                f"({len(files)}); the dataset is inconsistent: re-run prepare_dataset"
            )
        return i, pool.submit(_decode_record, raw, views_of(i), None if files is None else files[i])

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval-decode") as pool:
        pending = deque(submit(pool, i, raw) for i, raw in itertools.islice(records, window))
        try:
            while pending:
                i, future = pending.popleft()
                decoded = future.result()
                for j, raw in itertools.islice(records, 1):
                    pending.append(submit(pool, j, raw))
                yield i, decoded
        finally:
            for _, future in pending:
                future.cancel()


def iter_eval_batches(
    dataset_dir: str | Path,
    split: str,
    sizes: Sequence[int],
    *,
    batch_size: int = EVAL_BATCH,
    limit: int | None = None,
    workers: int | None = None,
    source: Source = "originals",
) -> Iterator[EvalBatch]:
    """Stream a split's images through the app input path, in record order, ``batch_size`` at a time.

    Every image goes through :func:`mobiletag.export.app_input.app_image` (PIL decode at full
    resolution, EXIF orientation, RGB) and :func:`~mobiletag.export.app_input.app_resize` (the
    app's pre-scale, then MediaPipe Tasks' whole-image bilinear): the pixels an app feeds the model.
    ``source="originals"`` (the default; evaluation, threshold search) reads the source files
    where they live (val and test splits; the dataset's ``originals.json`` says where), each
    checked against the size and CRC32C prepare_dataset recorded;
    ``source="records"`` reads the TFRecords' downscaled JPEGs (any split; e.g. calibration
    images for export).

    Each image is decoded once for all ``sizes``; decoding runs on ``workers`` threads (PIL
    releases the GIL) with a bounded window of records in flight, so memory is O(batch), not
    O(split): the caller keeps only what it computes from each batch (scores).
    """
    views = [(int(s), APP) for s in sizes]

    def emit(done: list[Decoded]) -> EvalBatch:
        return EvalBatch(
            pixels=[np.stack([d[0][view] for d in done]) for view in views],
            labels=np.asarray([d[1] for d in done], dtype=np.float32),
            paths=[d[2] for d in done],
        )

    done: list[Decoded] = []
    records = _decoded_records(
        dataset_dir, split, lambda _: views, window=batch_size, limit=limit, workers=workers, source=source
    )
    for _, decoded in records:
        done.append(decoded)
        if len(done) == batch_size:
            yield emit(done)
            done = []
    if done:
        yield emit(done)


def stream_scores(
    dataset_dir: str | Path,
    split: str,
    scorers: dict[str, tuple[int, Scorer]],
    rows: dict[str, np.ndarray] | None = None,
    resizes: dict[str, str] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """Stream a split once through every model: ``scorers`` maps a name to (input size, scorer).

    ``rows`` maps a scorer's name to the record indices it scores (ascending); a scorer not named
    there scores every image. ``resizes`` maps a scorer's name to how its pixels are made (one of
    ``RESIZES``); a scorer not named there gets the app's path (``APP``). Each image is decoded
    once, into the views (size, resize) of the scorers that score it (an image none scores is not
    read), and its pixels are dropped once those scorers have seen them: memory holds the scores
    per model ([len(rows[name]) or N, C], in record order), the labels [N, C] and the N paths of
    every record.
    """
    rows, resizes = rows or {}, resizes or {}
    unknown = sorted((set(rows) | set(resizes)) - set(scorers))
    if unknown:
        raise ValueError(f"stream_scores: rows or resizes name no scorer: {', '.join(unknown)}")
    wrong = sorted(f"{name}: {r!r}" for name, r in resizes.items() if r not in RESIZES)
    if wrong:
        raise ValueError(f"stream_scores: resizes must be one of {', '.join(RESIZES)}; got {', '.join(wrong)}")
    chosen = {name: frozenset(int(i) for i in rows[name]) for name in rows}
    view = {name: (size, resizes.get(name, APP)) for name, (size, _) in scorers.items()}

    def scores_row(name: str, i: int) -> bool:
        return name not in chosen or i in chosen[name]

    def views_of(i: int) -> list[View]:
        return sorted({view[name] for name in scorers if scores_row(name, i)})

    scores: dict[str, list[np.ndarray]] = {name: [] for name in scorers}
    waiting: dict[str, list[np.ndarray]] = {name: [] for name in scorers}
    labels: list[list[float]] = []
    paths: list[str] = []

    def flush(name: str) -> None:
        if waiting[name]:
            scores[name].append(scorers[name][1](np.stack(waiting[name])))
            waiting[name] = []

    for i, (pixels, row_labels, path) in _decoded_records(dataset_dir, split, views_of, window=EVAL_BATCH):
        for name in scorers:
            if scores_row(name, i):
                waiting[name].append(pixels[view[name]])
                if len(waiting[name]) == EVAL_BATCH:
                    flush(name)
        labels.append(row_labels)
        paths.append(path)
    if not labels:
        raise DataError(f"{dataset_dir}: the {split} split has no images; scoring it needs at least one")
    beyond = {name: max(chosen[name]) for name in chosen if chosen[name] and max(chosen[name]) >= len(labels)}
    if beyond:
        raise ValueError(f"stream_scores: rows beyond the {split} split's {len(labels)} images: {beyond}")
    num_classes = len(labels[0])
    for name in scorers:
        flush(name)
    out = {name: np.concatenate(v) if v else np.zeros((0, num_classes), np.float32) for name, v in scores.items()}
    return out, np.asarray(labels, dtype=np.float32), paths


def eval_pixels(
    dataset_dir: str | Path, split: str, sizes: Sequence[int], limit: int | None = None, source: Source = "originals"
) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """The first ``limit`` images of a split as float pixel arrays 0..255 (one per size), with
    labels and paths: for small samples only (export's representative and parity images).
    A whole split goes through ``iter_eval_batches`` instead (``source`` as there)."""
    batches = list(iter_eval_batches(dataset_dir, split, sizes, limit=limit, source=source))
    if not batches:
        return [np.zeros((0, s, s, 3), np.float32) for s in sizes], np.zeros((0, 0), np.float32), []
    pixels = [np.concatenate([b.pixels[k] for b in batches]).astype(np.float32) for k in range(len(sizes))]
    return pixels, np.concatenate([b.labels for b in batches]), [p for b in batches for p in b.paths]

"""Stage: the shipped model with TFLite metadata for MediaPipe Tasks, and MediaPipe's ImageClassifier
over the test images (what an app that uses MediaPipe gets).

Runs after optimize-thresholds (the calibration needs the thresholds) and before evaluate, which
evaluates this stage's model and adds MediaPipe's figures to metrics.json. No TensorFlow here:
the stage runs in images/mediapipe.Dockerfile (and in the TensorFlow environment locally); the
MediaPipe side runs in its own interpreter (``mobiletag.export.mediapipe``).

Output folder: ``model_qat_int8.tflite`` (with metadata; its tensors and outputs are the exported
model's, bit for bit), ``labels.txt``, ``mediapipe.json`` (metadata, calibration thresholds,
checks, timings), ``mediapipe_test_scores.npy`` (calibrated scores [N, C]),
``mediapipe_test_label_sets.json`` (label indices per image, default options) and
``mediapipe_test_paths.json`` (the N test paths, as evaluate names them).
"""

from __future__ import annotations

import logging
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mobiletag import __version__
from mobiletag.errors import DataError, ExportError
from mobiletag.export.litert import MODEL_FILE, TFLiteModel
from mobiletag.export.mediapipe import classify, metadata_description, write_metadata
from mobiletag.stages.common import THRESHOLDS_FILE, StageResult, dataset_facts, read_json, write_json

log = logging.getLogger(__name__)

LABELS_FILE = "labels.txt"
SUMMARY_FILE = "mediapipe.json"
SCORES_FILE = "mediapipe_test_scores.npy"
LABEL_SETS_FILE = "mediapipe_test_label_sets.json"
PATHS_FILE = "mediapipe_test_paths.json"
# where prepare-dataset keeps lossless copies of the original test images, when it does
ORIGINALS_DIR = "originals"
PARITY_INPUTS = 16  # random inputs on which the model with metadata must give the exported model's raw outputs


# === The test images ===


def _read_tfrecords(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord file (length, CRC, data, CRC; the CRCs are not checked)."""
    with path.open("rb") as fh:
        while header := fh.read(12):
            if len(header) < 12:
                raise DataError(f"{path}: truncated TFRecord header; rebuild the dataset (prepare-dataset)")
            (length,) = struct.unpack("<Q", header[:8])
            data = fh.read(length)
            if len(data) < length or len(fh.read(4)) < 4:
                raise DataError(f"{path}: truncated TFRecord; rebuild the dataset (prepare-dataset)")
            yield data


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, bytes | int]]:
    """(field number, value) of a protobuf message: bytes for length-delimited fields."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield key >> 3, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            yield key >> 3, buf[pos : pos + length]
            pos += length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            yield key >> 3, buf[pos : pos + size]
            pos += size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _example_bytes(record: bytes, names: tuple[str, ...]) -> dict[str, bytes]:
    """The first bytes value of the named features of a serialized tf.train.Example (no TensorFlow:
    Example{1: Features{1: map<string, Feature{1: BytesList{1: bytes}}>}})."""
    found: dict[str, bytes] = {}
    for number, features in _fields(record):
        if number != 1 or not isinstance(features, bytes):
            continue
        for entry_number, entry in _fields(features):
            if entry_number != 1 or not isinstance(entry, bytes):
                continue
            parts = dict(_fields(entry))
            key = parts.get(1)
            if not isinstance(key, bytes) or key.decode("utf-8") not in names:
                continue
            for kind, values in _fields(parts.get(2, b"")):  # type: ignore[arg-type]
                if kind == 1 and isinstance(values, bytes):
                    for value_number, value in _fields(values):
                        if value_number == 1 and isinstance(value, bytes):
                            found.setdefault(key.decode("utf-8"), value)
    return found


def images_to_classify(dataset_dir: str | Path, work_dir: str | Path) -> tuple[list[str], list[Path]]:
    """The test images MediaPipe classifies: their paths as evaluate names them and local files.

    The lossless originals under ``<dataset>/originals/test/`` when prepare-dataset copied them
    (the path is the file's path below that folder); else the images stored in the test
    TFRecords (``image/encoded``, the path from ``image/filepath``), written to ``work_dir``,
    in record order: the images evaluate scores.
    """
    originals = Path(dataset_dir) / ORIGINALS_DIR / "test"
    if originals.is_dir():
        copies = sorted(p for p in originals.rglob("*") if p.is_file())
        return [p.relative_to(originals).as_posix() for p in copies], copies
    stats = read_json(Path(dataset_dir) / "stats.json")
    shards = stats.get("shards", {}).get("test", [])
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    files: list[Path] = []
    for shard in shards:
        for record in _read_tfrecords(Path(dataset_dir) / shard):
            try:
                feature = _example_bytes(record, ("image/encoded", "image/filepath"))
            except (IndexError, ValueError) as exc:
                raise DataError(f"{dataset_dir}/{shard}: a record is not a tf.train.Example ({exc})") from exc
            if "image/encoded" not in feature or "image/filepath" not in feature:
                raise DataError(f"{dataset_dir}/{shard}: a record has no image/encoded or image/filepath")
            file = work / f"{len(files):06d}.jpg"
            file.write_bytes(feature["image/encoded"])
            keys.append(feature["image/filepath"].decode("utf-8"))
            files.append(file)
    if not files:
        raise DataError(f"{dataset_dir}: the test split has no images; MediaPipe's figures need at least one")
    return keys, files


# === The stage ===


def check_same_outputs(exported: Path, packaged: Path) -> None:
    """The model with metadata has the exported model's tensors and gives its raw outputs, bit for bit."""
    a, b = TFLiteModel(exported, num_threads=1), TFLiteModel(packaged, num_threads=1)
    if (a.input, a.output) != (b.input, b.output):
        raise ExportError(
            f"{packaged}: writing the metadata changed the tensors ({a.input}, {a.output} -> {b.input}, {b.output})"
        )
    rng = np.random.default_rng(0)
    info = np.iinfo(a.input.dtype) if a.input.dtype != "float32" else None
    for _ in range(PARITY_INPUTS):
        shape = a.input.shape[1:]
        tensor = (
            rng.integers(info.min, info.max + 1, size=shape, dtype=a.input.dtype)
            if info is not None
            else rng.uniform(0, 255, size=shape).astype(np.float32)
        )
        if not np.array_equal(a.invoke(tensor), b.invoke(tensor)):
            raise ExportError(f"{packaged}: the model with metadata gives other outputs than {exported}")


def run(
    dataset_dir: str | Path,
    tflite_dir: str | Path,
    thresholds_dir: str | Path,
    out_dir: str | Path,
    *,
    interpreter: str | Path | None = None,
) -> StageResult:
    """Write the model with metadata into ``out_dir`` and classify the test images with MediaPipe."""
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = dataset_facts(dataset_dir)
    exported = Path(tflite_dir) / MODEL_FILE
    labels = (Path(tflite_dir) / LABELS_FILE).read_text(encoding="utf-8").splitlines()
    if labels != facts.classes:
        raise DataError(f"{tflite_dir}/{LABELS_FILE} lists {labels}, the dataset {facts.classes}")
    recommendation = read_json(Path(thresholds_dir) / THRESHOLDS_FILE)
    missing = [c for c in labels if c not in recommendation["classes"]]
    if missing:
        raise DataError(f"{thresholds_dir}/{THRESHOLDS_FILE} has no threshold for {', '.join(missing)}")
    thresholds = [float(recommendation["classes"][c]["threshold"]) for c in labels]
    model = out / MODEL_FILE
    summary = write_metadata(
        exported,
        model,
        labels,
        thresholds,
        name="mobiletag",
        description=metadata_description(labels, thresholds),
        version=__version__,
        output=TFLiteModel(exported, num_threads=1).output,
        interpreter=interpreter,
    )
    check_same_outputs(exported, model)
    shutil.copyfile(Path(tflite_dir) / LABELS_FILE, out / LABELS_FILE)
    metadata_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory(prefix="mobiletag-mediapipe-test-") as tmp:
        keys, files = images_to_classify(dataset_dir, tmp)
        classified = classify(model, files, interpreter=interpreter)
    if classified.scores.shape != (len(keys), len(labels)):
        raise ExportError(
            f"MediaPipe returned scores of shape {classified.scores.shape} for {len(keys)} images and {len(labels)} classes"
        )
    np.save(out / SCORES_FILE, classified.scores.astype(np.float32))
    write_json(out / LABEL_SETS_FILE, classified.label_sets)
    write_json(out / PATHS_FILE, keys)
    write_json(
        out / SUMMARY_FILE,
        {
            "model": MODEL_FILE,
            "mediapipe_version": "0.10.21",
            "metadata": summary["metadata"],
            "thresholds": dict(zip(labels, thresholds)),
            "calibration_thresholds": dict(zip(labels, summary["calibration_thresholds"])),
            "score_threshold": 0.5,
            "same_outputs_as_exported": True,
            "test_images": len(keys),
            "timings_ms_per_image": classified.timings,
            "metadata_seconds": round(metadata_seconds, 2),
        },
    )
    seconds = time.perf_counter() - started
    log.info(
        "model with MediaPipe metadata: %s (%d bytes); ImageClassifier over %d test images: %.2f ms/img classify, "
        "%.2f ms/img decode",
        model,
        model.stat().st_size,
        len(keys),
        classified.timings.get("classify_ms_per_image", 0.0),
        classified.timings.get("decode_ms_per_image", 0.0),
    )
    return StageResult(
        metrics={
            "size_bytes": float(model.stat().st_size),
            "test_images": float(len(keys)),
            "classify_ms_per_image": round(classified.timings.get("classify_ms_per_image", 0.0), 3),
            "seconds": round(seconds, 1),
        },
        files={"model": str(model), "scores": str(out / SCORES_FILE)},
        details={"version": __version__, "seconds": round(seconds, 1)},
    )

"""Stage: the shipped model with TFLite metadata for MediaPipe Tasks, and MediaPipe's ImageClassifier
over the test images (what an app that uses MediaPipe gets).

Runs after optimize-thresholds (the calibration needs the thresholds) and before evaluate, which
evaluates this stage's model and adds MediaPipe's figures to metrics.json. No TensorFlow here:
the stage runs in images/mediapipe.Dockerfile (and in the TensorFlow environment locally); the
MediaPipe side runs in its own interpreter (``mobiletag.export.mediapipe``).

Output folder (:class:`mobiletag.artifacts.ExportedModel`): the model with metadata (its tensors
and outputs are the exported model's, bit for bit), the labels, the summary (metadata, calibration
thresholds, checks, timings), MediaPipe's calibrated test scores [N, C], label indices per image
(default options) and the N test paths, as evaluate names them. The test originals are read where
they live (the dataset's originals manifest), checked, and piped to the MediaPipe tool, which
decodes them and pre-scales them for the model's input as the documented app path does.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from mobiletag import __version__
from mobiletag.artifacts import ExportedModel, Thresholds, read_json, write_json
from mobiletag.data.originals import Original, iter_originals
from mobiletag.data.tfrecords import originals_of
from mobiletag.errors import DataError, ExportError
from mobiletag.export.litert import TFLiteModel
from mobiletag.export.mediapipe import classify, metadata_description, write_metadata
from mobiletag.stages.common import StageResult, dataset_facts

log = logging.getLogger(__name__)

PARITY_INPUTS = 16  # random inputs on which the model with metadata must give the exported model's raw outputs


# === The test images ===


def images_to_classify(dataset_dir: str | Path) -> list[Original]:
    """The test images MediaPipe classifies, in record order: where each original lives, and its
    path in the dataset's CSV (``filepath``), as evaluate names it."""
    originals = originals_of(dataset_dir, "test")
    if not originals:
        raise DataError(f"{dataset_dir}: the test split has no images; MediaPipe's figures need at least one")
    return originals


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
    exported = Path(tflite_dir) / ExportedModel.MODEL
    labels = (Path(tflite_dir) / ExportedModel.LABELS).read_text(encoding="utf-8").splitlines()
    if labels != facts.classes:
        raise DataError(f"{tflite_dir}/{ExportedModel.LABELS} lists {labels}, the dataset {facts.classes}")
    recommendation = read_json(Path(thresholds_dir) / Thresholds.RECOMMENDATION)
    missing = [c for c in labels if c not in recommendation["classes"]]
    if missing:
        raise DataError(f"{thresholds_dir}/{Thresholds.RECOMMENDATION} has no threshold for {', '.join(missing)}")
    thresholds = [float(recommendation["classes"][c]["threshold"]) for c in labels]
    model = out / ExportedModel.MODEL
    exported_model = TFLiteModel(exported, num_threads=1)
    _, height, width, _ = exported_model.input.shape
    summary = write_metadata(
        exported,
        model,
        labels,
        thresholds,
        name="mobiletag",
        description=metadata_description(labels, thresholds),
        version=__version__,
        output=exported_model.output,
        interpreter=interpreter,
    )
    check_same_outputs(exported, model)
    shutil.copyfile(Path(tflite_dir) / ExportedModel.LABELS, out / ExportedModel.LABELS)
    metadata_seconds = time.perf_counter() - started

    originals = images_to_classify(dataset_dir)
    keys = [original.filepath for original in originals]
    # each original is read where it lives, checked against the manifest, and piped to MediaPipe;
    # the tool pre-scales it for the input size as the documented app path does
    images = ((original.describe(), data) for original, data in iter_originals(originals))
    classified = classify(model, images, interpreter=interpreter, prescale_to=(width, height))
    if classified.scores.shape != (len(keys), len(labels)):
        raise ExportError(
            f"MediaPipe returned scores of shape {classified.scores.shape} for {len(keys)} images and {len(labels)} classes"
        )
    np.save(out / ExportedModel.MEDIAPIPE_TEST_SCORES, classified.scores.astype(np.float32))
    write_json(out / ExportedModel.MEDIAPIPE_TEST_LABEL_SETS, classified.label_sets)
    write_json(out / ExportedModel.MEDIAPIPE_TEST_PATHS, keys)
    write_json(
        out / ExportedModel.MEDIAPIPE_SUMMARY,
        {
            "model": ExportedModel.MODEL,
            "mediapipe_version": "0.10.21",
            "metadata": summary["metadata"],
            "thresholds": dict(zip(labels, thresholds)),
            "calibration_thresholds": dict(zip(labels, summary["calibration_thresholds"])),
            "score_threshold": 0.5,
            "same_outputs_as_exported": True,
            "test_images": len(keys),
            "prescale_to": [width, height],
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
        files={"model": str(model), "scores": str(out / ExportedModel.MEDIAPIPE_TEST_SCORES)},
        details={"version": __version__, "seconds": round(seconds, 1)},
    )

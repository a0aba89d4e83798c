"""Stage: the output folder of the contract with the app team (:class:`mobiletag.artifacts.OutputFolder`).

The model, labels, metrics, thresholds, reports and checkpoints copied from the stages' folders,
and inference_config.json built from them. Written to a temporary sibling and renamed, so a folder
that exists is complete.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from mobiletag.artifacts import ExportedModel, OutputFolder, atomic_dir, read_json, write_json
from mobiletag.evaluation.mediapipe import has_mediapipe_results
from mobiletag.export.inference_config import build_inference_config
from mobiletag.export.litert import TFLiteModel
from mobiletag.export.mediapipe import inference_config_entry
from mobiletag.stages.common import StageResult
from mobiletag.training.backup import clear_run, run_prefix

log = logging.getLogger(__name__)


def run(
    teacher_dir: str | Path,
    student_dir: str | Path,
    qat_dir: str | Path,
    tflite_dir: str | Path,
    thresholds_dir: str | Path,
    eval_dir: str | Path,
    out_dir: str | Path,
    *,
    backup_uri: str | None = None,
    run_id: str = "",
) -> StageResult:
    """Write the output folder, then delete the run's training backups (``<backup_uri>/<run_id>/``).

    The training stages leave their backups in place: every training output is stored by the
    time this stage runs (it reads them), so nothing there is needed any more. With
    ``backup_uri`` empty or None there is nothing to delete.
    """
    started = time.perf_counter()
    run_prefix(backup_uri, run_id)  # an empty run id with backups on fails here, before any work
    out = Path(out_dir)
    folders = {
        "teacher_dir": teacher_dir,
        "student_dir": student_dir,
        "qat_dir": qat_dir,
        "tflite_dir": tflite_dir,
        "thresholds_dir": thresholds_dir,
        "eval_dir": eval_dir,
    }
    with atomic_dir(out) as tmp:
        for folder, names in OutputFolder.SOURCES.items():
            for name in names:
                shutil.copyfile(Path(folders[folder]) / name, tmp / name)
        labels = (tmp / OutputFolder.LABELS).read_text(encoding="utf-8").splitlines()
        thresholds = {k: v["threshold"] for k, v in read_json(tmp / OutputFolder.THRESHOLDS)["classes"].items()}
        config = build_inference_config(TFLiteModel(tmp / OutputFolder.MODEL), labels, thresholds)
        if has_mediapipe_results(tflite_dir):  # the model with metadata (mediapipe-package)
            summary = read_json(Path(tflite_dir) / ExportedModel.MEDIAPIPE_SUMMARY)
            config["mediapipe"] = inference_config_entry(summary)
        write_json(tmp / OutputFolder.INFERENCE_CONFIG, config)
    log.info("output folder: %s", out)
    clear_run(backup_uri, run_id)
    files = sorted(p.name for p in out.iterdir())
    return StageResult(
        files={name: str(out / name) for name in files},
        details={"files": files, "seconds": round(time.perf_counter() - started, 1)},
    )

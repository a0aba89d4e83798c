"""Stage: the output folder of the contract with the app team.

model_qat_int8.tflite, labels.txt, metrics.json, threshold_recommendation.json,
inference_config.json, teacher_*.h5, student_*.h5 (+ report.md, report.html). Written to a temporary
sibling and renamed, so a folder that exists is complete.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from mobiletag.evaluation.mediapipe import has_mediapipe_results
from mobiletag.evaluation.report_html import REPORT_HTML
from mobiletag.export.inference_config import build_inference_config
from mobiletag.export.litert import MODEL_FILE, TFLiteModel
from mobiletag.export.mediapipe import inference_config_entry
from mobiletag.stages import mediapipe_package
from mobiletag.stages.common import (
    METRICS_FILE,
    QAT_CHECKPOINT,
    REPORT_FILE,
    STUDENT_CHECKPOINT,
    TEACHER_CHECKPOINT,
    THRESHOLDS_FILE,
    StageResult,
    read_json,
    write_json,
)
from mobiletag.training.backup import clear_run, run_prefix

log = logging.getLogger(__name__)

INFERENCE_CONFIG = "inference_config.json"
CONTRACT = (MODEL_FILE, "labels.txt", METRICS_FILE, THRESHOLDS_FILE, INFERENCE_CONFIG)


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
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        copies = {
            MODEL_FILE: Path(tflite_dir) / MODEL_FILE,
            "labels.txt": Path(tflite_dir) / "labels.txt",
            METRICS_FILE: Path(eval_dir) / METRICS_FILE,
            REPORT_FILE: Path(eval_dir) / REPORT_FILE,
            REPORT_HTML: Path(eval_dir) / REPORT_HTML,
            THRESHOLDS_FILE: Path(thresholds_dir) / THRESHOLDS_FILE,
            TEACHER_CHECKPOINT: Path(teacher_dir) / TEACHER_CHECKPOINT,
            STUDENT_CHECKPOINT: Path(student_dir) / STUDENT_CHECKPOINT,
            QAT_CHECKPOINT: Path(qat_dir) / QAT_CHECKPOINT,
        }
        for name, source in copies.items():
            shutil.copyfile(source, tmp / name)
        labels = (tmp / "labels.txt").read_text(encoding="utf-8").splitlines()
        thresholds = {k: v["threshold"] for k, v in read_json(tmp / THRESHOLDS_FILE)["classes"].items()}
        config = build_inference_config(TFLiteModel(tmp / MODEL_FILE), labels, thresholds)
        if has_mediapipe_results(tflite_dir):  # the model with metadata (mediapipe-package)
            summary = read_json(Path(tflite_dir) / mediapipe_package.SUMMARY_FILE)
            config["mediapipe"] = inference_config_entry(summary)
        write_json(tmp / INFERENCE_CONFIG, config)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("output folder: %s", out)
    clear_run(backup_uri, run_id)
    files = sorted(p.name for p in out.iterdir())
    return StageResult(
        files={name: str(out / name) for name in files},
        details={"files": files, "seconds": round(time.perf_counter() - started, 1)},
    )

"""Stage: per-class thresholds by grid search on validation, on the exported INT8 model's outputs."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from mobiletag.config import Config
from mobiletag.evaluation.thresholds import optimize_thresholds
from mobiletag.export.inference_config import stream_scores
from mobiletag.export.litert import MODEL_FILE, TFLiteModel
from mobiletag.progress import report_result
from mobiletag.stages.common import THRESHOLDS_FILE, StageResult, dataset_facts, write_json

log = logging.getLogger(__name__)

VAL_SCORES_FILE = "val_scores.npy"  # [N, C] float32: the INT8 model's validation probabilities (report.html)
VAL_LABELS_FILE = "val_labels.npy"  # [N, C] uint8 (0/1)


def run(config: Config, dataset_dir: str | Path, tflite_dir: str | Path, out_dir: str | Path) -> StageResult:
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = dataset_facts(dataset_dir)
    model = TFLiteModel(Path(tflite_dir) / MODEL_FILE)
    scores, labels, _ = stream_scores(dataset_dir, "val", {"int8": (model.image_size, model.predict_batch)})
    result = optimize_thresholds(labels, scores["int8"], facts.classes, config.thresholds)
    result["model"] = MODEL_FILE
    result["split"] = "val"
    write_json(out / THRESHOLDS_FILE, result)
    np.save(out / VAL_SCORES_FILE, scores["int8"].astype(np.float32))
    np.save(out / VAL_LABELS_FILE, labels.astype(np.uint8))
    f1 = [c["f1"] for c in result["classes"].values() if c["support"] > 0]
    metrics = {"val_f1_macro_at_thresholds": round(sum(f1) / len(f1), 4) if f1 else 0.0}
    report_result(
        log,
        "thresholds (%s): %s",
        config.thresholds.strategy,
        ", ".join(f"{k} {v['threshold']}" for k, v in result["classes"].items()),
    )
    return StageResult(
        metrics=metrics,
        files={"thresholds": str(out / THRESHOLDS_FILE)},
        details={**result, "seconds": round(time.perf_counter() - started, 1)},
    )

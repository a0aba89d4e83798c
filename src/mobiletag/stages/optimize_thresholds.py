"""Stage: per-class thresholds by grid search on validation, on the exported INT8 model's outputs."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from mobiletag.artifacts import ExportedModel, Thresholds, write_json
from mobiletag.config import Config
from mobiletag.evaluation.thresholds import optimize_thresholds
from mobiletag.export.inference_config import stream_scores
from mobiletag.export.litert import TFLiteModel
from mobiletag.progress import report_result
from mobiletag.stages.common import StageResult, dataset_facts

log = logging.getLogger(__name__)


def run(config: Config, dataset_dir: str | Path, tflite_dir: str | Path, out_dir: str | Path) -> StageResult:
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = dataset_facts(dataset_dir)
    model = TFLiteModel(Path(tflite_dir) / ExportedModel.MODEL)
    scores, labels, _ = stream_scores(dataset_dir, "val", {"int8": (model.image_size, model.predict_batch)})
    result = optimize_thresholds(labels, scores["int8"], facts.classes, config.thresholds)
    result["model"] = ExportedModel.MODEL
    result["split"] = "val"
    write_json(out / Thresholds.RECOMMENDATION, result)
    np.save(out / Thresholds.VAL_SCORES, scores["int8"].astype(np.float32))
    np.save(out / Thresholds.VAL_TRUE_LABELS, labels.astype(np.uint8))
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
        files={"thresholds": str(out / Thresholds.RECOMMENDATION)},
        details={**result, "seconds": round(time.perf_counter() - started, 1)},
    )

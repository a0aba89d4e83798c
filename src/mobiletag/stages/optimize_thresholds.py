"""Stage: per-class thresholds by grid search on validation, on the exported INT8 model's outputs;
then the exported model's decisions at those thresholds are checked against the QAT model's."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from mobiletag.artifacts import ExportedModel, Thresholds, read_json, write_json
from mobiletag.config import Config
from mobiletag.errors import ExportError
from mobiletag.evaluation.thresholds import optimize_thresholds
from mobiletag.export.inference_config import stream_scores
from mobiletag.export.litert import TFLiteModel
from mobiletag.export.tflite import check_decision_agreement
from mobiletag.progress import report_result
from mobiletag.stages.common import StageResult, dataset_facts

log = logging.getLogger(__name__)


def run(config: Config, dataset_dir: str | Path, tflite_dir: str | Path, out_dir: str | Path) -> StageResult:
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = dataset_facts(dataset_dir)
    model = TFLiteModel(Path(tflite_dir) / ExportedModel.MODEL)
    scores, labels, paths = stream_scores(dataset_dir, "val", {"int8": (model.image_size, model.predict_batch)})
    result = optimize_thresholds(labels, scores["int8"], facts.classes, config.thresholds)
    thresholds = np.array([result["classes"][c]["threshold"] for c in facts.classes])
    agreement = _parity_at_thresholds(Path(tflite_dir), scores["int8"], paths, thresholds, config)
    result["parity_agreement_at_thresholds"] = agreement
    result["model"] = ExportedModel.MODEL
    result["split"] = "val"
    write_json(out / Thresholds.RECOMMENDATION, result)
    np.save(out / Thresholds.VAL_SCORES, scores["int8"].astype(np.float32))
    np.save(out / Thresholds.VAL_TRUE_LABELS, labels.astype(np.uint8))
    f1 = [c["f1"] for c in result["classes"].values() if c["support"] > 0]
    metrics = {
        "val_f1_macro_at_thresholds": round(sum(f1) / len(f1), 4) if f1 else 0.0,
        "parity_agreement_at_thresholds": round(agreement, 4),
    }
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


def _parity_at_thresholds(
    tflite_dir: Path, int8_scores: np.ndarray, paths: list[str], thresholds: np.ndarray, config: Config
) -> float:
    """The exported model's decisions at ``thresholds`` against the QAT model's on export's parity
    images (the first validation images, whose QAT probabilities export kept)."""
    parity_paths = read_json(tflite_dir / ExportedModel.EXPORT_REPORT)["parity"]["paths"]
    qat = np.load(tflite_dir / ExportedModel.PARITY_QAT_PROBABILITIES)
    n = len(parity_paths)
    if paths[:n] != parity_paths or qat.shape != (n, len(thresholds)):
        raise ExportError(
            f"{tflite_dir / ExportedModel.EXPORT_REPORT}: its parity images are not the first {n} validation images "
            "this stage reads (the export and this stage were given different datasets); run export_tflite again "
            "on this dataset"
        )
    agreement = check_decision_agreement(int8_scores[:n], qat, thresholds, config.export.parity_min_agreement)
    log.info("decisions at the thresholds on %d validation images: %.3f equal to the QAT model's", n, agreement)
    return agreement

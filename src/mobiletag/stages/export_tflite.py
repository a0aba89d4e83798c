"""Stage: convert the QAT model to full-integer INT8 TFLite and verify it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from mobiletag.artifacts import ExportedModel, QatModel, write_json
from mobiletag.config import Config
from mobiletag.export.inference_config import build_inference_config, eval_pixels
from mobiletag.export.tflite import TFLiteModel, convert_int8, verify_export
from mobiletag.progress import report_result
from mobiletag.quantization.qat import load_qat_model
from mobiletag.stages.common import StageResult, dataset_facts

log = logging.getLogger(__name__)

PARITY_IMAGES = 64


def run(config: Config, dataset_dir: str | Path, qat_dir: str | Path, model_dir: str | Path) -> StageResult:
    started = time.perf_counter()
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = dataset_facts(dataset_dir)
    size = config.student.image_size
    qat_model = load_qat_model(Path(qat_dir) / QatModel.CHECKPOINT)
    # calibration: training images (only their TFRecord copies are kept), through the app's resize
    (representative,), _, _ = eval_pixels(
        dataset_dir, "train", [size], config.export.representative_samples, source="records"
    )
    flatbuffer = convert_int8(qat_model, representative, config.export.input_dtype, config.export.output_dtype)
    tflite = TFLiteModel(flatbuffer)
    (check_images,), _, check_paths = eval_pixels(dataset_dir, "val", [size], PARITY_IMAGES)
    parity = verify_export(
        tflite,
        qat_model,
        check_images,
        input_dtype=config.export.input_dtype,
        output_dtype=config.export.output_dtype,
        max_mean_abs_diff=config.export.parity_max_mean_abs_diff,
    )
    path = out / ExportedModel.MODEL
    tmp = path.with_suffix(".partial")
    tmp.write_bytes(flatbuffer)
    tmp.replace(path)
    # optimize_thresholds compares decisions at its thresholds with these (the first val images, in order)
    np.save(out / ExportedModel.PARITY_QAT_PROBABILITIES, parity.qat_probabilities)
    (out / ExportedModel.LABELS).write_text("".join(f"{c}\n" for c in facts.classes), encoding="utf-8")
    inference = build_inference_config(tflite, facts.classes)
    report = {
        "size_bytes": len(flatbuffer),
        "ops": sorted(set(tflite.op_names())),
        "input": inference["input"],
        "output": inference["output"],
        "parity": {**parity.summary(), "paths": check_paths},
        "representative_samples": int(len(representative)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / ExportedModel.EXPORT_REPORT, report)
    report_result(
        log,
        "exported %s: %d bytes, parity mean |diff| %.4f, agreement %.3f",
        path,
        len(flatbuffer),
        parity.mean_abs_diff,
        parity.agreement,
    )
    metrics = {
        "size_bytes": float(len(flatbuffer)),
        "parity_mean_abs_diff": round(parity.mean_abs_diff, 5),
        "parity_agreement": round(parity.agreement, 4),
    }
    details = {
        "framework": "tflite (full-integer INT8)",
        "architecture": config.student.architecture,
        "image_size": size,
        "size_bytes": len(flatbuffer),
        "input_dtype": tflite.input.dtype,
        "output_dtype": tflite.output.dtype,
        "seconds": report["seconds"],
    }
    return StageResult(
        metrics=metrics, files={"model": str(path), "report": str(out / ExportedModel.EXPORT_REPORT)}, details=details
    )

"""Stage: convert the QAT model to full-integer INT8 TFLite and verify it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from mobiletag.config import Config
from mobiletag.data.pipeline import list_shards
from mobiletag.export.inference_config import app_pixels, build_inference_config
from mobiletag.export.tflite import MODEL_FILE, TFLiteModel, convert_int8, verify_export
from mobiletag.quantization.qat import load_qat_model
from mobiletag.stages.common import QAT_CHECKPOINT, StageResult, dataset_facts, write_json

log = logging.getLogger(__name__)

REPORT = "export_report.json"
PARITY_IMAGES = 64


def eval_pixels(
    dataset_dir: str | Path, split: str, size: int, limit: int | None = None, with_paths: bool = False
) -> Any:
    """A split's images preprocessed exactly as inference_config.json tells an app (PIL decode,
    whole image, bilinear resize), as float pixel values 0..255, with their labels (and paths)."""
    import io

    import tensorflow as tf
    from PIL import Image

    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/labels": tf.io.VarLenFeature(tf.float32),
        "image/filepath": tf.io.FixedLenFeature([], tf.string),
    }
    config = {"input": {"shape": [1, size, size, 3]}}
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    paths: list[str] = []
    for raw in tf.data.TFRecordDataset(list_shards(dataset_dir, split)):
        if limit is not None and len(images) >= limit:
            break
        ex = tf.io.parse_single_example(raw, features)
        with Image.open(io.BytesIO(ex["image/encoded"].numpy())) as image:
            images.append(app_pixels(image, config).astype(np.float32))
        labels.append(tf.sparse.to_dense(ex["image/labels"]).numpy())
        paths.append(ex["image/filepath"].numpy().decode("utf-8"))
    out = (np.stack(images), np.stack(labels).astype(np.float32))
    return (*out, paths) if with_paths else out


def run(config: Config, dataset_dir: str | Path, qat_dir: str | Path, model_dir: str | Path) -> StageResult:
    started = time.perf_counter()
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = dataset_facts(dataset_dir)
    size = config.student.image_size
    qat_model = load_qat_model(Path(qat_dir) / QAT_CHECKPOINT)
    representative, _ = eval_pixels(dataset_dir, "train", size, config.export.representative_samples)
    flatbuffer = convert_int8(qat_model, representative, config.export.input_dtype, config.export.output_dtype)
    tflite = TFLiteModel(flatbuffer)
    check_images, _ = eval_pixels(dataset_dir, "val", size, PARITY_IMAGES)
    parity = verify_export(
        tflite,
        qat_model,
        check_images,
        input_dtype=config.export.input_dtype,
        output_dtype=config.export.output_dtype,
        max_mean_abs_diff=config.export.parity_max_mean_abs_diff,
        min_agreement=config.export.parity_min_agreement,
    )
    path = out / MODEL_FILE
    tmp = path.with_suffix(".partial")
    tmp.write_bytes(flatbuffer)
    tmp.replace(path)
    (out / "labels.txt").write_text("".join(f"{c}\n" for c in facts.classes), encoding="utf-8")
    inference = build_inference_config(tflite, facts.classes)
    report = {
        "size_bytes": len(flatbuffer),
        "ops": sorted(set(tflite.op_names())),
        "input": inference["input"],
        "output": inference["output"],
        "parity": parity.__dict__,
        "representative_samples": int(len(representative)),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(out / REPORT, report)
    log.info(
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
    }
    return StageResult(metrics=metrics, files={"model": str(path), "report": str(out / REPORT)}, details=details)

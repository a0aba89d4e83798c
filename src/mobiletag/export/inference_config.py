"""inference_config.json: everything an app needs to run the model, and the preprocessing
that evaluation and ``mobiletag predict`` share with an app."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mobiletag.export.litert import MODEL_FILE, TFLiteModel


def build_inference_config(
    model: TFLiteModel, labels: list[str], thresholds: dict[str, float] | None = None
) -> dict[str, Any]:
    size = model.image_size
    inp, out = model.input, model.output
    return {
        "model_file": MODEL_FILE,
        "input": {
            "shape": inp.shape,
            "dtype": inp.dtype,
            "color_order": "RGB",
            "layout": "NHWC",
            "resize": "bilinear",
            "crop": "none: the whole image is resized to the input size (aspect ratio not kept)",
            "value_range": [0, 255],
            "normalization": "none: feed pixel values; the model normalises (x - 127) / 128 inside",
            "quantization": {"scale": inp.scale, "zero_point": inp.zero_point},
            "how_to": (
                f"decode to RGB, apply EXIF orientation, resize to {size}x{size} (bilinear), then "
                + (
                    "feed the pixels as they are"
                    if inp.dtype == "uint8" and inp.scale == 1.0 and inp.zero_point == 0
                    else "quantize: q = round(pixel / scale + zero_point)"
                )
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


def app_pixels(image: Image.Image, config: dict[str, Any]) -> np.ndarray:
    """An RGB PIL image -> the uint8 pixel array an app feeds, per inference_config.json."""
    _, height, width, _ = config["input"]["shape"]
    if image.mode != "RGB":
        image = image.convert("RGB")
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def eval_pixels(
    dataset_dir: str | Path, split: str, sizes: Sequence[int], limit: int | None = None
) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """A split's images preprocessed exactly as inference_config.json tells an app (PIL decode,
    whole image, bilinear resize) as float pixel values 0..255: one array per size in
    ``sizes`` (each image decoded once), with the labels and the original file paths."""
    import io

    import tensorflow as tf
    from PIL import Image

    from mobiletag.data.pipeline import list_shards

    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/labels": tf.io.VarLenFeature(tf.float32),
        "image/filepath": tf.io.FixedLenFeature([], tf.string),
    }
    configs = [{"input": {"shape": [1, size, size, 3]}} for size in sizes]
    images: list[list[np.ndarray]] = [[] for _ in sizes]
    labels: list[np.ndarray] = []
    paths: list[str] = []
    for raw in tf.data.TFRecordDataset(list_shards(dataset_dir, split)):
        if limit is not None and len(labels) >= limit:
            break
        ex = tf.io.parse_single_example(raw, features)
        with Image.open(io.BytesIO(ex["image/encoded"].numpy())) as image:
            for per_size, config in zip(images, configs, strict=True):
                per_size.append(app_pixels(image, config).astype(np.float32))
        labels.append(tf.sparse.to_dense(ex["image/labels"]).numpy())
        paths.append(ex["image/filepath"].numpy().decode("utf-8"))
    return [np.stack(per_size) for per_size in images], np.stack(labels).astype(np.float32), paths

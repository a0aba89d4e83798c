"""Label images with an output folder, using only what an app has: the TFLite model and
inference_config.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mobiletag.artifacts import OutputFolder
from mobiletag.errors import DataError, MobiletagError
from mobiletag.export.app_input import app_pixels
from mobiletag.export.litert import TFLiteModel


class Predictor:
    def __init__(self, model_dir: str | Path, num_threads: int = 2) -> None:
        folder = Path(model_dir)
        config_path = folder / OutputFolder.INFERENCE_CONFIG
        if not config_path.is_file():
            raise MobiletagError(
                f"{folder}: no {OutputFolder.INFERENCE_CONFIG}; pass the output folder of `mobiletag train`"
            )
        self.config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
        self.model = TFLiteModel(folder / self.config["model_file"], num_threads=num_threads)
        self.labels: list[str] = self.config["labels"]
        self.thresholds = np.array([self.config["thresholds"][name] for name in self.labels])

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for uint8 pixels, quantized and dequantized with the config's parameters only."""
        inp, out = self.config["input"], self.config["output"]
        if inp["dtype"] == "float32":
            tensor = pixels.astype(np.float32)
        else:
            q = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            values = np.round(pixels.astype(np.float32) / q["scale"] + q["zero_point"])
            tensor = np.clip(values, info.min, info.max).astype(inp["dtype"])
        raw = self.model.invoke(tensor)
        if out["dtype"] == "float32":
            return raw.astype(np.float32)
        q = out["quantization"]
        return (raw.astype(np.float32) - q["zero_point"]) * q["scale"]

    def predict_file(self, path: str | Path) -> dict[str, Any]:
        """Labels for one image file, through the app's input path (``app_pixels``: PIL decode, EXIF
        orientation, RGB, MediaPipe Tasks' resize)."""
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError as exc:
            raise DataError(f"{path}: no such image file") from exc
        except OSError as exc:
            raise DataError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
        try:
            pixels = app_pixels(data, self.config)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"{path}: not an image PIL can decode ({exc})") from exc
        scores = self.scores(pixels)
        chosen = {name: float(s) for name, s, t in zip(self.labels, scores, self.thresholds) if s >= t}
        return {
            "image": str(path),
            "labels": dict(sorted(chosen.items(), key=lambda kv: -kv[1])),
            "scores": {name: round(float(s), 6) for name, s in zip(self.labels, scores)},
        }

"""The LiteRT runner of an exported model (numpy and ai_edge_litert only, no TensorFlow):
what the export checks, thresholds, evaluation, bundle and `mobiletag predict` use."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Images per invoke when a split is scored (predict_batch); latency_ms stays one image per invoke.
BATCH = 16
# Ops allowed to touch float tensors in an integer model: the boundary conversions only.
_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}


@dataclass(frozen=True)
class TensorSpec:
    shape: list[int]
    dtype: str
    scale: float
    zero_point: int


class TFLiteModel:
    """A TFLite classifier run with LiteRT (XNNPACK by default): one image per invoke
    (``predict``, ``latency_ms``), or BATCH per invoke with the same outputs (``predict_batch``)."""

    def __init__(self, model: str | Path | bytes, num_threads: int = 2) -> None:
        self._model = model
        self._num_threads = num_threads
        self.interpreter = self._interpreter()
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._batched: Any = None  # a second interpreter resized to BATCH images, made on first use
        self._batch_checked = False

    def _interpreter(self) -> Any:
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(self._model, bytes):
            return Interpreter(model_content=self._model, num_threads=self._num_threads)
        return Interpreter(model_path=str(self._model), num_threads=self._num_threads)

    @staticmethod
    def _spec(details: dict[str, Any]) -> TensorSpec:
        scale, zero_point = details["quantization"]
        return TensorSpec(
            shape=[int(v) for v in details["shape"]],
            dtype=np.dtype(details["dtype"]).name,
            scale=float(scale),
            zero_point=int(zero_point),
        )

    @property
    def input(self) -> TensorSpec:
        return self._spec(self._input)

    @property
    def output(self) -> TensorSpec:
        return self._spec(self._output)

    @property
    def image_size(self) -> int:
        return int(self._input["shape"][1])

    def _quantize_input(self, pixels: np.ndarray) -> np.ndarray:
        spec = self.input
        if spec.dtype == "float32":
            return pixels.astype(np.float32)
        info = np.iinfo(spec.dtype)
        q = np.round(pixels.astype(np.float32) / spec.scale + spec.zero_point)
        return np.clip(q, info.min, info.max).astype(spec.dtype)

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        """Raw output for one input tensor [H, W, 3] already in the model's input dtype."""
        self.interpreter.set_tensor(self._input["index"], tensor[None])
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output["index"])[0].copy()

    def raw(self, pixels: np.ndarray) -> np.ndarray:
        """Raw output tensor for one image of pixels [H, W, 3] (values 0..255)."""
        return self.invoke(self._quantize_input(pixels))

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        spec = self.output
        if spec.dtype == "float32":
            return raw.astype(np.float32)
        return (raw.astype(np.float32) - spec.zero_point) * spec.scale

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities [N, C] for pixel images [N, H, W, 3], one image per invoke."""
        return np.stack([self.dequantize(self.raw(image)) for image in images])

    def _batch_interpreter(self) -> Any:
        """The interpreter resized to BATCH images, or None when the model cannot run batched
        with exactly the one-by-one outputs (checked once, on random images)."""
        if self._batch_checked:
            return self._batched
        self._batch_checked = True
        try:
            batched = self._interpreter()
            batched.resize_tensor_input(self._input["index"], [BATCH, *self._input["shape"][1:]], strict=False)
            batched.allocate_tensors()
            probe = np.random.default_rng(0).integers(0, 256, size=(BATCH, *self._input["shape"][1:]), dtype=np.uint8)
            tensor = self._quantize_input(probe)
            one_by_one = np.stack([self.invoke(t) for t in tensor])
            batched.set_tensor(self._input["index"], tensor)
            batched.invoke()
            together = batched.get_tensor(self._output["index"])
        except (RuntimeError, ValueError) as exc:
            log.info("the model does not run batched (%s); evaluating one image per invoke", exc)
            return None
        if together.shape != one_by_one.shape or not np.array_equal(together, one_by_one):
            log.info("batched outputs differ from one-by-one outputs; evaluating one image per invoke")
            return None
        self._batched = batched
        return batched

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        """Probabilities [N, C] for pixel images [N, H, W, 3]: the same numbers as ``predict``,
        BATCH images per invoke when the model allows it (see ``_batch_interpreter``)."""
        batched = self._batch_interpreter()
        if batched is None:
            return self.predict(images)
        out = []
        for start in range(0, len(images), BATCH):
            chunk = self._quantize_input(images[start : start + BATCH])
            count = len(chunk)
            if count < BATCH:  # pad the last chunk: each image's output does not depend on the others
                chunk = np.concatenate([chunk, np.zeros((BATCH - count, *chunk.shape[1:]), chunk.dtype)])
            batched.set_tensor(self._input["index"], chunk)
            batched.invoke()
            out.append(self.dequantize(batched.get_tensor(self._output["index"])[:count]))
        if not out:
            return np.zeros((0, self._output["shape"][-1]), np.float32)
        return np.concatenate(out)

    def op_names(self) -> list[str]:
        return [op["op_name"] for op in self.interpreter._get_ops_details()]

    def float_ops(self) -> list[str]:
        """Ops (other than the boundary quantize/dequantize) that read or write float tensors."""
        tensors = {t["index"]: t for t in self.interpreter.get_tensor_details()}
        bad = []
        for op in self.interpreter._get_ops_details():
            if op["op_name"] in _BOUNDARY_OPS:
                continue
            for index in list(op["inputs"]) + list(op["outputs"]):
                if index >= 0 and np.dtype(tensors[index]["dtype"]) in (np.float32, np.float16):
                    bad.append(op["op_name"])
                    break
        return bad

    def latency_ms(self, runs: int = 30) -> float:
        """Median milliseconds per image (after warm-up)."""
        pixels = np.random.default_rng(0).integers(0, 256, size=self._input["shape"][1:], dtype=np.uint8)
        for _ in range(3):
            self.raw(pixels)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.raw(pixels)
            times.append((time.perf_counter() - start) * 1000)
        return float(np.median(times))

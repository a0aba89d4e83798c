"""Full-integer INT8 TFLite export, the LiteRT runner, and the checks run after converting.

The exported graph takes raw RGB pixels: it holds the student's normalisation
((x - 127) / 128) and the sigmoid, so an app feeds uint8 pixels and reads probabilities.
The input range is pinned to the full pixel range, which makes the uint8 input's
quantization scale 1 and zero point 0: the quantized input is the pixel value itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras

from mobiletag.errors import ExportError
from mobiletag.models.student import preprocess

log = logging.getLogger(__name__)

MODEL_FILE = "model_qat_int8.tflite"
_DTYPES = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}
# Ops allowed to touch float tensors in an integer model: the boundary conversions only.
_BOUNDARY_OPS = {"QUANTIZE", "DEQUANTIZE"}


def probabilities_model(model: keras.Model) -> tf.types.experimental.ConcreteFunction:
    """pixels (float [0, 255]) -> sigmoid probabilities, batch 1, as one traced function."""
    size = model.input_shape[1]

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.float32, name="image")])
    def serve(image: tf.Tensor) -> tf.Tensor:
        return tf.sigmoid(tf.cast(model(preprocess(image), training=False), tf.float32))

    return serve.get_concrete_function()


def convert_int8(
    model: keras.Model, representative: np.ndarray, input_dtype: str = "uint8", output_dtype: str = "uint8"
) -> bytes:
    """Convert a (QAT) Keras model to a full-integer TFLite flatbuffer.

    ``representative``: float pixel images [N, H, W, 3] from the training split.
    """
    fn = probabilities_model(model)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = _DTYPES[input_dtype]
    converter.inference_output_type = _DTYPES[output_dtype]

    def samples() -> Iterator[list[np.ndarray]]:
        # one frame spanning 0..255 pins the input range to all pixel values (scale 1, zero point 0)
        size = representative.shape[1]
        ramp = np.tile(np.linspace(0, 255, size, dtype=np.float32)[None, :, None], (size, 1, 3))
        yield [ramp[None]]
        for image in representative:
            yield [image[None].astype(np.float32)]

    converter.representative_dataset = samples
    try:
        return converter.convert()
    except Exception as exc:
        raise ExportError(f"the TFLite converter failed: {exc}") from exc


@dataclass(frozen=True)
class TensorSpec:
    shape: list[int]
    dtype: str
    scale: float
    zero_point: int


class TFLiteModel:
    """A TFLite classifier run with LiteRT (XNNPACK by default), one image per invoke."""

    def __init__(self, model: str | Path | bytes, num_threads: int = 2) -> None:
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(model, bytes):
            self.interpreter = Interpreter(model_content=model, num_threads=num_threads)
        else:
            self.interpreter = Interpreter(model_path=str(model), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]

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
        """Probabilities [N, C] for pixel images [N, H, W, 3]."""
        return np.stack([self.dequantize(self.raw(image)) for image in images])

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


@dataclass(frozen=True)
class ParityReport:
    mean_abs_diff: float
    max_abs_diff: float
    agreement: float
    num_images: int


def verify_export(
    tflite: TFLiteModel,
    keras_model: keras.Model,
    images: np.ndarray,
    *,
    input_dtype: str,
    output_dtype: str,
    max_mean_abs_diff: float,
    min_agreement: float,
) -> ParityReport:
    """Every check an exported model must pass; an ExportError names each one that fails."""
    problems = []
    if input_dtype != "float32" or output_dtype != "float32":
        floats = tflite.float_ops()
        if floats:
            problems.append(f"ops compute in float, not integer: {sorted(set(floats))}")
    if tflite.input.dtype != input_dtype:
        problems.append(f"input dtype is {tflite.input.dtype}, config export.input_dtype says {input_dtype}")
    if tflite.output.dtype != output_dtype:
        problems.append(f"output dtype is {tflite.output.dtype}, config export.output_dtype says {output_dtype}")
    for name, spec in (("input", tflite.input), ("output", tflite.output)):
        if spec.dtype != "float32" and not spec.scale > 0:
            problems.append(f"{name} has no quantization parameters (scale {spec.scale})")
    expected = probabilities_model(keras_model)
    reference = np.concatenate([expected(tf.constant(image[None], tf.float32)).numpy() for image in images])
    got = tflite.predict(images)
    diff = np.abs(got - reference)
    report = ParityReport(
        mean_abs_diff=float(diff.mean()),
        max_abs_diff=float(diff.max()),
        agreement=float(np.mean((got >= 0.5) == (reference >= 0.5))),
        num_images=len(images),
    )
    log.info(
        "export parity on %d validation images: mean |diff| %.4f, max %.4f, equal decisions at 0.5: %.3f",
        report.num_images,
        report.mean_abs_diff,
        report.max_abs_diff,
        report.agreement,
    )
    if report.mean_abs_diff > max_mean_abs_diff:
        problems.append(
            f"TFLite probabilities differ from the QAT model's by {report.mean_abs_diff:.4f} on average "
            f"(allowed: export.parity_max_mean_abs_diff = {max_mean_abs_diff})"
        )
    if report.agreement < min_agreement:
        problems.append(
            f"only {report.agreement:.1%} of decisions at 0.5 agree with the QAT model "
            f"(required: export.parity_min_agreement = {min_agreement})"
        )
    if problems:
        raise ExportError("the exported TFLite model failed its checks: " + "; ".join(problems))
    return report

"""Full-integer INT8 TFLite export, the LiteRT runner, and the checks run after converting.

The exported graph takes raw RGB pixels: it holds the student's normalisation
((x - 127) / 128) and the sigmoid, so an app feeds uint8 pixels and reads probabilities.
The input range is pinned to the full pixel range, which makes the uint8 input's
quantization scale 1 and zero point 0: the quantized input is the pixel value itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf
import tf_keras as keras

from mobiletag.errors import ExportError
from mobiletag.export.litert import TFLiteModel
from mobiletag.models.student import preprocess

log = logging.getLogger(__name__)

_DTYPES = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}


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
    # the converter lowers through a SavedModel of this object (which gives the flatbuffer its
    # "serving_default" signature): a module holding only the function's variables saves in a
    # fraction of the time the Keras model takes (whose every layer's call would be traced again)
    holder = tf.Module()
    holder.variables_of_model = list(model.variables)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn], holder)
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
class ParityReport:
    """The TFLite model against the QAT model on the parity images. ``agreement`` is the share of
    equal decisions at 0.5, reported only: decisions are checked at the shipped thresholds by
    optimize_thresholds (``check_decision_agreement``), from ``qat_probabilities``."""

    mean_abs_diff: float
    max_abs_diff: float
    agreement: float
    num_images: int
    qat_probabilities: np.ndarray = field(repr=False, compare=False)

    def summary(self) -> dict[str, float | int]:
        """The figures, without the probabilities (export_report.json's ``parity``)."""
        return {
            "mean_abs_diff": self.mean_abs_diff,
            "max_abs_diff": self.max_abs_diff,
            "agreement": self.agreement,
            "num_images": self.num_images,
        }


def verify_export(
    tflite: TFLiteModel,
    keras_model: keras.Model,
    images: np.ndarray,
    *,
    input_dtype: str,
    output_dtype: str,
    max_mean_abs_diff: float,
) -> ParityReport:
    """Every check an exported model must pass on its own; an ExportError names each one that fails.
    The QAT model's probabilities on ``images`` are returned for the decision check at the shipped
    thresholds, which are chosen later on the exported model."""
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
        qat_probabilities=reference.astype(np.float32),
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
            f"(allowed: export.parity_max_mean_abs_diff = {max_mean_abs_diff}; a value far above it means the "
            "INT8 conversion lost accuracy: check the QAT model and export.representative_samples before raising it)"
        )
    if problems:
        raise ExportError("the exported TFLite model failed its checks: " + "; ".join(problems))
    return report


def check_decision_agreement(
    tflite_probabilities: np.ndarray, qat_probabilities: np.ndarray, thresholds: np.ndarray, min_agreement: float
) -> float:
    """The share of (image, class) decisions at ``thresholds`` on which the exported model and the
    QAT model agree; an ExportError when it is below ``min_agreement``."""
    got = np.asarray(tflite_probabilities) >= thresholds[None, :]
    want = np.asarray(qat_probabilities) >= thresholds[None, :]
    agreement = float(np.mean(got == want))
    if agreement < min_agreement:
        raise ExportError(
            f"at the shipped thresholds only {agreement:.1%} of the exported model's decisions on "
            f"{len(got)} validation images agree with the QAT model's (required: export.parity_min_agreement = "
            f"{min_agreement}); retrain QAT longer or with more export.representative_samples, or lower "
            "export.parity_min_agreement in the config to accept the INT8 model as it is"
        )
    return agreement

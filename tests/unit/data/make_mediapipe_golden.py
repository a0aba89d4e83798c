"""Writes mediapipe_resize_golden.npz: the exact uint8 tensors MediaPipe's ImageClassifier feeds a model.

Not part of the package or the test run (it needs MediaPipe, which is not a dependency). Run it
in an environment with ``tensorflow`` and ``mediapipe`` (the file was produced with tensorflow
2.21.0 and mediapipe 1.2.2 on CPU, python 3.11)::

    python tests/unit/data/make_mediapipe_golden.py tests/unit/data/mediapipe_resize_golden.npz

For each output size an identity model (uint8 input [1, H, W, 3] reshaped to its uint8 output,
quantization scale 1, zero point 0) is converted to TFLite; ImageClassifier's scores are then the
input tensor's pixels. The sources are seeded uniform noise (every sampling error shows), small
on purpose (the file stays ~40 KB); the keys are ``src_<i>`` (uint8 [h, w, 3]) and
``out_<i>_<W>x<H>`` (uint8 [H, W, 3]).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

SOURCES = [(48, 64), (53, 37), (7, 5), (16, 24), (17, 63), (40, 3)]  # (height, width)
OUTPUTS = [(24, 16), (40, 40)]  # (width, height): downscale and upscale for every source


def identity_model(path: Path, width: int, height: int) -> None:
    import tensorflow as tf

    inputs = tf.keras.Input((height, width, 3), batch_size=1)
    model = tf.keras.Model(inputs, tf.keras.layers.Reshape((height * width * 3,))(inputs))

    def representative():
        rng = np.random.default_rng(0)
        for _ in range(8):
            yield [rng.integers(0, 256, (1, height, width, 3)).astype(np.float32)]
        yield [np.zeros((1, height, width, 3), np.float32)]
        yield [np.full((1, height, width, 3), 255, np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    path.write_bytes(converter.convert())


def mediapipe_tensor(model: Path, rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(model)), max_results=-1, score_threshold=-1.0
    )
    with vision.ImageClassifier.create_from_options(options) as classifier:
        result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb)))
    flat = np.zeros(height * width * 3, np.float64)
    for category in result.classifications[0].categories:
        flat[category.index] = category.score
    assert np.array_equal(flat, np.round(flat)), "the identity model's output is not the input pixels"
    return flat.reshape(height, width, 3).astype(np.uint8)


def main(out: str) -> None:
    rng = np.random.default_rng(16)
    arrays: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for width, height in OUTPUTS:
            models[width, height] = Path(tmp, f"identity_{width}x{height}.tflite")
            identity_model(models[width, height], width, height)
            probe = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)  # same size: the identity itself
            assert np.array_equal(mediapipe_tensor(models[width, height], probe, width, height), probe)
        for i, (h, w) in enumerate(SOURCES):
            src = arrays[f"src_{i}"] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for width, height in OUTPUTS:
                arrays[f"out_{i}_{width}x{height}"] = mediapipe_tensor(models[width, height], src, width, height)
    np.savez_compressed(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])

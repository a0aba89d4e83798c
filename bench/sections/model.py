"""The shipped model: size and latency of the INT8 model against the float TFLite model of the same student."""

from __future__ import annotations

import json
import operator
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import stats
import tensorflow as tf
import tf_keras as keras

from mobiletag.export.tflite import convert_int8
from mobiletag.models.student import build_student
from mobiletag.quantization.qat import quantize
from sections import BENCH, BLOCKS, PAUSE, ROUNDS, Blocked


def bench_model(image_size: int, work: Path, processes: int = 3, rounds: int = ROUNDS, images: int = 30) -> Blocked:
    """Size and latency of the INT8 model against the float TFLite model of the same student.

    Latency with 1 and 2 threads, in ``processes`` fresh processes per block (bench/latency.py:
    LiteRT without TensorFlow, as an app), each ``rounds`` alternated rounds (INT8, float, INT8,
    float ..., a pause before each sample), each sample the median of ``images`` single-image
    runs; one ratio per round. Processes, because latency moves by a few percent from one process
    to the next while staying steady within one (see bench/latency.py); many short rounds, because
    on this 2-vCPU VM 2-thread latency also switches between regimes lasting seconds (float: 7.8
    or 9.8 ms, even in one interpreter on an idle machine).
    """
    keras.utils.set_random_seed(0)
    student = build_student(6, image_size)
    qat_model = quantize(student)
    rng = np.random.default_rng(0)
    representative = rng.uniform(0, 255, (32, image_size, image_size, 3)).astype(np.float32)
    int8 = convert_int8(qat_model, representative)
    converter = tf.lite.TFLiteConverter.from_keras_model(student)
    float_model = converter.convert()
    paths = {"int8": work / "model_int8.tflite", "float": work / "model_float.tflite"}
    paths["int8"].write_bytes(int8)
    paths["float"].write_bytes(float_model)
    out: dict = {
        "image_size": image_size,
        "method": (
            f"{BLOCKS} blocks x {processes} fresh processes (bench/latency.py, LiteRT without TensorFlow) x "
            f"{rounds} alternated rounds per thread count, {PAUSE} s pause before each sample; a sample = median "
            f"of {images} single-image runs"
        ),
        "int8_bytes": len(int8),
        "float_bytes": len(float_model),
        "size_int8_vs_float": stats.summarize([len(int8) / len(float_model)], "<= 0.30", exact=True),
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    child = [sys.executable, str(BENCH / "latency.py"), str(paths["int8"]), str(paths["float"])]
    child += ["--rounds", str(rounds), "--images", str(images), "--pause", str(PAUSE)]
    ms: dict[str, dict[str, list[float]]] = {threads: {"int8": [], "float": []} for threads in ("1", "2")}
    for block in range(BLOCKS):
        for _ in range(processes):
            result = subprocess.run(child, capture_output=True, text=True, env=env)
            if result.returncode != 0:
                raise SystemExit(f"bench/latency.py failed:\n{result.stderr[-3000:]}")
            for threads, by_model in json.loads(result.stdout.splitlines()[-1]).items():
                stats.extend(ms[threads], by_model)
        if block < BLOCKS - 1:
            yield
    for threads, by_model in ms.items():
        label = "1_thread" if threads == "1" else f"{threads}_threads"
        for name, values in by_model.items():
            out[f"{name}_ms_{label}"] = stats.summarize(values)
        out[f"latency_int8_vs_float_{label}"] = stats.summarize(
            stats.per_round(operator.truediv, by_model["int8"], by_model["float"]), "<= 0.55"
        )
    return out

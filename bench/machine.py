"""The machine a benchmark ran on: CPU model, the instruction sets INT8 kernels use, library versions."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# CPU features the INT8 (and float) kernels of XNNPACK / TensorFlow can use, as /proc/cpuinfo names them
CPU_FEATURES = (
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "avxvnni",
    "avx_vnni_int8",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "asimdhp",
    "i8mm",
    "bf16",
    "sve",
    "sve2",
)


def cpu() -> dict:
    """CPU model and the instruction sets INT8 kernels use: from /proc/cpuinfo on Linux, else what
    Python's platform module (and sysctl on macOS) tells."""
    model, flags = "", None
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ("model name", "Hardware", "cpu model", "Model") and not model:
            model = value
        elif key in ("flags", "Features") and flags is None:
            flags = set(value.split())
    if not model and sys.platform == "darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            model = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            ).stdout.strip()
    available: int | None
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count()
    return {
        "cpu_model": model or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "cores_available": available,
        "cpu_features": sorted(f for f in CPU_FEATURES if f in flags) if flags is not None else "unknown",
    }


def version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed(package)
    except PackageNotFoundError:
        return None


def machine() -> dict:
    """The CPU (:func:`cpu`), platform, GPUs, and the versions of Python and the libraries measured."""
    import tensorflow as tf

    return {
        **cpu(),
        "architecture": platform.machine(),
        "platform": platform.platform(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "tf_keras": version("tf_keras"),
        "litert": version("ai-edge-litert"),
        "tfmot": version("tensorflow-model-optimization"),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }

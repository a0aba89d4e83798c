"""The whole run (`mobiletag train` through kfp.local), its run-to-run spread with
``reproducible: false``, and what a new process and its imports cost a stage."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import demo
import stats
import yaml

from sections import REPO


def bench_run(data_dir: Path, work: Path) -> dict:
    """`mobiletag train` (kfp.local) on the sample data with configs/fast.yaml."""
    exe = Path(sys.executable).parent / "mobiletag"
    start = time.perf_counter()
    result = subprocess.run(
        [
            str(exe),
            "train",
            "--data-dir",
            str(data_dir),
            "--out-dir",
            str(work / "out"),
            "--config",
            str(REPO / "configs" / "fast.yaml"),
            "--work-dir",
            str(work / "kfp"),
            "--log-file",
            str(work / "train.log"),
        ],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"mobiletag train failed:\n{result.stderr[-3000:]}")
    # the console shows stages and epochs only; kfp.local's timestamped task lines are in the log file
    task_seconds = demo.task_seconds((work / "train.log").read_text(encoding="utf-8", errors="replace"))
    compute = {}
    for metrics_file in (work / "kfp").rglob("executor_output.json"):
        data = json.loads(metrics_file.read_text())
        for artifact in data.get("artifacts", {}).values():
            for a in artifact.get("artifacts", []):
                meta = a.get("metadata", {})
                if "seconds" in meta:
                    compute[metrics_file.parent.name] = float(meta["seconds"])
    overhead = {
        task: round(1 - compute[task] / total, 3)
        for task, total in task_seconds.items()
        if task in compute and total > 0
    }
    metrics = json.loads((work / "out" / "metrics.json").read_text())
    block = metrics.get("distillation") or {}
    return {
        "wall_seconds": round(wall, 1),
        "console_lines": len(result.stdout.splitlines()) + len(result.stderr.splitlines()),
        "quality": {
            "test_map_macro_int8": metrics["test"]["map_macro"],
            "test_map_macro_float_student": metrics["compare"]["student"]["map_macro"],
            "test_map_macro_teacher": metrics["compare"]["teacher"]["map_macro"],
            "test_f1_micro_int8": metrics["test"]["f1_micro"],
            "shipped_student": block.get("shipped"),
            "distilled_minus_baseline_test_map": block.get("test_difference"),
            "students": block.get("students"),
        },
        "task_seconds": task_seconds,
        "stage_compute_seconds": compute,
        "overhead_share": overhead,
        "outside_compute_share": round(1 - sum(compute.values()) / wall, 3) if compute else None,
    }


def bench_spread(data_dir: Path, work: Path, runs: int = 3) -> dict:
    """Run-to-run spread of test mAP with ``reproducible: false``: the demo's training (configs/fast.yaml,
    in-process runner, no baseline student) ``runs`` times on the same data and seed. What a change
    must beat to be told from chance (gate.min_improvement)."""
    exe = Path(sys.executable).parent / "mobiletag"
    config = work / "spread.yaml"
    fast = yaml.safe_load((REPO / "configs" / "fast.yaml").read_text())
    config.write_text(yaml.safe_dump({**fast, "reproducible": False}))
    figures: dict[str, list[float]] = {"test_map_macro_int8": [], "test_map_macro_float_student": []}
    seconds = []
    for i in range(runs):
        out = work / f"spread-{i}"
        start = time.perf_counter()
        result = subprocess.run(
            [
                *(str(exe), "train", "--runner", "inprocess", "--no-baseline-student", "--data-dir", str(data_dir)),
                *("--config", str(config), "--out-dir", str(out), "--log-file", str(work / f"spread-{i}.log")),
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise SystemExit(f"mobiletag train failed:\n{result.stderr[-3000:]}")
        seconds.append(round(time.perf_counter() - start, 1))
        metrics = json.loads((out / "metrics.json").read_text())
        figures["test_map_macro_int8"].append(metrics["test"]["map_macro"])
        figures["test_map_macro_float_student"].append(metrics["compare"]["student"]["map_macro"])
    return {
        "method": f"{runs} runs of `mobiletag train --runner inprocess --no-baseline-student`, configs/fast.yaml "
        "with reproducible: false, the same data and seed",
        "seconds": seconds,
        **{name: stats.summarize(values, digits=4) for name, values in figures.items()},
    }


def bench_process_start(repeats: int = 3) -> dict:
    """What a stage pays before its own code runs: a fresh Python process and its imports.

    kfp.local (like a cluster) starts every task as a new process; these figures explain the
    overhead share of short stages.
    """
    imports = {
        "tensorflow_tf_keras": "import tensorflow, tf_keras",
        "stage_evaluate": "import mobiletag.stages.evaluate",
    }
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    seconds = stats.alternate(
        {
            name: functools.partial(
                subprocess.run, [sys.executable, "-c", code], check=True, env=env, capture_output=True
            )
            for name, code in imports.items()
        },
        repeats,
        warm_up=False,
    )
    return {f"{name}_s": stats.summarize(values, digits=2) for name, values in seconds.items()}

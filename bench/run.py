"""`make bench`: the pipeline's speed as ratios of two things measured in the same run.

Writes bench/results.json and prints a table. Small enough to finish in under 10 minutes
on 2 cores: it trains nothing to convergence, it times steps.

    python bench/run.py [--skip-run] [--out bench/results.json]
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf_keras for QAT, before TensorFlow is imported

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from mobiletag.config import load_config
from mobiletag.data.dataset import index_dataset
from mobiletag.data.pipeline import list_shards, make_dataset
from mobiletag.data.sample import make_sample_dataset
from mobiletag.data.tfrecords import build_tfrecords
from mobiletag.export.tflite import TFLiteModel, convert_int8
from mobiletag.models.student import build_student, preprocess
from mobiletag.models.teacher import build_teacher
from mobiletag.quantization.qat import quantize
from mobiletag.training.fit import Trainer

REPO = Path(__file__).resolve().parents[1]


def timed(fn, repeats: int) -> float:
    """Median seconds of fn() over repeats, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def paired(fa, fb, repeats: int) -> tuple[float, float]:
    """Median seconds of fa() and of fb(), called in turn (A B A B ...) after a warm-up of each,
    so that a slow spell of a shared machine hits both sides of a ratio alike."""
    fa()
    fb()
    a, b = [], []
    for _ in range(repeats):
        for fn, times in ((fa, a), (fb, b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return float(np.median(a)), float(np.median(b))


def rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("inf")


# === 1. Input pipeline ===


def bench_input(data_dir: Path, tfrecords: Path, config, sizes: dict[str, int], batch: int) -> dict:
    out: dict = {}
    # the naive way: open the original files with PIL in a Python loop, RGB, resize, to float
    from PIL import Image

    files = sorted((data_dir / "images").rglob("*.*"))[:300]

    def pil_all():
        for f in files:
            with Image.open(f) as im:
                np.asarray(im.convert("RGB").resize((sizes["student"],) * 2, Image.BILINEAR), np.float32)

    pil = rate(len(files), timed(pil_all, 2))
    out["pil_files_images_per_s"] = round(pil, 1)
    # raw decode of the same JPEG bytes in a tight loop (the floor of what tf.data can do)
    records = [r.numpy() for r in tf.data.TFRecordDataset(list_shards(tfrecords, "train"))]
    feature = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
    jpegs = [tf.io.parse_single_example(r, feature)["image/encoded"] for r in records]
    decode = tf.function(lambda b: tf.io.decode_jpeg(b, channels=3))
    n = len(jpegs)

    def decode_all():
        for j in jpegs:
            decode(j)

    raw = rate(n, timed(decode_all, 3))
    out["raw_decode_images_per_s_1_thread"] = round(raw, 1)
    for name, size_list in (
        ("student", [sizes["student"]]),
        ("teacher", [sizes["teacher"]]),
        ("distill_two_views", [sizes["teacher"], sizes["student"]]),
    ):
        ds = make_dataset(
            tfrecords,
            "train",
            image_sizes=size_list,
            batch_size=batch,
            training=True,
            repeat=True,
            num_classes=6,
            config=config,
        )
        it = iter(ds)
        for _ in range(3):
            next(it)
        steps = 30
        start = time.perf_counter()
        for _ in range(steps):
            next(it)
        seconds = time.perf_counter() - start
        out[f"pipeline_{name}_images_per_s"] = round(rate(steps * batch, seconds), 1)
    out["pipeline_student_vs_raw_decode"] = round(out["pipeline_student_images_per_s"] / raw, 3)
    out["pipeline_student_vs_pil_files"] = round(out["pipeline_student_images_per_s"] / pil, 3)
    return out


# === 2. Training steps ===


def _step_fn(trainer: Trainer):
    @tf.function
    def step(x, y):
        return trainer.train_step((x, y))

    return step


def bench_training(tfrecords: Path, config, sizes: dict[str, int], batch: int) -> dict:
    out: dict = {}
    keras.utils.set_random_seed(0)
    s, t = sizes["student"], sizes["teacher"]
    rng = np.random.default_rng(0)
    xs = tf.constant(rng.uniform(0, 255, (batch, s, s, 3)).astype(np.float32))
    xt = tf.constant(rng.uniform(0, 255, (batch, t, t, 3)).astype(np.float32))
    y = tf.constant((rng.uniform(size=(batch, 6)) > 0.6).astype(np.float32))
    steps = 5

    student = build_student(6, s)
    plain = Trainer(student, preprocess=preprocess)
    plain.compile(optimizer=keras.optimizers.Adam(1e-4))
    step = _step_fn(plain)

    # the same step fed by the real input pipeline
    ds = make_dataset(
        tfrecords, "train", image_sizes=[s], batch_size=batch, training=True, repeat=True, num_classes=6, config=config
    )
    it = iter(ds)

    def fed():
        for _ in range(steps):
            x, labels = next(it)
            step(x, labels)

    in_memory, fed_s = paired(lambda: [step(xs, y) for _ in range(steps)], fed, 3)
    in_memory, fed_s = in_memory / steps, fed_s / steps
    out["student_step_ms_in_memory"] = round(in_memory * 1000, 1)
    out["student_step_ms_fed_by_pipeline"] = round(fed_s * 1000, 1)
    out["pipeline_fed_vs_in_memory_step_rate"] = round(in_memory / fed_s, 3)

    teacher = build_teacher(6, t, weights="none")
    teacher_only = Trainer(teacher)
    teacher_only.compile(optimizer=keras.optimizers.Adam(1e-4))
    t_step = _step_fn(teacher_only)
    teacher_fwd_bwd = timed(lambda: [t_step(xt, y) for _ in range(steps)], 2) / steps
    teacher_fwd = tf.function(lambda x: teacher(x, training=False))
    teacher_forward = timed(lambda: [teacher_fwd(xt) for _ in range(steps)], 2) / steps

    distill = Trainer(student, teacher, alpha=0.7, temperature=2.0, preprocess=preprocess)
    distill.compile(optimizer=keras.optimizers.Adam(1e-4))

    @tf.function
    def d_step(a, b, labels):
        return distill.train_step(((a, b), labels))

    distill_s = timed(lambda: [d_step(xt, xs, y) for _ in range(steps)], 2) / steps
    out["distill_step_ms"] = round(distill_s * 1000, 1)
    out["teacher_forward_ms"] = round(teacher_forward * 1000, 1)
    out["teacher_forward_backward_ms"] = round(teacher_fwd_bwd * 1000, 1)
    out["distill_vs_student_step_plus_teacher_forward"] = round(distill_s / (in_memory + teacher_forward), 3)
    out["distill_vs_sum_of_both_forward_backward"] = round(distill_s / (in_memory + teacher_fwd_bwd), 3)

    qat_model = quantize(build_student(6, s))
    qat = Trainer(qat_model, preprocess=preprocess)
    qat.compile(optimizer=keras.optimizers.Adam(1e-5))
    q_step = _step_fn(qat)
    float_s, qat_s = paired(
        lambda: [step(xs, y) for _ in range(steps)], lambda: [q_step(xs, y) for _ in range(steps)], 3
    )
    float_s, qat_s = float_s / steps, qat_s / steps
    out["float_step_ms_beside_qat"] = round(float_s * 1000, 1)
    out["qat_step_ms"] = round(qat_s * 1000, 1)
    out["qat_vs_float_student_step"] = round(qat_s / float_s, 3)
    return out


# === 3. The shipped model ===


def bench_model(image_size: int) -> dict:
    keras.utils.set_random_seed(0)
    student = build_student(6, image_size)
    qat_model = quantize(student)
    rng = np.random.default_rng(0)
    representative = rng.uniform(0, 255, (32, image_size, image_size, 3)).astype(np.float32)
    int8 = convert_int8(qat_model, representative)
    converter = tf.lite.TFLiteConverter.from_keras_model(student)
    float_model = converter.convert()
    out = {"image_size": image_size, "int8_bytes": len(int8), "float_bytes": len(float_model)}
    for threads in (1, 2):
        # INT8 and float in turn, three rounds of 50 images each: a slow spell hits both
        runners = {"int8": TFLiteModel(int8, threads), "float": TFLiteModel(float_model, threads)}
        ms: dict[str, list[float]] = {"int8": [], "float": []}
        for _ in range(3):
            for name, runner in runners.items():
                ms[name].append(runner.latency_ms(50))
        for name, values in ms.items():
            out[f"{name}_ms_{threads}_thread"] = round(float(np.median(values)), 3)
    out["size_int8_vs_float"] = round(len(int8) / len(float_model), 3)
    out["latency_int8_vs_float_1_thread"] = round(out["int8_ms_1_thread"] / out["float_ms_1_thread"], 3)
    out["latency_int8_vs_float_2_threads"] = round(out["int8_ms_2_thread"] / out["float_ms_2_thread"], 3)
    return out


# === 4. The whole run ===


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
        ],
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"mobiletag train failed:\n{result.stderr[-3000:]}")
    log = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)  # kfp.local colours task names
    task_seconds: dict[str, float] = {}
    started: dict[str, float] = {}
    for h, m, sec, frac, event, task in re.findall(
        r"^(\d\d):(\d\d):(\d\d)\.(\d+) - \w+ - (Executing task|Task) '([a-z-]+)'", log, flags=re.MULTILINE
    ):
        t = int(h) * 3600 + int(m) * 60 + int(sec) + float(f"0.{frac}")
        if event == "Executing task":
            started[task] = t
        elif task in started:
            task_seconds[task] = round(t - started.pop(task), 1)
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
    return {
        "wall_seconds": round(wall, 1),
        "task_seconds": task_seconds,
        "stage_compute_seconds": compute,
        "overhead_share": overhead,
        "outside_compute_share": round(1 - sum(compute.values()) / wall, 3) if compute else None,
    }


def bench_process_start() -> dict:
    """What a stage pays before its own code runs: a fresh Python process and its imports.

    kfp.local (like a cluster) starts every task as a new process; these figures explain the
    overhead share of short stages.
    """
    imports = {
        "tensorflow_tf_keras": "import tensorflow, tf_keras",
        "stage_evaluate": "import mobiletag.stages.evaluate",
    }
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = {}
    for name, code in imports.items():
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True)
            seconds.append(time.perf_counter() - start)
        out[f"{name}_s"] = round(sorted(seconds)[1], 2)
    return out


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "platform": platform.platform(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(REPO / "bench" / "results.json"))
    parser.add_argument("--skip-run", action="store_true", help="skip the whole-run measurement")
    args = parser.parse_args()
    config = load_config(REPO / "configs" / "fast.yaml")
    sizes = {"teacher": config.teacher.image_size, "student": config.student.image_size}
    batch = config.student.batch_size
    results: dict = {"machine": machine(), "sizes": sizes, "batch": batch}
    with tempfile.TemporaryDirectory(prefix="mobiletag-bench-") as tmp:
        work = Path(tmp)
        make_sample_dataset(work / "data", num_images=1000, seed=0)
        build_tfrecords(index_dataset(work / "data", config), config, work / "tfrecords")
        sections = [
            ("input", "input pipeline", lambda: bench_input(work / "data", work / "tfrecords", config, sizes, batch)),
            ("training", "training steps", lambda: bench_training(work / "tfrecords", config, sizes, batch)),
            ("model", "model", lambda: bench_model(240)),
        ]
        if not args.skip_run:
            sections.append(
                ("run", "whole run (mobiletag train, configs/fast.yaml)", lambda: bench_run(work / "data", work))
            )
            sections.append(("process_start", "new process + imports", bench_process_start))
        section_seconds = {}
        for key, title, measure in sections:
            print(f"{title} ...", flush=True)
            start = time.perf_counter()
            results[key] = measure()
            section_seconds[key] = round(time.perf_counter() - start, 1)
        results["bench_seconds"] = section_seconds
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


def table(r: dict) -> str:
    i, t, m = r["input"], r["training"], r["model"]
    rows = [
        (
            "input: train pipeline (student size) / raw JPEG decode, img/s",
            f"{i['pipeline_student_images_per_s']} / {i['raw_decode_images_per_s_1_thread']}",
            i["pipeline_student_vs_raw_decode"],
            ">= 1 (parallel)",
        ),
        (
            "input: train pipeline (student size) / PIL decode+resize of the files, img/s",
            f"{i['pipeline_student_images_per_s']} / {i['pil_files_images_per_s']}",
            i["pipeline_student_vs_pil_files"],
            "> 1",
        ),
        (
            "student step rate: fed by pipeline / in memory",
            f"{t['student_step_ms_fed_by_pipeline']} / {t['student_step_ms_in_memory']} ms",
            t["pipeline_fed_vs_in_memory_step_rate"],
            ">= 0.90",
        ),
        (
            "distill step / (student step + teacher fwd+bwd)",
            f"{t['distill_step_ms']} / {t['student_step_ms_in_memory']} + {t['teacher_forward_backward_ms']} ms",
            t["distill_vs_sum_of_both_forward_backward"],
            "<= 1.10",
        ),
        (
            "QAT step / float student step",
            f"{t['qat_step_ms']} / {t['float_step_ms_beside_qat']} ms",
            t["qat_vs_float_student_step"],
            "<= 1.40",
        ),
        (
            "INT8 / float TFLite size (Lite1 @240)",
            f"{m['int8_bytes']} / {m['float_bytes']} B",
            m["size_int8_vs_float"],
            "<= 0.30",
        ),
        (
            "INT8 / float latency, 1 thread",
            f"{m['int8_ms_1_thread']} / {m['float_ms_1_thread']} ms",
            m["latency_int8_vs_float_1_thread"],
            "<= 0.55",
        ),
        (
            "INT8 / float latency, 2 threads",
            f"{m['int8_ms_2_thread']} / {m['float_ms_2_thread']} ms",
            m["latency_int8_vs_float_2_threads"],
            "<= 0.55",
        ),
    ]
    if "run" in r:
        run = r["run"]
        rows.append(("whole demo run (`mobiletag train`, kfp.local), s", f"{run['wall_seconds']}", "", "< 900"))
        for task, total in run["task_seconds"].items():
            share = run["overhead_share"].get(task)
            compute = run["stage_compute_seconds"].get(task)
            figures = f"{total} s, {compute} s in the stage" if compute is not None else f"{total} s"
            rows.append((f"stage {task}: overhead share", figures, "" if share is None else share, "<= 0.20"))
        start = r.get("process_start")
        if start:
            rows.append(
                (
                    "new process + imports (median of 3), s",
                    ", ".join(f"{k[:-2]} {v}" for k, v in start.items()),
                    "",
                    "",
                )
            )
    if "bench_seconds" in r:
        spent = r["bench_seconds"]
        rows.append(
            (
                "this benchmark, s",
                f"{round(sum(spent.values()), 1)} ({', '.join(f'{k} {v}' for k, v in spent.items())})",
                "",
                "< 600",
            )
        )
    machine_line = ", ".join(f"{k} {v}" for k, v in r["machine"].items())
    lines = [f"{machine_line}", "", "| measure | figures | ratio | goal |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""`make bench-scale`: seconds and peak resident memory of prepare_dataset, optimize_thresholds
and evaluate at growing dataset sizes, with the growth ratios against the goals (memory at the
largest N at most 1.3x that at the smallest; seconds at most 1.2x linear).

    python bench/scale.py [--sizes 1000,4000,16000] [--out bench/scale.json]

Datasets: small generated JPEGs (64x48), 20% train / 40% val / 40% test, so every split that
a stage reads grows with N (prepare_dataset reads all three, optimize_thresholds val, evaluate
test). The models are built once with random weights at small sizes (student and exported
INT8 model EfficientNet-Lite0 at 32 px; the "teacher" checkpoint is a Lite0 at 40 px, so
evaluation decodes each test image at two sizes as it does with the real teacher, without
EfficientNet-B3's cost); two such students, distilled and baseline (different seeds), with
select-student's choice, so that evaluate scores what it scores in the pipeline: the teacher and
both float students on test, both students on validation. evaluate's figures include building
report.html (its seconds and bytes are listed apart). Each stage runs in a fresh process: its peak RSS is that process's
own (``os.wait4``), its seconds are the process's wall time (imports included) and the
``run`` call's.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf_keras for QAT, before TensorFlow is imported

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEACHER_SIZE, STUDENT_SIZE = 40, 32
SOURCE_SIZE = (64, 48)
SPLIT_OF = ("train", "val", "val", "test", "test")  # by row number modulo 5
STAGES = ("prepare_dataset", "optimize_thresholds", "evaluate")
GOALS = {"rss": 1.3, "seconds_per_image": 1.2}
OVERRIDES = {
    "teacher": {"image_size": TEACHER_SIZE},
    "student": {"image_size": STUDENT_SIZE, "architecture": "efficientnet_lite0"},
}


def load_bench_config():
    from mobiletag.config import load_config

    return load_config(REPO / "configs" / "default.yaml", REPO / "configs" / "fast.yaml", OVERRIDES)


# === Data and models ===


def make_images(images_dir: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` small JPEGs (a smooth colour field with noise: a few hundred microseconds each)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images_dir.mkdir(parents=True, exist_ok=True)
    width, height = SOURCE_SIZE
    names = []
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8), "RGB")
        field = np.asarray(coarse.resize((width, height), Image.Resampling.BILINEAR), dtype=np.int16)
        noise = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
        name = f"img_{i:05d}.jpg"
        Image.fromarray(np.clip(field + noise, 0, 255).astype(np.uint8), "RGB").save(images_dir / name, quality=85)
        names.append(name)
    return names


def write_dataset(root: Path, images_dir: Path, names: list[str], seed: int = 1) -> None:
    """A dataset folder over the first len(names) shared images (images/ is a link to them)."""
    from mobiletag.data.sample import CLASSES

    root.mkdir(parents=True, exist_ok=True)
    (root / "images").symlink_to(images_dir, target_is_directory=True)
    rng = np.random.default_rng(seed)
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    for i, name in enumerate(names):
        picked = {CLASSES[int(c)] for c in rng.choice(len(CLASSES), size=int(rng.integers(0, 3)), replace=False)}
        if i % 5 == 0:
            picked.add(CLASSES[(i // 5) % len(CLASSES)])  # every class has training positives
        rows[SPLIT_OF[i % 5]].append((name, "|".join(sorted(picked))))
    for split, split_rows in rows.items():
        with open(root / f"{split}_labels.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["filepath", "labels"])
            writer.writerows(split_rows)


MODEL_DIRS = ("teacher", "distilled", "baseline", "student", "tflite")


def make_models(work: Path, num_classes: int) -> dict[str, Path]:
    """Teacher, distilled and baseline student checkpoints, select-student's folder and the INT8
    export of the shipped student (random weights), in the stages' layout."""
    import tf_keras as keras

    from mobiletag.export.litert import MODEL_FILE
    from mobiletag.export.tflite import convert_int8
    from mobiletag.models.student import build_student
    from mobiletag.stages import select_student
    from mobiletag.stages.common import STUDENT_CHECKPOINT, STUDENT_METRICS, TEACHER_CHECKPOINT, write_json

    keras.utils.set_random_seed(0)
    dirs = {name: work / name for name in MODEL_DIRS}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    build_student(num_classes, TEACHER_SIZE, "efficientnet_lite0").save(dirs["teacher"] / TEACHER_CHECKPOINT)
    for name, val_map in (("baseline", 0.5), ("distilled", 0.6)):  # the distilled one ships
        build_student(num_classes, STUDENT_SIZE, "efficientnet_lite0").save(dirs[name] / STUDENT_CHECKPOINT)
        write_json(dirs[name] / STUDENT_METRICS, {"metrics": {"val_map": val_map}, "alpha": 0.5, "history": {}})
    select_student.run(dirs["distilled"], dirs["baseline"], dirs["student"])
    student = keras.models.load_model(dirs["student"] / STUDENT_CHECKPOINT, compile=False)
    representative = np.random.default_rng(0).uniform(0, 255, (32, STUDENT_SIZE, STUDENT_SIZE, 3)).astype(np.float32)
    (dirs["tflite"] / MODEL_FILE).write_bytes(convert_int8(student, representative))
    return dirs


# === One stage in a child process ===


def child(stage: str, paths: dict[str, str]) -> None:
    """Run one stage (in this fresh process) and print its own seconds as JSON on the last line."""
    if stage == "models":
        from mobiletag.data.sample import CLASSES

        make_models(Path(paths["models"]), len(CLASSES))
        print(json.dumps({}))
        return
    config = load_bench_config()
    started = time.perf_counter()
    if stage == "prepare_dataset":
        from mobiletag.stages import prepare_dataset

        prepare_dataset.run(config, paths["data"], paths["dataset"])
    elif stage == "optimize_thresholds":
        from mobiletag.stages import optimize_thresholds

        optimize_thresholds.run(config, paths["dataset"], paths["tflite"], paths["thresholds"])
    else:
        from mobiletag.stages import evaluate

        result = evaluate.run(
            paths["dataset"],
            paths["teacher"],
            paths["student"],
            paths["tflite"],
            paths["thresholds"],
            paths["evaluate"],
            distilled_dir=paths["distilled"],
            baseline_dir=paths["baseline"],
        )
        html = result.files.get("report_html")
        if html:
            own = {"report_seconds": result.details["report_html_seconds"], "report_bytes": Path(html).stat().st_size}
            print(json.dumps({"run_seconds": round(time.perf_counter() - started, 2), **own}))
            return
    print(json.dumps({"run_seconds": round(time.perf_counter() - started, 2)}))


def measure(stage: str, paths: dict[str, str]) -> dict:
    """Wall seconds, the stage's own seconds and the peak RSS (MB) of one stage in a fresh process.

    Linux counts a forked child's memory high-water mark from the parent's resident size at
    the fork (kept across exec): this process must stay small (numpy and PIL only, no
    TensorFlow), so that the figure is the stage's own.
    """
    started = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as stderr:
        # not communicate(): it reaps the child, and os.wait4 must, to read the child's own rusage
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", stage, "--paths", json.dumps(paths)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        assert proc.stdout is not None
        stdout = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stderr.seek(0)
        errors = stderr.read()
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{stage} failed (exit {proc.returncode}):\n{errors[-4000:]}")
    own = json.loads(stdout.strip().splitlines()[-1])
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        **own,  # run_seconds; evaluate's report_seconds and report_bytes
    }


# === Report ===


def growth(results: dict[str, dict[str, dict]], sizes: list[int]) -> dict[str, dict]:
    """Largest-N / smallest-N ratios per stage, with the goals and whether they are met."""
    small, large = str(sizes[0]), str(sizes[-1])
    scale = sizes[-1] / sizes[0]
    out = {}
    for stage in STAGES:
        a, b = results[small][stage], results[large][stage]
        rss = b["peak_rss_mb"] / a["peak_rss_mb"]
        wall, run = b["seconds"] / a["seconds"], b["run_seconds"] / max(a["run_seconds"], 1e-9)
        out[stage] = {
            "rss_ratio": round(rss, 3),
            "rss_goal": GOALS["rss"],
            "seconds_ratio": round(wall, 2),
            "run_seconds_ratio": round(run, 2),
            "seconds_goal": round(scale * GOALS["seconds_per_image"], 2),
            "met": bool(rss <= GOALS["rss"] and wall <= scale * GOALS["seconds_per_image"]),
        }
    return out


def table(results: dict[str, dict[str, dict]], ratios: dict[str, dict], sizes: list[int]) -> str:
    """Seconds (process wall, the run call's in brackets) and peak RSS per stage and N, then the ratios."""
    lines = [
        f"{'stage':<20}" + "".join(f"{f'N={n} s (run) / MB':>26}" for n in sizes) + "   RSS x   s x (run x)   goal"
    ]
    for stage in STAGES:
        cells = ""
        for n in sizes:
            r = results[str(n)][stage]
            cell = f"{r['seconds']:.1f} ({r['run_seconds']:.1f}) / {r['peak_rss_mb']:.0f}"
            cells += f"{cell:>26}"
        g = ratios[stage]
        verdict = f"{'met' if g['met'] else 'MISSED'} (RSS x <= {g['rss_goal']}, s x <= {g['seconds_goal']})"
        ratio_text = f"{g['seconds_ratio']:.2f} ({g['run_seconds_ratio']:.2f})"
        lines.append(f"{stage:<20}{cells}{g['rss_ratio']:>8.2f}{ratio_text:>14}   {verdict}")
    built = [(n, results[str(n)]["evaluate"]) for n in sizes if "report_seconds" in results[str(n)]["evaluate"]]
    if built:
        lines.append(
            "evaluate's report.html (in its run seconds): "
            + ", ".join(f"N={n} {r['report_seconds']:.1f} s, {r['report_bytes'] / 1e3:.0f} kB" for n, r in built)
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,4000,16000", help="dataset sizes N, comma-separated, ascending")
    parser.add_argument("--out", default=str(REPO / "bench" / "scale.json"))
    parser.add_argument(
        "--work", help="keep the generated datasets, models and outputs in this folder (default: a temporary one)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, json.loads(args.paths))
        return
    sizes = sorted(int(n) for n in args.sizes.split(","))
    started = time.perf_counter()
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="mobiletag-scale-") as tmp:
        work = Path(args.work or tmp)
        names = make_images(work / "images", sizes[-1])
        generated = time.perf_counter() - started
        models = {name: work / "models" / name for name in MODEL_DIRS}
        measure("models", {"models": str(work / "models")})  # in a child: this process stays small (see measure)
        prepared = time.perf_counter() - started
        print(f"generated {sizes[-1]} images in {generated:.1f} s; models in {prepared - generated:.1f} s", flush=True)
        for n in sizes:
            root = work / f"n{n}"
            write_dataset(root / "data", work / "images", names[:n])
            paths = {
                "data": str(root / "data"),
                "dataset": str(root / "dataset"),
                "thresholds": str(root / "thresholds"),
                "evaluate": str(root / "evaluate"),
                **{name: str(folder) for name, folder in models.items()},
            }
            results[str(n)] = {}
            for stage in STAGES:
                results[str(n)][stage] = measure(stage, paths)
                print(f"N={n} {stage}: {results[str(n)][stage]}", flush=True)
    ratios = growth(results, sizes)
    report = {
        "sizes": sizes,
        "splits": "20% train, 40% val, 40% test",
        "image": f"{SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} JPEG; student/INT8 {STUDENT_SIZE} px, teacher {TEACHER_SIZE} px",
        "results": results,
        "growth": ratios,
        "total_seconds": round(time.perf_counter() - started, 1),
        "cores": os.cpu_count(),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    results = Path(args.out).with_name("results.json")
    if results.is_file():  # bench/README.md shows this file's table too: keep it current
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import readme

        print("wrote", readme.write(results))
    print(table(results, ratios, sizes))
    print(f"total {report['total_seconds']} s; wrote {args.out}")


if __name__ == "__main__":
    main()

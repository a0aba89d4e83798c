"""`make bench-scale`: seconds and peak resident memory of prepare_dataset, optimize_thresholds
and evaluate at growing dataset sizes, with the growth ratios against the goals (memory at the
largest N at most 1.3x that at the smallest; seconds at most 1.2x linear); evaluate at the largest
N repeated, against the goal of 2 minutes, alternated with evaluate as it was at ``--before``
(every test and validation image through every float model); evaluate with its float models
traced (``keras_scorer``) and eager (``eager_scorer``), alternated, with the largest difference of
their probabilities; where evaluate's time goes.

    python bench/scale.py [--sizes 1000,4000,16000] [--compare-size 1000] [--rounds 3] [--out bench/scale.json]
    python bench/scale.py --evaluate-only [--sizes 16000] [--rounds 3] [--work DIR]

``--evaluate-only``: evaluate before and after at the largest N only, alternated (the dataset and
thresholds are prepared first, or reused from ``--work``); it replaces the before/after block of
``--out`` and keeps the file's other figures.

N is the number of test images. Datasets: generated 500x375 JPEGs (hard links to a pool of
distinct ones; decoding is paid per file all the same), N test, N validation (evaluate scores
both float students on a sample of it for the distillation block, optimize_thresholds the INT8
model on all of it) and N/2 training images (only prepare_dataset reads them). The models are the
pipeline's at configs/fast.yaml's sizes, random weights: teacher EfficientNet-B3 at 80 px,
distilled and baseline students EfficientNet-Lite1 at 64 px (different seeds) with select-student's
choice, and the INT8 export of the shipped student's (untrained) QAT model, so that evaluate scores
what it scores in the pipeline: the INT8 model on every test image; the teacher and both float
students on K = ``thresholds.compare_images`` sampled test images (every one when N <= K), both
students on K validation images. evaluate's figures include building report.html (its seconds and
bytes are listed apart). Each stage runs in a fresh process: its peak RSS is that process's own
(``os.wait4``), its seconds are the process's wall time (imports included) and the ``run`` call's.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf_keras for QAT, before TensorFlow is imported

import argparse
import csv
import inspect
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mobiletag.artifacts import ExportedModel, StudentModel, TeacherModel

REPO = Path(__file__).resolve().parents[1]
TEACHER_SIZE, STUDENT_SIZE = 80, 64  # configs/fast.yaml
SOURCE_SIZE = (500, 375)
POOL = 400  # distinct JPEGs; the dataset's files are hard links to them
STAGES = ("prepare_dataset", "optimize_thresholds", "evaluate")
GOALS = {"rss": 1.3, "seconds_per_image": 1.2, "evaluate_seconds": 120.0}
PROFILE_BATCHES = 4  # batches of EVAL_BATCH per model and path in the profile
# evaluate "before": the last commit whose evaluate scores every test and validation image with every float model
BEFORE = "8f1486d3e38e2042f93cec91c965679bb1f04773"


def load_bench_config():
    from mobiletag.config import load_config

    return load_config(REPO / "configs" / "default.yaml", REPO / "configs" / "fast.yaml")


# === Data and models ===


def split_sizes(n: int) -> dict[str, int]:
    """Images per split for N test images."""
    return {"train": n // 2, "val": n, "test": n}


def make_images(images_dir: Path, count: int, seed: int = 0) -> list[str]:
    """``count`` JPEG names in ``images_dir``: POOL distinct images (a smooth colour field with
    noise), the rest hard links to them."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images_dir.mkdir(parents=True, exist_ok=True)
    width, height = SOURCE_SIZE
    names = []
    for i in range(count):
        name = f"img_{i:05d}.jpg"
        if i < POOL:
            coarse = Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8), "RGB")
            field = np.asarray(coarse.resize((width, height), Image.Resampling.BILINEAR), dtype=np.int16)
            noise = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)
            image = Image.fromarray(np.clip(field + noise, 0, 255).astype(np.uint8), "RGB")
            image.save(images_dir / name, quality=85)
        else:
            os.link(images_dir / names[i % POOL], images_dir / name)
        names.append(name)
    return names


def write_dataset(root: Path, images_dir: Path, names: list[str], n: int, seed: int = 1) -> None:
    """A dataset folder of ``split_sizes(n)`` over the first shared images (images/ is a link to them)."""
    from mobiletag.data.sample import CLASSES

    root.mkdir(parents=True, exist_ok=True)
    (root / "images").symlink_to(images_dir, target_is_directory=True)
    rng = np.random.default_rng(seed)
    start = 0
    for split, count in split_sizes(n).items():
        rows = []
        for i, name in enumerate(names[start : start + count]):
            picked = {CLASSES[int(c)] for c in rng.choice(len(CLASSES), size=int(rng.integers(0, 3)), replace=False)}
            if split == "train":
                picked.add(CLASSES[i % len(CLASSES)])  # every class has training positives
            rows.append((name, "|".join(sorted(picked))))
        start += count
        with open(root / f"{split}_labels.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["filepath", "labels"])
            writer.writerows(rows)


MODEL_DIRS = ("teacher", "distilled", "baseline", "student", "tflite")


def make_models(work: Path, num_classes: int) -> dict[str, Path]:
    """Teacher, distilled and baseline student checkpoints, select-student's folder and the INT8
    export of the shipped student's QAT model (random weights), in the stages' layout."""
    import tf_keras as keras

    from mobiletag.artifacts import write_json
    from mobiletag.export.tflite import convert_int8
    from mobiletag.models.student import build_student
    from mobiletag.models.teacher import build_teacher
    from mobiletag.quantization.qat import quantize
    from mobiletag.stages import select_student

    keras.utils.set_random_seed(0)
    dirs = {name: work / name for name in MODEL_DIRS}
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    build_teacher(num_classes, TEACHER_SIZE, "none").save(dirs["teacher"] / TeacherModel.CHECKPOINT)
    for name, val_map in (("baseline", 0.5), ("distilled", 0.6)):  # the distilled one ships
        build_student(num_classes, STUDENT_SIZE).save(dirs[name] / StudentModel.CHECKPOINT)
        write_json(dirs[name] / StudentModel.METRICS, {"metrics": {"val_map": val_map}, "alpha": 0.5, "history": {}})
    select_student.run(dirs["distilled"], dirs["baseline"], dirs["student"])
    student = keras.models.load_model(dirs["student"] / StudentModel.CHECKPOINT, compile=False)
    representative = np.random.default_rng(0).uniform(0, 255, (32, STUDENT_SIZE, STUDENT_SIZE, 3)).astype(np.float32)
    (dirs["tflite"] / ExportedModel.MODEL).write_bytes(convert_int8(quantize(student), representative))
    return dirs


# === One stage in a child process ===

FLOAT_SCORES = "bench_float_scores.npz"  # beside evaluate's outputs: every float model's probabilities


def recording(make_scorer, record: dict[str, list[np.ndarray]]):
    """``make_scorer`` (evaluate's keras_scorer or eager_scorer) whose scorers also keep every
    output in ``record``, under the model's creation order and name."""

    def wrapped(model, normalise, *args, **kwargs):
        size, score = make_scorer(model, normalise, *args, **kwargs)
        outputs = record.setdefault(f"{len(record)}_{model.name}", [])

        def scores(pixels: np.ndarray) -> np.ndarray:
            out = score(pixels)
            outputs.append(out)
            return out

        return size, scores

    return wrapped


def run_evaluate(paths: dict[str, str], eager: bool) -> dict:
    """evaluate's run with its float models traced or eager, with the bench's config (when the
    evaluate on the path takes one: ``--before``'s may not); the float models' probabilities
    saved beside its outputs."""
    from mobiletag.stages import evaluate

    record: dict[str, list[np.ndarray]] = {}
    evaluate.keras_scorer = recording(evaluate.eager_scorer if eager else evaluate.keras_scorer, record)
    takes_config = "config" in inspect.signature(evaluate.run).parameters
    started = time.perf_counter()
    result = evaluate.run(
        *([load_bench_config()] if takes_config else []),
        paths["dataset"],
        paths["teacher"],
        paths["student"],
        paths["tflite"],
        paths["thresholds"],
        paths["evaluate"],
        distilled_dir=paths["distilled"],
        baseline_dir=paths["baseline"],
    )
    seconds = round(time.perf_counter() - started, 2)
    np.savez(Path(paths["evaluate"]) / FLOAT_SCORES, **{k: np.concatenate(v) for k, v in record.items()})
    html = Path(result.files["report_html"])
    images = json.loads((Path(paths["evaluate"]) / "metrics.json").read_text()).get("comparison_images")
    return {
        "run_seconds": seconds,
        "report_seconds": result.details["report_html_seconds"],
        "report_bytes": html.stat().st_size,
        "float_test_images": None if images is None else images["test"],
    }


def profile(paths: dict[str, str]) -> dict:
    """Milliseconds per image of each part of evaluate's scoring: decoding the originals (at every
    size, evaluate's decode threads, no model), each float model traced and eager, the INT8 model."""
    import tf_keras as keras

    from mobiletag.export.inference_config import EVAL_BATCH, iter_eval_batches
    from mobiletag.export.litert import TFLiteModel
    from mobiletag.stages.evaluate import eager_scorer, keras_scorer

    count = PROFILE_BATCHES * EVAL_BATCH
    out: dict[str, float] = {}
    for split, sizes in (("test", [STUDENT_SIZE, TEACHER_SIZE]), ("val", [STUDENT_SIZE])):
        batches = iter_eval_batches(paths["dataset"], split, sizes, limit=count + EVAL_BATCH)
        next(batches)  # opening the split is paid once per split, not per image
        started = time.perf_counter()
        decoded = sum(len(b.labels) for b in batches)
        out[f"decode_{split}_image"] = round((time.perf_counter() - started) * 1000 / max(decoded, 1), 3)
    rng = np.random.default_rng(0)
    models = {
        "teacher": (keras.models.load_model(Path(paths["teacher"]) / TeacherModel.CHECKPOINT, compile=False), False),
        "student": (keras.models.load_model(Path(paths["student"]) / StudentModel.CHECKPOINT, compile=False), True),
    }
    for name, (model, normalise) in models.items():
        scorers = {"traced": keras_scorer(model, normalise), "eager": eager_scorer(model, normalise)}
        size = scorers["traced"][0]
        pixels = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
        spent = dict.fromkeys(scorers, 0.0)
        for _, score in scorers.values():
            score(pixels[:EVAL_BATCH])  # traces, or warms up
        for start in range(0, count, EVAL_BATCH):  # the two paths alternated batch by batch
            for path, (_, score) in scorers.items():
                began = time.perf_counter()
                score(pixels[start : start + EVAL_BATCH])
                spent[path] += time.perf_counter() - began
        out.update({f"{name}_{path}": round(seconds * 1000 / count, 3) for path, seconds in spent.items()})
    tflite = TFLiteModel(Path(paths["tflite"]) / ExportedModel.MODEL, num_threads=2)
    pixels = rng.integers(0, 256, (count, STUDENT_SIZE, STUDENT_SIZE, 3), dtype=np.uint8)
    tflite.predict_batch(pixels[:EVAL_BATCH])
    started = time.perf_counter()
    for start in range(0, count, EVAL_BATCH):
        tflite.predict_batch(pixels[start : start + EVAL_BATCH])
    out["int8"] = round((time.perf_counter() - started) * 1000 / count, 3)
    return out


def child(stage: str, paths: dict[str, str]) -> None:
    """Run one stage (in this fresh process) and print its own figures as JSON on the last line."""
    if stage == "models":
        from mobiletag.data.sample import CLASSES

        make_models(Path(paths["models"]), len(CLASSES))
        print(json.dumps({}))
        return
    if stage in ("evaluate", "evaluate_eager"):
        print(json.dumps(run_evaluate(paths, eager=stage == "evaluate_eager")))
        return
    if stage == "profile":
        print(json.dumps(profile(paths)))
        return
    config = load_bench_config()
    started = time.perf_counter()
    if stage == "prepare_dataset":
        from mobiletag.stages import prepare_dataset

        prepare_dataset.run(config, paths["data"], paths["dataset"])
    else:
        from mobiletag.stages import optimize_thresholds

        optimize_thresholds.run(config, paths["dataset"], paths["tflite"], paths["thresholds"])
    print(json.dumps({"run_seconds": round(time.perf_counter() - started, 2)}))


def measure(stage: str, paths: dict[str, str], src: Path | None = None) -> dict:
    """Wall seconds, the stage's own seconds and the peak RSS (MB) of one stage in a fresh process
    (``src``: the mobiletag source it imports, first on its path; default: the installed one).

    Linux counts a forked child's memory high-water mark from the parent's resident size at
    the fork (kept across exec): this process must stay small (numpy and PIL only, no
    TensorFlow), so that the figure is the stage's own.
    """
    env = None
    if src is not None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as stderr:
        # not communicate(): it reaps the child, and os.wait4 must, to read the child's own rusage
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", stage, "--paths", json.dumps(paths)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
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


def score_differences(eager_dir: Path, traced_dir: Path) -> dict:
    """Largest |eager - traced| of each float model's probabilities (test, then validation for the
    students) and whether the INT8 model's test scores are identical, from two evaluate folders.
    It imports TensorFlow into this process: call it after the last measurement (see measure)."""
    from mobiletag.artifacts import Evaluation

    eager, traced = np.load(eager_dir / FLOAT_SCORES), np.load(traced_dir / FLOAT_SCORES)
    diffs = {key: float(np.max(np.abs(eager[key] - traced[key]))) for key in eager.files}
    int8_equal = bool(
        np.array_equal(np.load(eager_dir / Evaluation.TEST_SCORES), np.load(traced_dir / Evaluation.TEST_SCORES))
    )
    metrics = [json.loads((d / "metrics.json").read_text())["compare"] for d in (eager_dir, traced_dir)]
    map_diff = max(
        abs((metrics[0][m]["map_macro"] or 0) - (metrics[1][m]["map_macro"] or 0)) for m in ("teacher", "student")
    )
    return {
        "max_abs_diff": {key: float(f"{v:.3g}") for key, v in diffs.items()},
        "scores_compared": {key: int(eager[key].size) for key in eager.files},
        "int8_scores_identical": int8_equal,
        "float_map_macro_max_abs_diff": float(f"{map_diff:.3g}"),
    }


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def before_src(work: Path, ref: str) -> Path:
    """The repository's src/ at ``ref`` (``git archive``), in ``work``: evaluate as it was there."""
    out = work / f"before-{ref[:12]}"
    if not (out / "src" / "mobiletag").is_dir():
        out.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out / "src"


def before_after(raw: dict) -> dict:
    """evaluate at the largest N before (``--before``) and after, from the alternated pairs."""
    from stats import summarize

    before, after = raw["before_after"]["before"], raw["before_after"]["after"]
    images = {one.get("float_test_images") for one in after}
    return {
        "n": raw["before_after"]["n"],
        "before": raw["before_after"]["ref"],
        "before_scores": "the teacher and both float students on every test image, both students on every "
        "validation image",
        "after_scores": f"the float models on {', '.join(f'{i:,}' if i else '?' for i in sorted(images, key=str))} "
        "sampled test images and as many validation images (thresholds.compare_images)",
        "before_seconds": summarize([one["seconds"] for one in before], digits=1),
        "after_seconds": summarize([one["seconds"] for one in after], f"<= {GOALS['evaluate_seconds']:.0f}", digits=1),
        "before_run_seconds": summarize([one["run_seconds"] for one in before], digits=1),
        "after_run_seconds": summarize([one["run_seconds"] for one in after], digits=1),
        "before_over_after": summarize([b["seconds"] / a["seconds"] for b, a in zip(before, after)], digits=2),
        "load": raw["before_after"]["load"],
    }


def summary(raw: dict) -> dict:
    """scale.json from a run's raw samples (``raw.json`` in ``--work``)."""
    from stats import summarize

    from mobiletag.stages.evaluate import TRACED_TOLERANCE  # TensorFlow: after the last measurement

    sizes, results, samples, profiles = raw["sizes"], raw["results"], raw["samples"], raw["profiles"]
    largest, compare_size = sizes[-1], raw["compare_size"]

    def seconds(key: str, field: str = "seconds") -> list[float]:
        return [one[field] for one in samples[key]]

    # the float models' images at the largest N: K sampled test images (the teacher, two students)
    # and K validation images (two students); the INT8 model scores all N test images
    k = min(raw.get("compare_images") or largest, largest)
    weights = {"teacher": 1, "student": 4}
    extra_ms = [sum(w * (p[f"{m}_eager"] - p[f"{m}_traced"]) for m, w in weights.items()) for p in profiles]
    largest_median = float(np.median(seconds("largest")))
    parts = [key for key in profiles[0] if key not in ("seconds", "peak_rss_mb")]  # measure's own figures
    where = {key: summarize([p[key] for p in profiles], digits=3) for key in parts}

    def part_seconds(counts: dict[str, int]) -> dict:
        return summarize([sum(n * p[key] for key, n in counts.items()) / 1000 for p in profiles], digits=1)

    report = {
        "sizes": sizes,
        "splits": "N test, N validation, N/2 training images",
        "image": (
            f"{SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} JPEG; teacher EfficientNet-B3 {TEACHER_SIZE} px, "
            f"students EfficientNet-Lite1 and INT8 (QAT export) {STUDENT_SIZE} px, random weights"
        ),
        "results": results,
        "growth": growth(results, sizes),
        "evaluate_at_largest": {
            "n": largest,
            "seconds": summarize(seconds("largest"), f"<= {GOALS['evaluate_seconds']:.0f}", digits=1),
            "run_seconds": summarize(seconds("largest", "run_seconds"), digits=1),
        },
        "eager_vs_traced": {
            "n": compare_size,
            "eager_seconds": summarize(seconds("eager"), digits=1),
            "traced_seconds": summarize(seconds("traced"), digits=1),
            "eager_over_traced": summarize([e / t for e, t in zip(seconds("eager"), seconds("traced"))], digits=2),
            "measured_gap_seconds": summarize([e - t for e, t in zip(seconds("eager"), seconds("traced"))], digits=1),
            "profile_gap_seconds": summarize([compare_size * x / 1000 for x in extra_ms], digits=1),
            "eager_at_largest_estimate": {
                "seconds": summarize([largest_median + k * x / 1000 for x in extra_ms], digits=0),
                "how": (
                    f"the median traced evaluate at N={largest:,} plus {k:,} (the float models' images) x the "
                    "profile's extra eager milliseconds per image (teacher once, a student four times: two "
                    "students, test and validation), per round; both paths run the same code but the float "
                    "models' calls"
                ),
            },
            **raw["differences"],
            "tolerance": TRACED_TOLERANCE,
            "within": bool(max(raw["differences"]["max_abs_diff"].values()) <= TRACED_TOLERANCE),
        },
        "profile_ms_per_image": where,
        "compare_images": k,
        "profile_seconds_at_largest": {
            # N test images at the INT8 size, K of them also at the teacher's, K validation images
            "decode": part_seconds({"decode_val_image": largest, "decode_test_image": k}),
            "teacher_traced": part_seconds({"teacher_traced": k}),
            "students_traced": part_seconds({"student_traced": 4 * k}),
            "int8": part_seconds({"int8": largest}),
            "traced_models": part_seconds({"teacher_traced": k, "student_traced": 4 * k, "int8": largest}),
            "eager_models": part_seconds({"teacher_eager": k, "student_eager": 4 * k, "int8": largest}),
        },
        "load": raw["load"],
        "total_seconds": raw["total_seconds"],
        "cores": os.cpu_count(),
    }
    if raw.get("before_after"):
        report["evaluate_before_after"] = before_after(raw)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,4000,16000", help="test images N, comma-separated, ascending")
    parser.add_argument(
        "--compare-size", type=int, default=1000, help="the N (one of --sizes) at which eager and traced alternate"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds (eager, traced, traced at largest N)")
    parser.add_argument("--out", default=str(REPO / "bench" / "scale.json"))
    parser.add_argument(
        "--work", help="keep the generated datasets, models and outputs in this folder (default: a temporary one)"
    )
    parser.add_argument("--models", help="use the models in this folder (a previous run's --work models/)")
    parser.add_argument("--from-raw", help="only write --out from a run's raw.json (in its --work folder)")
    parser.add_argument(
        "--before",
        default=BEFORE,
        help="the commit whose evaluate is measured as 'before' at the largest N, alternated with this tree's "
        "(default: the last one scoring every image with every float model); empty: none",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="only evaluate before and after at the largest N, alternated --rounds times; replaces that block of --out",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, json.loads(args.paths))
        return
    if args.from_raw:
        write(summary(json.loads(Path(args.from_raw).read_text())), Path(args.out))
        return
    if args.evaluate_only:
        evaluate_only(args)
        return
    sizes = sorted(int(n) for n in args.sizes.split(","))
    if args.compare_size not in sizes:
        raise SystemExit(f"--compare-size {args.compare_size} is not one of --sizes {args.sizes}")
    largest = sizes[-1]
    load = {"start": uptime()}
    started = time.perf_counter()
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="mobiletag-scale-") as tmp:
        work = Path(args.work or tmp)
        names = make_images(work / "images", sum(split_sizes(largest).values()))
        generated = time.perf_counter() - started
        model_root = Path(args.models) if args.models else work / "models"
        models = {name: model_root / name for name in MODEL_DIRS}
        if not args.models:
            measure("models", {"models": str(model_root)})  # in a child: this process stays small (see measure)
        prepared = time.perf_counter() - started
        print(f"generated {len(names)} images in {generated:.1f} s; models in {prepared - generated:.1f} s", flush=True)
        paths_of: dict[int, dict[str, str]] = {}
        for n in sizes:
            root = work / f"n{n}"
            write_dataset(root / "data", work / "images", names, n)
            paths = paths_of[n] = {
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
        # alternated rounds: eager and traced at --compare-size, traced at the largest N (its first
        # sample is the table's) and, from the second round, evaluate at --before beside it
        samples: dict[str, list[dict]] = {"eager": [], "traced": [], "largest": [results[str(largest)]["evaluate"]]}
        pairs: dict[str, list[dict]] = {"before": [], "after": []}
        old_src = before_src(work, args.before) if args.before else None
        profiles: list[dict] = []
        for r in range(args.rounds):
            runs = [("eager", "evaluate_eager", args.compare_size), ("traced", "evaluate", args.compare_size)]
            if r > 0:
                runs.append(("largest", "evaluate", largest))
                if old_src is not None:
                    runs.insert(len(runs) - r % 2, ("before", "evaluate", largest))  # before first every other round
            for key, stage, n in runs:
                folder = work / f"n{n}" / f"evaluate_{key}_{r}"
                one = measure(stage, {**paths_of[n], "evaluate": str(folder)}, old_src if key == "before" else None)
                samples.setdefault(key, []).append(one)
                if key in ("before", "largest") and old_src is not None and r > 0:
                    pairs["before" if key == "before" else "after"].append(one)
                print(
                    f"round {r} N={n} {stage}{' at ' + args.before[:12] if key == 'before' else ''}: {one}", flush=True
                )
            profiles.append(measure("profile", paths_of[largest]))
            print(f"round {r} profile (ms/img): {profiles[-1]}", flush=True)
        compare = work / f"n{args.compare_size}"
        differences = score_differences(compare / "evaluate_eager_0", compare / "evaluate_traced_0")
        print("eager vs traced:", differences, flush=True)
    load["end"] = uptime()
    raw = {
        "sizes": sizes,
        "compare_size": args.compare_size,
        "compare_images": results[str(largest)]["evaluate"].get("float_test_images"),
        "results": results,
        "samples": samples,
        "profiles": profiles,
        "differences": differences,
        "load": load,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    if pairs["before"]:
        raw["before_after"] = {"n": largest, "ref": args.before, **pairs, "load": load}
    if args.work:
        (Path(args.work) / "raw.json").write_text(json.dumps(raw, indent=1), encoding="utf-8")
    write(summary(raw), Path(args.out))


def prepared(work: Path, n: int, models_dir: str | None) -> dict[str, str]:
    """The images, models, dataset and thresholds evaluate reads at N = ``n``, in ``work``: made
    (prepare_dataset and optimize_thresholds run) where a previous run did not leave them."""
    images = work / "images"
    count = sum(split_sizes(n).values())
    names = sorted(p.name for p in images.glob("img_*.jpg")) if images.is_dir() else []
    if len(names) < count:
        names = make_images(images, count)
    model_root = Path(models_dir) if models_dir else work / "models"
    if not (model_root / "tflite" / ExportedModel.MODEL).is_file():
        measure("models", {"models": str(model_root)})
    root = work / f"n{n}"
    paths = {
        "data": str(root / "data"),
        "dataset": str(root / "dataset"),
        "thresholds": str(root / "thresholds"),
        "evaluate": str(root / "evaluate"),
        **{name: str(model_root / name) for name in MODEL_DIRS},
    }
    if not (root / "data" / "test_labels.csv").is_file():
        write_dataset(root / "data", images, names[:count], n)
    if not (root / "dataset" / "stats.json").is_file():
        print(f"N={n} prepare_dataset: {measure('prepare_dataset', paths)}", flush=True)
    if not (root / "thresholds" / "threshold_recommendation.json").is_file():
        print(f"N={n} optimize_thresholds: {measure('optimize_thresholds', paths)}", flush=True)
    return paths


def evaluate_only(args: argparse.Namespace) -> None:
    """evaluate before (``--before``) and after at the largest of ``--sizes``, alternated; the block
    replaces ``evaluate_before_after`` in ``--out`` (its other figures kept) and README.md follows."""
    if not args.before:
        raise SystemExit("--evaluate-only measures evaluate before and after: give --before a commit")
    n = max(int(v) for v in args.sizes.split(","))
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="mobiletag-scale-") as tmp:
        work = Path(args.work or tmp)
        paths = prepared(work, n, args.models)
        old_src = before_src(work, args.before)
        load = {"start": uptime()}
        pairs: dict[str, list[dict]] = {"before": [], "after": []}
        for r in range(args.rounds):
            for key in ("before", "after") if r % 2 == 0 else ("after", "before"):
                folder = work / f"n{n}" / f"evaluate_{key}_{r}"
                one = measure("evaluate", {**paths, "evaluate": str(folder)}, old_src if key == "before" else None)
                pairs[key].append(one)
                print(f"round {r} N={n} evaluate {key}: {one}", flush=True)
        load["end"] = uptime()
    block = before_after({"before_after": {"n": n, "ref": args.before, **pairs, "load": load}})
    report = json.loads(out.read_text()) if out.is_file() else {}
    report["evaluate_before_after"] = block
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    results_file = out.with_name("results.json")
    if results_file.is_file():
        import readme

        print("wrote", readme.write(results_file))
    print(json.dumps(block))


def write(report: dict, out: Path) -> None:
    """scale.json, bench/README.md beside it when results.json is there, the table on stdout."""
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    results_file = out.with_name("results.json")
    if results_file.is_file():  # bench/README.md shows this file's table too: keep it current
        import readme

        print("wrote", readme.write(results_file))
    print(table(report["results"], report["growth"], report["sizes"]))
    print(json.dumps({k: report[k] for k in ("evaluate_at_largest", "eager_vs_traced", "profile_seconds_at_largest")}))
    print(f"total {report['total_seconds']} s; wrote {out}")


if __name__ == "__main__":
    main()

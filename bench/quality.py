"""`make bench-quality`: does the recipe learn, on several kinds of data, what a simple model can?

    python bench/quality.py [--sets small-objects,glyphs,...] [--seeds 0,1,2] [--config configs/fast.yaml]
                            [--out bench/quality.json] [--keep DIR] [--rerun] [--baselines-only]
                            [--ablations [--ablation-set small-objects]] [--trial NAME OVERRIDES]
    python bench/quality.py --merge OTHER.json [--out bench/quality.json]

On each set of the development suite (``mobiletag.data.suite.SUITE``: small objects, stroke-drawn
digits with flips off, heavy imbalance and co-occurrence, textures among clutter, phone-sized
photos with EXIF orientation; each generated with dataset seed 0, the same files every run) it
computes once:

- a logistic regression per class on raw grey pixels at 24x24 and at 48x48 (standardised;
  its C chosen from 0.01 / 0.1 / 1 by validation macro mAP, then scored on test);
- a constant predictor (each class's training prevalence for every image);

then runs ``mobiletag train --runner inprocess`` in its own process once per training seed (the
preset with its ``seed`` key set to it) and records the INT8 test macro mAP of each seed, their
mean, spread (max - min) and sample standard deviation, the float students' figures and which
student shipped.

The goal, per set: the mean INT8 test macro mAP at least GOAL_MARGIN above the better
regression, and a spread over at least MIN_SEEDS seeds of at most GOAL_SPREAD. A set with fewer
seeds is "incomplete".

The results file is resumable: a (set, seed) already in it for the same preset and the same
dataset content is not trained again (``--rerun`` trains it again); the file is written after
every training. A set's runs all share one preset: training a set under another preset drops
its runs under the old one. Two processes can train side by side, each into its own ``--out``
(a copy of the file): ``--merge`` folds one's runs and trial rows into the other.

With ``--ablations`` it then trains the student stage again under each recipe change undone on
one set (``--ablation-set``; the first seed's teacher and dataset, one fresh process each) and
records its validation and test macro mAP (float; test on the stored test JPEGs and through the
app's input path from the originals).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
GOAL_MARGIN = 0.10
GOAL_SPREAD = 0.02
MIN_SEEDS = 3
DATASET_SEED = 0
REGRESSION_SIDES = (24, 48)
REGRESSION_C = (0.01, 0.1, 1.0)


def read_split(data_dir: Path, split: str, classes: list[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """(relative paths, labels [N, C] 0/1, classes) of a split's CSV; classes from the rows if not given."""
    with open(data_dir / f"{split}_labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    sets = [{label for label in row["labels"].split("|") if label} for row in rows]
    classes = classes or sorted(set().union(*sets))
    labels = np.array([[c in s for c in classes] for s in sets], dtype=np.float32)
    return [row["filepath"] for row in rows], labels, classes


def grey_pixels(data_dir: Path, paths: list[str], side: int) -> np.ndarray:
    """[N, side*side] float32 in [0, 1]: each image upright (EXIF orientation), in grey, resized
    (bilinear) to side x side."""
    from PIL import Image, ImageOps

    out = np.empty((len(paths), side * side), np.float32)
    for i, rel in enumerate(paths):
        with Image.open(data_dir / "images" / rel) as image:
            upright = ImageOps.exif_transpose(image) or image  # as the pipeline sees it
            grey = upright.convert("L").resize((side, side), Image.Resampling.BILINEAR)
        out[i] = np.asarray(grey, np.float32).ravel() / 255.0
    return out


def logistic_regression_scores(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, test_x: np.ndarray
) -> tuple[np.ndarray, float]:
    """Test scores [N, C] of per-class logistic regressions and the C chosen on validation mAP."""
    from sklearn.linear_model import LogisticRegression

    from mobiletag.training.metrics import mean_average_precision

    mean, std = train_x.mean(axis=0), train_x.std(axis=0) + 1e-6
    train_x, val_x, test_x = ((x - mean) / std for x in (train_x, val_x, test_x))

    def fit_predict(c: float, x: np.ndarray) -> np.ndarray:
        columns = []
        for k in range(train_y.shape[1]):
            if train_y[:, k].min() == train_y[:, k].max():  # one class only: its prevalence
                columns.append(np.full(len(x), train_y[0, k], np.float64))
                continue
            model = LogisticRegression(C=c, max_iter=2000)
            columns.append(model.fit(train_x, train_y[:, k]).predict_proba(x)[:, 1])
        return np.stack(columns, axis=1)

    best_c = max(REGRESSION_C, key=lambda c: mean_average_precision(val_y, fit_predict(c, val_x)))
    return fit_predict(best_c, test_x), best_c


def constant_scores(train_y: np.ndarray, num: int) -> np.ndarray:
    """Each class's training prevalence, for every one of ``num`` images."""
    return np.repeat(train_y.mean(axis=0, keepdims=True), num, axis=0)


def baselines(data_dir: Path) -> dict[str, dict[str, float]]:
    """Test macro mAP of the constant predictor and of the pixel regressions on ``data_dir``."""
    from mobiletag.training.metrics import mean_average_precision

    train_paths, train_y, classes = read_split(data_dir, "train")
    val_paths, val_y, _ = read_split(data_dir, "val", classes)
    test_paths, test_y, _ = read_split(data_dir, "test", classes)
    out = {"constant": {"test_map": round(mean_average_precision(test_y, constant_scores(train_y, len(test_y))), 4)}}
    for side in REGRESSION_SIDES:
        started = time.perf_counter()
        scores, c = logistic_regression_scores(
            grey_pixels(data_dir, train_paths, side),
            train_y,
            grey_pixels(data_dir, val_paths, side),
            val_y,
            grey_pixels(data_dir, test_paths, side),
        )
        out[f"logistic_regression_{side}px"] = {
            "test_map": round(mean_average_precision(test_y, scores), 4),
            "C": c,
            "seconds": round(time.perf_counter() - started, 1),
        }
    return out


# (name, overrides): each undoes one recipe choice of the preset, for the baseline student
# (alpha 1) and, for the warm-up, the distilled one too
ABLATIONS = (
    ("preset, baseline student (alpha 1)", {"student": {"alpha": 1.0}}),
    ("no head warm-up", {"student": {"alpha": 1.0, "head_epochs": 0}}),
    ("warm-up at 1e-2", {"student": {"alpha": 1.0, "head_learning_rate": 1.0e-2}}),
    ("crops down to 50% of the area", {"student": {"alpha": 1.0}, "data": {"augment": {"crop_area_min": 0.5}}}),
    ("no random crop", {"student": {"alpha": 1.0}, "data": {"augment": {"random_resized_crop": False}}}),
    ("no flip", {"student": {"alpha": 1.0}, "data": {"augment": {"flip": False}}}),
    (
        "resize methods drawn from bilinear, mediapipe, nearest",
        {"student": {"alpha": 1.0}, "data": {"augment": {"resize_methods": ["bilinear", "mediapipe", "nearest"]}}},
    ),
    ("preset, distilled student (alpha 0.7)", {}),
    ("distilled, no head warm-up", {"student": {"head_epochs": 0}}),
)

ABLATION_SCRIPT = """
import json, sys
from pathlib import Path
from mobiletag.stages.common import one_inter_op_thread
one_inter_op_thread()
from mobiletag.config import load_config
from mobiletag.data.tf_input import make_dataset
from mobiletag.models.student import preprocess
from mobiletag.stages import train_student
from mobiletag.stages.common import dataset_facts
from mobiletag.training.fit import predict_scores
from mobiletag.training.metrics import mean_average_precision
from mobiletag.training.precision import load_float32
from mobiletag.stages.resolve_config import dataset_config_source
from mobiletag.export.inference_config import stream_scores
from mobiletag.stages.evaluate import keras_scorer
dataset, teacher, out, source = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
config = load_config(dataset_config_source(source), sys.argv[5], *json.loads(sys.argv[6]))  # as `mobiletag train`
result = train_student.run(config, dataset, teacher, out)
test = make_dataset(dataset, "test", image_sizes=[config.student.image_size], batch_size=32,
                    training=False, num_classes=dataset_facts(dataset).num_classes, config=config)
model = load_float32(out / "student_best.h5")
scores, labels = predict_scores(model, test, preprocess)
app, app_labels, _ = stream_scores(dataset, "test", {"student": keras_scorer(model, normalise=True)})
print("RESULT " + json.dumps({"val_map": result.metrics["val_map"],
                              "test_map": round(float(mean_average_precision(labels, scores)), 4),
                              "app_test_map": round(float(mean_average_precision(app_labels, app["student"])), 4)}))
"""


def ablation_inputs(stages: Path) -> tuple[Path, Path]:
    """The dataset and the teacher a run of ``mobiletag train --runner inprocess --work-dir stages`` left."""
    from mobiletag.runners.inprocess import output_path

    return output_path(stages, "prepare_dataset", "dataset"), output_path(stages, "train_teacher", "model")


def student_stage(stages: Path, data_dir: Path, config: Path, overrides: list[dict]) -> dict:
    """The student stage alone (its own process) on the run's dataset and teacher (``stages``: the
    run's work folder), its config as the run's (the set's config.yaml, then ``config``), then
    ``overrides`` in order: its validation macro mAP (the stage's, training input path), the float
    student's test macro mAP on the test images as stored ("test_map") and through the app's input
    path from the originals ("app_test_map", how the shipped model's test figure is measured), seconds."""
    started = time.perf_counter()
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = stages / "student-trial"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-c", ABLATION_SCRIPT, *map(str, ablation_inputs(stages)), str(out), str(data_dir)]
    cmd += [str(config), json.dumps(overrides)]
    done = subprocess.run(cmd, check=True, env=env, cwd=REPO, capture_output=True, text=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return {**json.loads(line[7:]), "seconds": round(time.perf_counter() - started)}


def ablations(stages: Path, data_dir: Path, config: Path) -> list[dict]:
    """The student stage under each of ABLATIONS (:func:`student_stage`)."""
    rows = []
    for name, overrides in ABLATIONS:
        rows.append({"name": name, "overrides": overrides, **student_stage(stages, data_dir, config, [overrides])})
        print(
            f"  {name}: validation {rows[-1]['val_map']:.4f}, test {rows[-1]['test_map']:.4f}, "
            f"app path {rows[-1]['app_test_map']:.4f}",
            flush=True,
        )
    return rows


TRIAL_BASE = {"student": {"alpha": 1.0}}  # trials compare the student that ships in the presets' runs


def trials(
    name: str,
    stages: Path,
    data_dir: Path,
    preset: Path,
    seeds: list[int],
    changes: list[tuple[str, dict]],
    entry: dict,
    commit: str,
    save: Callable[[], None] = lambda: None,
) -> None:
    """Set ``name``'s student stage alone (the baseline student, TRIAL_BASE) for each training seed: with
    the preset as it is ("preset") and with each of ``changes`` (name, overrides); rows kept in
    ``entry`` by "<change>/<seed>" (one there already is not trained again) with the ``commit`` that
    trained them, summarised per change and ``save``d after each row (a stopped run keeps its rows)."""
    for seed in seeds:
        for change, overrides in [("preset", {}), *changes]:
            key = f"{change}/{seed}"
            if key in entry["rows"]:
                continue
            row = student_stage(stages, data_dir, preset, [TRIAL_BASE, {"seed": seed}, overrides])
            entry["rows"][key] = {"change": change, "seed": seed, "overrides": overrides, **row, "commit": commit}
            entry["summary"] = trial_summary(entry["rows"])
            save()
            print(
                f"  {name} {key}: validation {row['val_map']:.4f}, test {row['test_map']:.4f}, "
                f"app path {row['app_test_map']:.4f}",
                flush=True,
            )
    entry["summary"] = trial_summary(entry["rows"])


def trial_summary(rows: dict) -> dict:
    """Per change: the seeds; validation, test and app-path test mAP mean and spread; and the test
    and app-path test mAP minus the preset's on the same seed (mean, min, max) over the seeds both
    have. App-path figures only where every row of the change has one (rows trained before
    ``app_test_map`` was measured have none)."""
    out = {}
    preset = {r["seed"]: r for r in rows.values() if r["change"] == "preset"}

    def figures(runs: list[dict], key: str, name: str, change: str) -> dict:
        if not all(key in r for r in runs):
            return {f"{name}_mean": None, f"{name}_spread": None, f"{name}_gain": None}
        values = [r[key] for r in runs]
        gains = [r[key] - preset[r["seed"]][key] for r in runs if key in preset.get(r["seed"], {})]
        gain = {"mean": round(statistics.fmean(gains), 4), "min": round(min(gains), 4), "max": round(max(gains), 4)}
        return {
            f"{name}_mean": round(statistics.fmean(values), 4),
            f"{name}_spread": round(max(values) - min(values), 4),
            f"{name}_gain": gain if gains and change != "preset" else None,
        }

    for change in dict.fromkeys(r["change"] for r in rows.values()):
        runs = sorted((r for r in rows.values() if r["change"] == change), key=lambda r: r["seed"])
        val = [r["val_map"] for r in runs]
        out[change] = {
            "seeds": [r["seed"] for r in runs],
            "val_mean": round(statistics.fmean(val), 4),
            "val_spread": round(max(val) - min(val), 4),
            **figures(runs, "test_map", "test", change),
            **figures(runs, "app_test_map", "app_test", change),
        }
    return out


def train(data_dir: Path, config: Path, out_dir: Path, work_dir: Path) -> dict:
    """``mobiletag train --runner inprocess`` in its own process; its metrics.json."""
    cmd = [
        sys.executable,
        "-m",
        "mobiletag",
        "train",
        "--runner",
        "inprocess",
        "--data-dir",
        str(data_dir),
        "--config",
        str(config),
        "--out-dir",
        str(out_dir),
        "--work-dir",
        str(work_dir),
    ]
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    return json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))


def seeded_config(preset: Path, seed: int, out: Path) -> Path:
    """``preset`` with its ``seed`` key set to ``seed``, written to ``out`` (`mobiletag train` reads one file)."""
    data = yaml.safe_load(preset.read_text(encoding="utf-8")) or {}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump({**data, "seed": seed}, sort_keys=False), encoding="utf-8")
    return out


def data_digest(data_dir: Path) -> str:
    """SHA-256 over every file's relative path and bytes: the same generated files, the same digest."""
    digest = hashlib.sha256()
    for path in sorted(p for p in data_dir.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(data_dir).as_posix()}\0".encode())
        digest.update(path.read_bytes())
    return "sha256:" + digest.hexdigest()


def preset_digest(preset: Path) -> str:
    """The preset's settings (its YAML parsed: comments and layout do not count): runs and trials of one
    preset name but other settings are not mixed."""
    settings = yaml.safe_load(preset.read_text(encoding="utf-8"))
    return "sha256:" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def earlier_settings(config: str | None, digests: set[str | None]) -> bool:
    """Whether figures trained at ``digests`` (their preset's :func:`preset_digest`) predate the settings the
    preset file ``config`` (relative to the repo) has now: the table says so beside them."""
    path = REPO / config if config else None
    return path is not None and path.is_file() and digests != {preset_digest(path)}


def run_record(metrics: dict, seed: int, preset: str, seconds: float, commit: str, digest: str = "") -> dict:
    """The figures bench-quality keeps of one training's metrics.json (``commit``: the code it ran;
    ``digest``: the preset's, :func:`preset_digest`)."""
    distillation = metrics.get("distillation") or {}
    students = distillation.get("students") or {}
    per_class = metrics["test"].get("per_class", {})
    return {
        "seed": seed,
        "config": preset,
        "config_digest": digest,
        "int8_test_map": metrics["test"]["map_macro"],
        "test_ap_by_class": {name: m["ap"] for name, m in per_class.items()},
        "test_positives_by_class": {name: m["support"] for name, m in per_class.items()},
        "float_student_test_map": metrics["compare"]["student"]["map_macro"],
        "teacher_test_map": metrics["compare"]["teacher"]["map_macro"],
        "shipped_student": distillation.get("shipped"),
        "students_test_map": {
            name: figures["test"]["map_macro"] for name, figures in students.items() if figures is not None
        },
        "seconds": round(seconds),
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        "cpu": run_cpu(),
    }


def run_cpu() -> str:
    """The CPU a run trained on: ``reproducible`` holds on one kind of CPU only (docs/configuration.md);
    the same seed, data and code trained other models on a CPU without AVX-512 (docs/recipe.md)."""
    from machine import cpu

    found = cpu()
    features = found["cpu_features"] if isinstance(found["cpu_features"], list) else []
    vector = "AVX-512" if "avx512f" in features else "AVX2" if "avx2" in features else "no AVX2"
    return f"{found['cpu_model']}, {vector}"


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def summarize(int8_by_seed: dict[int, float], best_regression: float, min_seeds: int = MIN_SEEDS) -> dict:
    """A set's INT8 test macro mAP over its seeds against the goal.

    ``mean``, ``spread`` (max - min) and ``std`` (sample standard deviation; None for one seed),
    ``margin_over_regression`` (mean - ``best_regression``), and ``status``: "met" when the margin
    is at least GOAL_MARGIN and the spread at most GOAL_SPREAD over at least ``min_seeds`` seeds,
    "missed" when either fails, "incomplete" with fewer seeds."""
    seeds = sorted(int8_by_seed)
    values = [int8_by_seed[s] for s in seeds]
    if not values:
        return {"seeds": [], "status": "incomplete"}
    mean = statistics.fmean(values)
    spread = max(values) - min(values)
    margin = mean - best_regression
    checks = {"margin": margin >= GOAL_MARGIN - 1e-9, "spread": spread <= GOAL_SPREAD + 1e-9}
    status = "incomplete" if len(values) < min_seeds else "met" if all(checks.values()) else "missed"
    return {
        "seeds": seeds,
        "int8_test_map": values,
        "mean": round(mean, 4),
        "spread": round(spread, 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else None,
        "margin_over_regression": round(margin, 4),
        "checks": checks,
        "status": status,
    }


def set_summary(entry: dict) -> dict:
    """:func:`summarize` of a set's stored runs, with the float student's mean and spread and the
    distilled - baseline test mAP gap over the seeds (mean, spread): the seed-to-seed spread beside
    the gap that one run's distillation block reports."""
    runs = entry.get("runs", {})
    summary = summarize({int(s): r["int8_test_map"] for s, r in runs.items()}, entry["best_regression_test_map"])
    if runs:
        floats = [r["float_student_test_map"] for r in runs.values()]
        summary["float_student_mean"] = round(statistics.fmean(floats), 4)
        summary["float_student_spread"] = round(max(floats) - min(floats), 4)
        gaps = [
            r["students_test_map"]["distilled"] - r["students_test_map"]["baseline"]
            for r in runs.values()
            if {"distilled", "baseline"} <= set(r.get("students_test_map", {}))
        ]
        if gaps:  # the distillation verdict of one run beside the seed-to-seed spread it has to beat
            summary["distillation_gap"] = {
                "mean": round(statistics.fmean(gaps), 4),
                "spread": round(max(gaps) - min(gaps), 4),
                "runs": len(gaps),
            }
        if by_positives := spread_by_positives(list(runs.values())):
            summary["spread_by_positives"] = by_positives
        summary["shipped"] = sorted({str(r["shipped_student"]) for r in runs.values()})
        summary["config"] = next(iter(runs.values()))["config"]
        summary["commits"] = sorted({r.get("commit", "unknown") for r in runs.values()})  # the preset's version
        summary["cpus"] = sorted({r.get("cpu", "not recorded") for r in runs.values()})
    return summary


def spread_by_positives(runs: list[dict]) -> dict | None:
    """Where a set's spread comes from: the INT8 macro mAP split into the share of the classes with
    fewer than MIN_POSITIVES test positives (the dataset summary warns about those) and the share of
    the others (each a sum of per-class AP over the classes with test positives, divided by their
    count, so the two shares add up to the macro mAP), with each share's spread over the runs. None
    unless every run recorded its per-class AP."""
    from mobiletag.data.dataset import MIN_POSITIVES

    if not runs or not all(r.get("test_ap_by_class") for r in runs):
        return None
    positives = runs[0]["test_positives_by_class"]  # the same test split in every run
    scored = [c for c, n in positives.items() if n > 0]
    out: dict = {"min_positives": MIN_POSITIVES}
    for group, classes in (
        ("few", [c for c in scored if positives[c] < MIN_POSITIVES]),
        ("many", [c for c in scored if positives[c] >= MIN_POSITIVES]),
    ):
        shares = [sum(r["test_ap_by_class"][c] for c in classes) / len(scored) for r in runs]
        out[group] = {
            "classes": len(classes),
            "positives": sorted(positives[c] for c in classes),
            "spread": round(max(shares) - min(shares), 4),
        }
    return out


def load_results(path: Path) -> dict:
    """The results file, or an empty one; a file in another shape (no "sets") starts over."""
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data.get("sets"), dict):
            return data
    return {"sets": {}, "ablations": None}


def save_results(path: Path, results: dict) -> None:
    """Write the results file (sets in the suite's order) and, when bench/results.json sits beside it,
    bench/README.md."""
    from mobiletag.data.suite import SUITE

    order = {name: i for i, name in enumerate(SUITE)}
    results["sets"] = dict(sorted(results["sets"].items(), key=lambda item: order.get(item[0], len(order))))
    results["goal"] = (
        f"per set: mean INT8 test macro mAP >= best regression + {GOAL_MARGIN} and spread (max - min) "
        f"<= {GOAL_SPREAD} over >= {MIN_SEEDS} training seeds"
    )
    results["machine"] = {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()}
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    beside = path.with_name("results.json")
    if beside.is_file():  # bench/README.md shows this file's table too: keep it current
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import readme

        readme.write(beside)


def prepare_set(name: str, work: Path, results: dict, rerun: bool) -> tuple[Path, dict]:
    """Generate set ``name`` under ``work`` and its entry in ``results``: baselines computed when the
    entry is new, its data differ from the stored digest, or ``rerun``; runs dropped when the data differ."""
    from mobiletag.data.suite import SUITE

    data_dir = work / name / "data"
    if not (data_dir / "test_labels.csv").is_file():
        SUITE[name](data_dir, seed=DATASET_SEED)
    counts = {split: len(read_split(data_dir, split)[0]) for split in ("train", "val", "test")}
    digest = data_digest(data_dir)
    entry = results["sets"].get(name)
    if entry is None or entry.get("dataset", {}).get("digest") != digest or rerun:
        if entry is not None and entry.get("dataset", {}).get("digest") != digest:
            print(f"{name}: the generated data differ from the results file's: its runs are dropped", flush=True)
            entry = None
        started = time.perf_counter()
        base = baselines(data_dir)
        entry = {
            "dataset": {"seed": DATASET_SEED, **counts, "digest": digest},
            "baselines": base,
            "best_regression_test_map": max(v["test_map"] for k, v in base.items() if k.startswith("logistic")),
            "baseline_seconds": round(time.perf_counter() - started),
            "runs": (entry or {}).get("runs", {}),
        }
        results["sets"][name] = entry
    return data_dir, entry


def run_settings(run: dict) -> tuple[str, str | None]:
    """What a run was trained at: its preset file and that file's :func:`preset_digest`."""
    return run["config"], run.get("config_digest")


def trial_settings(trial: dict) -> tuple[str, str | None, str | None]:
    """What a set's trials were trained at: the preset file, its digest and the set's data digest."""
    return trial["config"], trial.get("config_digest"), trial.get("data")


def merge(results: dict, other: dict, preset_name: str, digest: str, replace: bool = False) -> list[str]:
    """Fold ``other`` (a results file another ``--out`` wrote: a second process training other sets or
    seeds beside this one) into ``results``; what was taken, one line each.

    Per set, on the same generated data only: ``other``'s runs at the preset's current settings
    (``preset_name`` at ``digest``) are added, and ``results``' runs at other settings dropped (a set's
    runs share one preset); ``other``'s trial at those settings and data has its rows added to
    ``results``' (on the same run seed) or, when ``results``' trial ran at other settings, takes its
    place and sends it to ``earlier_trials``. A run or trial row both files hold with different
    figures (a rerun, say on another CPU), or a set on other data, is refused unless ``replace`` (then
    ``other``'s is taken: for a set on other data, its data, baselines and runs). Raises ValueError
    naming the set, seed or row."""
    taken = []
    current = (preset_name, digest)
    for name, theirs in other.get("sets", {}).items():
        ours = results["sets"].get(name)
        other_data = ours is not None and ours["dataset"].get("digest") != theirs["dataset"].get("digest")
        if other_data and not replace:
            raise ValueError(
                f"set {name}: its data differ (digest {theirs['dataset'].get('digest')} against "
                f"{ours['dataset'].get('digest')}); merge only files written from the same generated sets, or "
                "pass --rerun to take the merged file's set (its data, baselines and runs) when its generator changed"
            )
        new = {s: r for s, r in theirs["runs"].items() if run_settings(r) == current}
        if not new:
            continue
        if ours is None or other_data:
            ours = results["sets"][name] = {**theirs, "runs": {}}
        for seed, run in new.items():
            mine = ours["runs"].get(seed)
            if mine is not None and run_settings(mine) == current and mine != run and not replace:
                raise ValueError(
                    f"set {name} seed {seed}: both files hold a run at the current settings and their figures "
                    f"differ (INT8 {mine['int8_test_map']} here, {run['int8_test_map']} there: a rerun, or another "
                    "CPU); keep one, or pass --rerun to take the merged file's"
                )
        added = sorted((s for s, r in new.items() if ours["runs"].get(s) != r), key=int)
        kept = {s: r for s, r in ours["runs"].items() if run_settings(r) == current}
        ours["runs"] = dict(sorted({**kept, **new}.items(), key=lambda item: int(item[0])))
        ours["summary"] = set_summary(ours)
        taken.append(f"{name}: runs of seeds {', '.join(added) or 'none new'}")
    for name, trial in other.get("trials", {}).items():
        data = results["sets"].get(name, {}).get("dataset", {}).get("digest")
        if trial_settings(trial) != (*current, data):
            continue
        mine = results.setdefault("trials", {}).get(name)
        if mine and trial_settings(mine) == (*current, data):
            if run_seed(mine) != run_seed(trial):
                raise ValueError(
                    f"trials of {name}: here on seed {run_seed(mine)}'s run, there on seed {run_seed(trial)}'s; "
                    "rows on different runs do not pair"
                )
            for key, row in trial["rows"].items():
                if key in mine["rows"] and mine["rows"][key] != row and not replace:
                    raise ValueError(
                        f"trials of {name}, row {key}: both files hold it and their figures differ; keep one, "
                        "or pass --rerun to take the merged file's"
                    )
            rows = {**mine["rows"], **trial["rows"]}
            added = sorted(set(trial["rows"]) - set(mine["rows"]))
        else:
            if mine and mine["rows"]:
                results.setdefault("earlier_trials", {}).setdefault(name, []).append(mine)
            rows, added = dict(trial["rows"]), sorted(trial["rows"])
        results["trials"][name] = {**trial, "rows": rows, "summary": trial_summary(rows)}
        taken.append(f"{name}: trial rows {', '.join(added) or 'none new'}")
    for name, earlier in other.get("earlier_trials", {}).items():
        mine = results.setdefault("earlier_trials", {}).setdefault(name, [])
        mine += [t for t in earlier if t not in mine and t != results.get("trials", {}).get(name)]
    return taken


def run_seed(trial: dict) -> int:
    """The seed of the run whose dataset (its stored order) and teacher a set's trials train on (files
    written before it was recorded: 0, the first seed every trial listed)."""
    return int(trial.get("run_seed", 0))


def ensure_run(name: str, seed: int, data_dir: Path, preset: Path, preset_name: str, entry: dict, work: Path) -> Path:
    """The folder of set ``name``'s run with training seed ``seed`` under ``work``, trained (and recorded
    in ``entry``) when its dataset and teacher are not there: the ablations and trials start from them."""
    run_dir = work / name / f"seed{seed}"
    config = seeded_config(preset, seed, run_dir / "config.yaml")
    if not all(p.is_dir() for p in ablation_inputs(run_dir / "stages")):
        started, commit = time.perf_counter(), _commit()
        metrics = train(data_dir, config, run_dir / "output", run_dir / "stages")
        seconds = time.perf_counter() - started
        entry["runs"][str(seed)] = run_record(metrics, seed, preset_name, seconds, commit, preset_digest(preset))
        entry["summary"] = set_summary(entry)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    from mobiletag.data.suite import SUITE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sets", default=",".join(SUITE), help=f"comma-separated sets (default: all of {', '.join(SUITE)})"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    parser.add_argument("--config", default=str(REPO / "configs" / "fast.yaml"), help="training preset")
    parser.add_argument("--out", default=str(REPO / "bench" / "quality.json"), help="results file")
    parser.add_argument("--keep", help="folder to keep the datasets and the runs' output in (default: a temp dir)")
    parser.add_argument("--rerun", action="store_true", help="train (set, seed) pairs the results file already holds")
    parser.add_argument("--baselines-only", action="store_true", help="compute the baselines, train nothing")
    parser.add_argument("--ablations", action="store_true", help="also train the student under each ABLATIONS entry")
    parser.add_argument("--ablation-set", default="small-objects", help="the set --ablations runs on")
    parser.add_argument(
        "--trial",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "OVERRIDES"),
        help="a recipe change to try: the baseline student stage alone, with the preset and with OVERRIDES (JSON), "
        "on each of --sets and --seeds (each set's first-seed run's dataset and teacher: the same seed first "
        "every time); repeatable. Results in "
        "the file's 'trials', by set; no suite training beyond the runs they need",
    )
    parser.add_argument(
        "--merge",
        action="append",
        default=[],
        metavar="FILE",
        help="fold FILE (a results file another --out wrote, e.g. a second process on other sets or seeds) into "
        "--out: its runs and trial rows at the --config preset's current settings; trains nothing; repeatable "
        "(with --rerun, a run or row both hold with other figures, or a set on other data, is taken from FILE)",
    )
    args = parser.parse_args(argv)

    names = [n for n in args.sets.split(",") if n]
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        parser.error(f"--sets: unknown set(s) {', '.join(unknown)}; choose from {', '.join(SUITE)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    preset = Path(args.config)
    preset_name = os.path.relpath(preset.resolve(), REPO)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mobiletag-quality-"))
    out = Path(args.out)
    results = load_results(out)
    digest = preset_digest(preset)
    data_dirs: dict[str, Path] = {}
    if args.merge:
        for file in args.merge:
            try:
                taken = merge(results, load_results(Path(file)), preset_name, digest, replace=args.rerun)
            except ValueError as error:
                parser.error(f"--merge {file}: {error}")
            print(f"{file}: " + ("; ".join(taken) or f"nothing at {preset_name}'s current settings"), flush=True)
        save_results(out, results)
        return 0

    for name in names:
        data_dir, entry = prepare_set(name, work, results, args.rerun)
        data_dirs[name] = data_dir
        other = {s for s, r in entry["runs"].items() if run_settings(r) != (preset_name, digest)}
        if other and not args.baselines_only:
            print(f"{name}: dropping seeds {sorted(other)} trained with another preset or version of it", flush=True)
            entry["runs"] = {s: r for s, r in entry["runs"].items() if s not in other}
        entry["summary"] = set_summary(entry)
        save_results(out, results)
        base = entry["baselines"]
        print(
            f"{name}: regression {entry['best_regression_test_map']:.4f} "
            f"(24 px {base['logistic_regression_24px']['test_map']:.4f}, 48 px "
            f"{base['logistic_regression_48px']['test_map']:.4f}), constant {base['constant']['test_map']:.4f}",
            flush=True,
        )
        if args.baselines_only or args.trial:
            continue
        for seed in seeds:
            if str(seed) in entry["runs"] and not args.rerun:
                print(f"{name} seed {seed}: in {out} already (--rerun trains it again)", flush=True)
                continue
            run_dir = work / name / f"seed{seed}"
            started, commit = time.perf_counter(), _commit()
            config = seeded_config(preset, seed, run_dir / "config.yaml")
            metrics = train(data_dir, config, run_dir / "output", run_dir / "stages")
            seconds = time.perf_counter() - started
            entry["runs"][str(seed)] = run_record(metrics, seed, preset_name, seconds, commit, digest)
            entry["summary"] = set_summary(entry)
            save_results(out, results)
            print(
                f"{name} seed {seed}: INT8 test macro mAP {entry['runs'][str(seed)]['int8_test_map']:.4f}", flush=True
            )

    changes = [(change, json.loads(overrides)) for change, overrides in args.trial]
    for name in names if changes else []:  # before training anything: rows pair only on one run's data
        earlier = results.get("trials", {}).get(name, {})
        if earlier.get("rows") and earlier.get("config_digest") == digest and run_seed(earlier) != seeds[0]:
            parser.error(
                f"--trial on {name}: the trials of {name} in {out} train on seed {run_seed(earlier)}'s run (its "
                f"stored order of the training images) and pair each change with the preset there; list seed "
                f"{run_seed(earlier)} first in --seeds (got {args.seeds})"
            )
    for name in names if changes else []:
        data_dir, entry = data_dirs[name], results["sets"][name]  # prepared above
        run_dir = ensure_run(name, seeds[0], data_dir, preset, preset_name, entry, work)
        trial = results.setdefault("trials", {}).setdefault(name, {"config": preset_name, "rows": {}})
        if trial_settings(trial) != (
            preset_name,
            digest,
            entry["dataset"].get("digest"),
        ):  # no comparison with its rows:
            if trial["rows"]:  # they stay in the file apart, and in bench/README.md marked as such
                results.setdefault("earlier_trials", {}).setdefault(name, []).append(dict(trial))
            trial.update(config=preset_name, rows={})
        commit = _commit()
        trial.update(config_digest=digest, data=entry["dataset"].get("digest"), commit=commit, run_seed=seeds[0])
        trials(
            name,
            run_dir / "stages",
            data_dir,
            run_dir / "config.yaml",
            seeds,
            changes,
            trial,
            commit,
            lambda: save_results(out, results),
        )
        save_results(out, results)

    if args.ablations:
        name, seed = args.ablation_set, seeds[0]
        data_dir, entry = prepare_set(name, work, results, False)
        run_dir = ensure_run(name, seed, data_dir, preset, preset_name, entry, work)
        results["ablations"] = {
            "set": name,
            "seed": seed,
            "config": preset_name,
            "date": datetime.date.today().isoformat(),
            "rows": ablations(run_dir / "stages", data_dir, run_dir / "config.yaml"),
        }
        save_results(out, results)

    print(f"[{out}]")
    for name in names:
        summary = results["sets"][name]["summary"]
        if summary.get("seeds"):
            print(
                f"{name}: INT8 {summary['mean']:.4f} over seeds {summary['seeds']} (spread {summary['spread']:.4f}), "
                f"margin over regression {summary['margin_over_regression']:+.4f}: {summary['status']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

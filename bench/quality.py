"""`make bench-quality`: does the recipe learn what a simple model can?

    python bench/quality.py [--config configs/fast.yaml] [--out bench/quality.json] [--keep DIR] [--ablations]

On the generated hard set (``mobiletag.data.sample.make_hard_dataset``: 96-px images with 0-3
of ten small shapes in four slots, each a random dark colour; 420 / 90 / 90 images) it runs
``mobiletag train`` with the preset the demo and the tests use, and computes in the same run:

- a logistic regression per class on raw grey pixels at 24x24 and at 48x48 (standardised;
  its C chosen from 0.01 / 0.1 / 1 by validation macro mAP, then scored on test);
- a constant predictor (each class's training prevalence for every image).

With ``--ablations`` it then trains the student stage again under each recipe change undone
(the run's teacher and dataset, one fresh process each) and records its validation and test
macro mAP (float, the stored test JPEGs): the measured effect of each choice.

The figure to beat is the better of the two regressions; the goal is the INT8 model's test
macro mAP at least 0.05 above it. Everything is seeded: the dataset, the training
(``reproducible: true``) and the regressions (lbfgs, deterministic) give the same figures on
every run of the same machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GOAL_MARGIN = 0.05
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
    """[N, side*side] float32 in [0, 1]: each image in grey, resized (bilinear) to side x side."""
    from PIL import Image

    out = np.empty((len(paths), side * side), np.float32)
    for i, rel in enumerate(paths):
        with Image.open(data_dir / "images" / rel) as image:
            grey = image.convert("L").resize((side, side), Image.Resampling.BILINEAR)
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
work, out, preset, overrides = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
config = load_config(preset, overrides)
result = train_student.run(config, work / "dataset", work / "teacher", out)
test = make_dataset(work / "dataset", "test", image_sizes=[config.student.image_size], batch_size=32,
                    training=False, num_classes=dataset_facts(work / "dataset").num_classes, config=config)
scores, labels = predict_scores(load_float32(out / "student_best.h5"), test, preprocess)
print("RESULT " + json.dumps({"val_map": result.metrics["val_map"],
                              "test_map": round(float(mean_average_precision(labels, scores)), 4)}))
"""


def ablations(work: Path, config: Path) -> list[dict]:
    """The student stage under each of ABLATIONS (its own process), on the run's dataset and teacher."""
    rows = []
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    for name, overrides in ABLATIONS:
        started = time.perf_counter()
        cmd = [
            sys.executable,
            "-c",
            ABLATION_SCRIPT,
            str(work),
            str(work / "ablation"),
            str(config),
            json.dumps(overrides),
        ]
        done = subprocess.run(cmd, check=True, env=env, cwd=REPO, capture_output=True, text=True)
        line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
        rows.append(
            {
                "name": name,
                "overrides": overrides,
                **json.loads(line[7:]),
                "seconds": round(time.perf_counter() - started),
            }
        )
        print(f"  {name}: validation {rows[-1]['val_map']:.4f}, test {rows[-1]['test_map']:.4f}", flush=True)
    return rows


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "fast.yaml"), help="training preset")
    parser.add_argument("--out", default=str(REPO / "bench" / "quality.json"), help="results file")
    parser.add_argument("--keep", help="folder to keep the dataset and the run's output in (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--ablations", action="store_true", help="also train the student under each ABLATIONS entry")
    args = parser.parse_args(argv)

    from mobiletag.data.sample import make_hard_dataset

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mobiletag-quality-"))
    data_dir, out_dir = work / "data", work / "output"
    started = time.perf_counter()
    counts = make_hard_dataset(data_dir, seed=args.seed)
    base = baselines(data_dir)
    metrics = train(data_dir, Path(args.config), out_dir, work / "stages")
    regression = max(v["test_map"] for k, v in base.items() if k.startswith("logistic_regression"))
    int8 = metrics["test"]["map_macro"]
    margin = round(int8 - regression, 4)
    result = {
        "dataset": {"kind": "hard", "seed": args.seed, **counts},
        "config": os.path.relpath(args.config, REPO),
        "int8_test_map": int8,
        "float_student_test_map": metrics["compare"]["student"]["map_macro"],
        "teacher_test_map": metrics["compare"]["teacher"]["map_macro"],
        "shipped_student": (metrics.get("distillation") or {}).get("shipped"),
        "baselines": base,
        "best_regression_test_map": regression,
        "margin_over_regression": margin,
        "goal": f"INT8 test macro mAP >= best regression + {GOAL_MARGIN}",
        "status": "met" if margin >= GOAL_MARGIN else "missed",
        "ablations": ablations(work / "stages", Path(args.config)) if args.ablations else None,
        "seconds": round(time.perf_counter() - started),
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    results = Path(args.out).with_name("results.json")
    if results.is_file():  # bench/README.md shows this file's table too: keep it current
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import readme

        print("wrote", readme.write(results))
    print(
        f"hard set ({counts['train']}/{counts['val']}/{counts['test']}): INT8 test macro mAP {int8:.4f}, "
        f"logistic regression {regression:.4f}, constant {base['constant']['test_map']:.4f}: "
        f"margin {margin:+.4f} (goal +{GOAL_MARGIN}) {result['status']}  [{args.out}]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`mobiletag train`: the KFP pipeline run with kfp.local on a tiny dataset, end to end."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mobiletag.artifacts import OutputFolder

from ..conftest import Background

pytestmark = pytest.mark.slow

CONTRACT = OutputFolder.FILES  # pinned name by name in tests/unit/test_artifacts.py


def _command(args) -> list[str]:
    return [str(Path(sys.executable).parent / "mobiletag"), *map(str, args)]


def mobiletag(*args, timeout=1200):
    return subprocess.run(
        _command(args), capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )


# the two pipeline runs overlap: each spends most of its time starting processes and tracing, on one core
PIPELINE_TIMEOUT = 2400


@pytest.fixture(scope="module")
def inprocess_started(sample_dir, tiny_overrides_text, tmp_path_factory) -> Iterator[tuple[Background, Path]]:
    """The same data and config as ``run``, through `--runner inprocess`, started: (process, output folder)."""
    root = tmp_path_factory.mktemp("inprocess_run")
    config = root / "tiny.yaml"
    config.write_text(tiny_overrides_text)
    args = ["train", "--runner", "inprocess", "--data-dir", sample_dir, "--out-dir", root / "out", "--config", config]
    started = Background(_command(args), root, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    yield started, root / "out"
    started.stop()


@pytest.fixture(scope="module")
def run(sample_dir, tiny_overrides_text, tmp_path_factory, request):
    """The one pipeline run of this module: (output folder, console, work dir it kept). When a test of the
    session compares it with the in-process run, that run goes on meanwhile."""
    if any("inprocess_out" in item.fixturenames for item in request.session.items):
        request.getfixturevalue("inprocess_started")
    root = tmp_path_factory.mktemp("local_run")
    config = root / "tiny.yaml"
    config.write_text(tiny_overrides_text)
    work = root / "work"
    result = mobiletag(
        "train",
        "--data-dir",
        sample_dir,
        "--out-dir",
        root / "out",
        "--config",
        config,
        "--work-dir",
        work,
        timeout=PIPELINE_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    # it ran through kfp.local (whose task lines the console keeps)
    assert "Task 'prepare-dataset' finished with status SUCCESS" in result.stdout + result.stderr
    return root / "out", result.stdout, work


@pytest.fixture(scope="module")
def inprocess_out(inprocess_started) -> Path:
    """The in-process run's output folder, once it ended."""
    started, out = inprocess_started
    result = started.wait(PIPELINE_TIMEOUT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Executing task" not in result.stdout + result.stderr
    return out


# measured times, not results of the program: LiteRT's ms/image and MediaPipe's decode and classify ms/image
TIMING_FIELDS = (("latency_ms",), ("mediapipe", "timings_ms_per_image"))


def _without_timings(metrics: dict) -> dict:
    metrics = json.loads(json.dumps(metrics))
    for path in TIMING_FIELDS:
        block = metrics
        for key in path[:-1]:
            block = block[key]
        del block[path[-1]]
    return metrics


@pytest.fixture(scope="module")
def output(run):
    out, stdout, _ = run
    return out, stdout


def test_output_folder_is_the_contract(output):
    out, stdout = output
    assert {p.name for p in out.iterdir()} == CONTRACT
    assert f"model:   {out / 'model_qat_int8.tflite'}" in stdout


def _sklearn_figures(run) -> dict[str, float]:
    """metrics.json's test figures by scikit-learn, from the scores and labels evaluate kept and the
    shipped thresholds; macro figures over the classes with test positives."""
    from sklearn import metrics as sk

    out, _, work = run
    (evaluation,) = (work / "pipeline_root").glob("*/evaluate/evaluation")
    scores, labels = np.load(evaluation / "test_scores.npy"), np.load(evaluation / "test_labels.npy").astype(int)
    config = json.loads((out / "inference_config.json").read_text())
    predicted = (scores >= np.array([config["thresholds"][c] for c in config["labels"]])[None, :]).astype(int)
    present = labels.sum(axis=0) > 0
    ap = [sk.average_precision_score(labels[:, c], scores[:, c]) for c in np.flatnonzero(present)]
    f1 = sk.f1_score(labels, predicted, average=None, zero_division=0)
    return {
        "map_macro": float(np.mean(ap)),
        "map_micro": sk.average_precision_score(labels.ravel(), scores.ravel()),
        "f1_macro": float(f1[present].mean()),
        "f1_micro": sk.f1_score(labels, predicted, average="micro", zero_division=0),
        "precision_micro": sk.precision_score(labels, predicted, average="micro", zero_division=0),
        "recall_micro": sk.recall_score(labels, predicted, average="micro", zero_division=0),
        "exact_match": sk.accuracy_score(labels, predicted),
        "hamming_loss": sk.hamming_loss(labels, predicted),
    }


def test_labels_and_metrics(run, output, sample_dir):
    out, _ = output
    labels = (out / "labels.txt").read_text().splitlines()
    assert labels == ["circle", "cross", "ring", "square", "star", "triangle"]
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    with open(sample_dir / "test_labels.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert test["num_images"] == len(rows)
    assert {key: test[key] for key in _sklearn_figures(run)} == pytest.approx(_sklearn_figures(run), abs=1e-4)
    assert set(test["per_class"]) == set(labels)
    for name, m in test["per_class"].items():
        assert m["support"] == sum(name in r["labels"].split("|") for r in rows)
    assert set(metrics["compare"]) == {"teacher", "student", "student_int8"}
    assert metrics["compare"]["student_int8"]["map_macro"] == test["map_macro"]
    # the shipped model learnt something: a constant score ranks nothing, its AP for a
    # class is the class's prevalence; on these 15 test images the INT8 model's mAP is 0.49 or so
    prevalence = [m["support"] / len(rows) for m in test["per_class"].values() if m["support"]]
    constant_map = sum(prevalence) / len(prevalence)
    assert test["map_macro"] >= constant_map + 0.15, (test["map_macro"], constant_map)
    assert metrics["size_bytes"] == (out / "model_qat_int8.tflite").stat().st_size
    assert metrics["latency_ms"]["threads_1"] > 0 and metrics["latency_ms"]["threads_2"] > 0


def test_inprocess_runner_gives_the_same_metrics(run, inprocess_out):
    """`--runner inprocess` runs the program the cluster runs: the same entry points with the same
    per-stage config, so with ``reproducible: true`` it gives kfp.local's metrics.json, every figure
    but the measured times."""
    kfp_local = json.loads((run[0] / "metrics.json").read_text())
    inprocess = json.loads((inprocess_out / "metrics.json").read_text())
    assert inprocess["test"] == kfp_local["test"]
    assert inprocess["distillation"] == kfp_local["distillation"]
    assert _without_timings(inprocess) == _without_timings(kfp_local)
    for name in ("threshold_recommendation.json", "inference_config.json", "labels.txt"):
        assert (inprocess_out / name).read_bytes() == (run[0] / name).read_bytes(), name


def test_thresholds_and_inference_config(output):
    out, _ = output
    rec = json.loads((out / "threshold_recommendation.json").read_text())
    config = json.loads((out / "inference_config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert rec["strategy"] == "f1" and rec["split"] == "val"
    for name, entry in rec["classes"].items():
        assert set(entry) >= {"threshold", "precision", "recall", "f1", "support"}
        assert config["thresholds"][name] == entry["threshold"] == metrics["test"]["per_class"][name]["threshold"]
    assert config["model_file"] == "model_qat_int8.tflite"
    assert config["input"]["shape"] == [1, 32, 32, 3] and config["input"]["dtype"] == "uint8"
    assert config["input"]["quantization"] == {"scale": 1.0, "zero_point": 0}  # raw pixels in
    assert config["output"]["dtype"] == "uint8" and config["output"]["quantization"]["scale"] == 1 / 256
    assert config["labels"] == (out / "labels.txt").read_text().splitlines()


def test_model_is_integer_and_checkpoints_load(output):
    import tf_keras as keras

    from mobiletag.export.litert import TFLiteModel
    from mobiletag.quantization.qat import load_qat_model

    out, _ = output
    model = TFLiteModel(out / "model_qat_int8.tflite")
    assert model.float_ops() == [] and model.input.dtype == "uint8"
    probs = model.predict(np.zeros((1, 32, 32, 3), np.float32))
    levels = probs * 256  # the uint8 output dequantized: k / 256, k = 0..255
    assert probs.shape == (1, 6) and np.array_equal(levels, np.round(levels)) and levels.max() <= 255
    assert keras.models.load_model(out / "teacher_best.h5", compile=False).output_shape == (None, 6)
    assert keras.models.load_model(out / "student_best.h5", compile=False).output_shape == (None, 6)
    assert load_qat_model(out / "student_qat.h5").output_shape == (None, 6)


def test_predict_command(output, sample_dir):
    out, _ = output
    with open(sample_dir / "test_labels.csv", encoding="utf-8") as fh:
        first = next(csv.DictReader(fh))["filepath"]
    result = mobiletag("predict", "--model-dir", out, "--json", sample_dir / "images" / first, timeout=300)
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)
    assert set(entry["scores"]) == set((out / "labels.txt").read_text().splitlines())
    config = json.loads((out / "inference_config.json").read_text())
    assert set(entry["labels"]) == {k for k, v in entry["scores"].items() if v >= config["thresholds"][k]}


def test_failed_stage_names_it_and_leaves_no_output(sample_dir, tiny_overrides_text, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(sample_dir, broken)
    with open(broken / "val_labels.csv", encoding="utf-8") as fh:
        first = next(csv.DictReader(fh))["filepath"]
    (broken / "images" / first).write_bytes(b"not a jpeg")  # found only when prepare_dataset decodes
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_overrides_text)
    result = mobiletag("train", "--data-dir", broken, "--out-dir", tmp_path / "out", "--config", config, timeout=300)
    assert result.returncode == 2
    assert "Inner task failed: 'prepare-dataset'" in result.stderr
    assert f"val_labels.csv line 2 ({first}): not an image PIL can read" in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


def test_csv_error_stops_before_any_stage(sample_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(sample_dir, broken)
    with open(broken / "train_labels.csv", "a", encoding="utf-8") as fh:
        fh.write("/etc/passwd,circle\n")
    result = mobiletag("train", "--data-dir", broken, "--out-dir", tmp_path / "out", timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train_labels.csv line" in result.stderr and "is absolute" in result.stderr
    assert "Executing task" not in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


# === What each step downloads: originals never travel through the artifact store ===

METADATA_BOUND = 64 * 1024  # bytes: labels.txt, stats.json, originals.json of the tiny dataset


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _originals(sample_dir: Path) -> dict[str, Path]:
    """The val and test source files by their SHA-256."""
    out = {}
    for split in ("val", "test"):
        with open(sample_dir / f"{split}_labels.csv", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                path = sample_dir / "images" / row["filepath"]
                out[_sha256(path)] = path
    return out


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def compiled_spec(tmp_path: Path) -> dict:
    """pipeline.py compiled to YAML and parsed: the pipeline spec (the first of its documents; the
    second is the Kubernetes platform spec)."""
    import yaml

    from mobiletag.runners.kfp_local import load_pipeline_module

    path = load_pipeline_module().compile_pipeline(str(tmp_path / "pipeline.yaml"))
    return next(yaml.safe_load_all(Path(path).read_text()))


def gpu_task_downloads(spec: dict, run_dir: Path) -> dict[str, dict[str, tuple[str, int]]]:
    """For each task whose executor requests an accelerator: its input artifacts, each as
    (producer task/output key, bytes the KFP launcher would download for it).

    The launcher downloads every input artifact whole (backend/src/v2/component/launcher_v2.go,
    downloadArtifacts, 2.17.0); kfp.local keeps a task's outputs in
    <pipeline root>/<pipeline>-<timestamp>/<component name without comp->/<output key>/.
    """
    tasks = spec["root"]["dag"]["tasks"]
    executors = spec["deploymentSpec"]["executors"]
    folder_of = {name: task["componentRef"]["name"].removeprefix("comp-") for name, task in tasks.items()}
    out: dict[str, dict[str, tuple[str, int]]] = {}
    for name, task in tasks.items():
        component = spec["components"][task["componentRef"]["name"]]
        if "executorLabel" not in component:
            continue  # a sub-DAG (dsl.If): its tasks run on CPUs
        resources = executors[component["executorLabel"]].get("container", {}).get("resources", {})
        if "accelerator" not in resources:
            continue
        out[name] = {}
        for key, source in task.get("inputs", {}).get("artifacts", {}).items():
            producer = source["taskOutputArtifact"]
            folder = run_dir / folder_of[producer["producerTask"]] / producer["outputArtifactKey"]
            assert folder.is_dir(), folder
            out[name][key] = (f"{producer['producerTask']}/{producer['outputArtifactKey']}", _folder_bytes(folder))
    return out


def test_no_copy_of_any_original_under_the_work_dir(run, sample_dir):
    out, _, work = run
    originals = _originals(sample_dir)
    assert len(originals) == 21 + 15
    copies = [p for p in work.rglob("*") if p.is_file() and _sha256(p) in originals]
    assert copies == []
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["num_images"] == 15 and metrics["mediapipe"]["num_images"] == 15


def test_gpu_steps_download_the_tfrecords_and_small_metadata_only(run, sample_dir, tmp_path):
    _, _, work = run
    (run_dir,) = [p for p in (work / "pipeline_root").iterdir() if p.is_dir() and not p.name.startswith(".")]
    dataset = run_dir / "prepare-dataset" / "dataset"
    shards = sum(p.stat().st_size for p in dataset.glob("*.tfrecord"))
    metadata = _folder_bytes(dataset) - shards
    originals = sum(p.stat().st_size for p in _originals(sample_dir).values())
    downloads = gpu_task_downloads(compiled_spec(tmp_path), run_dir)
    print(f"TFRecords {shards} bytes, metadata {metadata} bytes, val/test originals {originals} bytes")
    for task, inputs in sorted(downloads.items()):
        print(f"{task}: " + ", ".join(f"{key} from {source}: {size} bytes" for key, (source, size) in inputs.items()))
    assert sorted(downloads) == ["quantize", "train-student", "train-student-baseline", "train-teacher"]
    assert 0 < metadata < METADATA_BOUND and originals > METADATA_BOUND and shards + metadata < originals
    for task, inputs in downloads.items():
        assert inputs["dataset"] == ("prepare-dataset/dataset", shards + metadata), task
        # the other inputs are the checkpoints the step trains from (teacher, student): models, no images
        for key, (source, _) in inputs.items():
            assert key == "dataset" or source.endswith("/model"), (task, key, source)
    assert set(downloads["train-student-baseline"]) == {"dataset"}  # it reads no teacher: it only waits for it


def test_kfp_local_writes_the_html_output_and_bundle_deletes_the_backups(run):
    out, stdout, work = run
    (html,) = (work / "pipeline_root").glob("*/evaluate/report_html")
    assert html.read_bytes() == (out / "report.html").read_bytes()
    assert f"{out / 'report.html'}" in stdout  # mobiletag train prints where it is
    # every training step kept its backups under <work>/backup/<run id>/ until bundle deleted them
    assert [p.name for p in (work / "backup").iterdir()] == []

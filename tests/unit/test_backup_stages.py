"""Training stages with backups on, as a cluster runs them: they train exactly as without
backups; a pod lost at any point resumes, or re-produces its outputs, without training a
phase again or skipping one; the run's backups are deleted by the bundle stage only."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mobiletag import storage
from mobiletag.artifacts import OutputFolder
from mobiletag.config import load_config
from mobiletag.errors import StorageError
from mobiletag.training.backup import Backup, backup_prefix
from mobiletag.training.phases import TEACHER_FINE_TUNE as PHASE_B
from mobiletag.training.phases import TEACHER_HEAD

from ..conftest import REPO, TINY, run_at_once
from .test_gcs import BUCKET
from .test_reproducible import _weights

# phase B long enough for early stopping (patience 1, counted from epoch 2 of 4: the middle of the cosine
# decay) and a best epoch of its own to matter
TEACHER = {"teacher": {"head_epochs": 1, "fine_tune_epochs": 4, "early_stopping_patience": 1}}


class Killed(Exception):
    """The pod is gone."""


def _teacher_config(**teacher: Any):
    return load_config(REPO / "configs" / "fast.yaml", TINY, TEACHER, {"teacher": teacher})


def _run_teacher(
    config, dataset_dir: Path, out: Path, monkeypatch, fits: dict[str, dict] | None = None, **backup: str
) -> tuple[Any, dict[str, dict]]:
    """The teacher stage; ``fits`` gets, for each fit (by name), its result and the weights it started
    and ended with (also when the stage raises)."""
    from mobiletag.stages import train_teacher
    from mobiletag.training import stage_runner

    fits = {} if fits is None else fits
    real = stage_runner.fit

    def recording(trainer, *args, name, **kwargs):
        start = trainer.model.get_weights()
        result = real(trainer, *args, name=name, **kwargs)
        fits[name] = {"result": result, "start": start, "end": trainer.model.get_weights()}
        return result

    monkeypatch.setattr(stage_runner, "fit", recording)
    try:
        return train_teacher.run(config, dataset_dir, out, **backup), fits
    finally:
        monkeypatch.setattr(stage_runner, "fit", real)


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


_STAGE_IN_A_PROCESS = """
import dataclasses, json, sys
from mobiletag.config import load_config
from mobiletag.stages import train_student, train_teacher
from mobiletag.training import stage_runner
stage = {"teacher": train_teacher, "student": train_student}[sys.argv[1]]
fits = {}
real = stage_runner.fit
def recording(*args, name, **kwargs):
    result = real(*args, name=name, **kwargs)
    fits[name] = dataclasses.asdict(result)
    return result
stage_runner.fit = recording
config, dataset, out = load_config(sys.argv[2]), sys.argv[3], sys.argv[4]
backup = dict(backup_uri=sys.argv[5], run_id=sys.argv[6]) if len(sys.argv) > 5 else {}
if stage is train_teacher:
    result = stage.run(config, dataset, out, **backup)
else:  # student.alpha 1: no teacher is read
    result = stage.run(config, dataset, "no-teacher", out, **backup)
print("FITS " + json.dumps({"fits": fits, "metrics": result.metrics}))
"""


def _stage_command(stage: str, config, dataset_dir: Path, out: Path, *backup: str) -> list[str]:
    """A training stage in a process of its own, as the pipeline runs it (the first training of a process
    and a later one in the same process do not give the same weights): the command."""
    import sys

    out.parent.mkdir(parents=True, exist_ok=True)
    config_file = out.parent / f"{out.name}.yaml"
    config_file.write_text(config.to_yaml())
    return [sys.executable, "-c", _STAGE_IN_A_PROCESS, stage, str(config_file), str(dataset_dir), str(out), *backup]


def _stage_result(done) -> dict[str, Any]:
    """What the stage's process printed: its fits' results and metrics."""
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.split("FITS ")[1])


def _same_fits(off: dict[str, Any], on: dict[str, Any], names: tuple[str, ...]) -> None:
    assert set(off["fits"]) == set(on["fits"]) == set(names)
    for name in names:
        a, b = off["fits"][name], on["fits"][name]
        for key in ("epochs_run", "best_epoch", "best_val_map", "history"):
            assert b[key] == a[key], (name, key)


def _same_h5(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and len(wa) > 100
    assert all(np.array_equal(wa[k], wb[k]) for k in wa)  # bit for bit


@pytest.fixture(scope="module")
def teacher_runs(tfrecord_dir, tmp_path_factory) -> dict[str, Any]:
    """The teacher stage without backups, and with a local backup (run-1), each in a process of its own, both
    at once."""
    root = tmp_path_factory.mktemp("teacher-runs")
    config = _teacher_config()
    backup_uri = str(root / "backups")
    commands = [
        _stage_command("teacher", config, tfrecord_dir, root / "off"),
        _stage_command("teacher", config, tfrecord_dir, root / "on", backup_uri, "run-1"),
    ]
    off, on = run_at_once(commands, root / "logs", timeout=1800)
    return {
        "config": config,
        "backup_uri": backup_uri,
        "off": _stage_result(off),
        "on": _stage_result(on),
        "off_dir": root / "off",
        "on_dir": root / "on",
    }


# === Backups on or off: the same training ===


@pytest.mark.slow
def test_teacher_phase_b_trains_the_same_with_backups_on_and_off(teacher_runs):
    """A fresh phase B does not take the head phase's best figure and epoch from the shared checkpoint's
    sidecar (the backup folder it has just created is no backup to resume): its early stopping starts from
    -inf and its best_epoch is its own."""
    off, on = teacher_runs["off"], teacher_runs["on"]
    _same_fits(off, on, (TEACHER_HEAD, PHASE_B))
    assert off["fits"][TEACHER_HEAD]["epochs_run"] == 1
    # phase B's first counted epoch (2) improves on nothing yet (-inf) for early stopping: it never stops
    # after it (it did when early stopping took the head phase's best figure)
    assert off["fits"][PHASE_B]["epochs_run"] == 4
    for key in ("val_map", "epochs_phase_a", "epochs_phase_b"):
        assert on["metrics"][key] == off["metrics"][key], key
    _same_h5(teacher_runs["off_dir"] / "teacher_best.h5", teacher_runs["on_dir"] / "teacher_best.h5")


# === A pod lost after the stage wrote its outputs ===


@pytest.mark.slow
def test_a_stage_retried_after_its_outputs_were_written_does_not_train_again(
    teacher_runs, tfrecord_dir, tmp_path, monkeypatch
):
    """The KFP launcher stores a step's outputs after the stage returns: a pod lost in between is retried.
    The stage keeps its backup when it returns, and the retry loads the results instead of training."""
    from mobiletag.training.fit import Trainer

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(Trainer, "fit", no_training)
    retry, fits = _run_teacher(
        teacher_runs["config"],
        tfrecord_dir,
        tmp_path / "retry",
        monkeypatch,
        backup_uri=teacher_runs["backup_uri"],
        run_id="run-1",
    )
    first = teacher_runs["on"]
    assert set(fits) == {PHASE_B}  # the warm-up's weights and result come from the backup, fit is not called
    assert dataclasses.asdict(fits[PHASE_B]["result"]) == first["fits"][PHASE_B]
    for key in ("val_map", "epochs_phase_a", "epochs_phase_b", "train_images_per_second"):
        assert retry.metrics[key] == first["metrics"][key], key
    w_first = _weights(teacher_runs["on_dir"] / "teacher_best.h5")
    w_retry = _weights(tmp_path / "retry" / "teacher_best.h5")
    assert w_first.keys() == w_retry.keys() and all(np.array_equal(w_first[k], w_retry[k]) for k in w_first)
    history = json.loads((tmp_path / "retry" / "teacher_metrics.json").read_text())["history"]
    assert history == json.loads((teacher_runs["on_dir"] / "teacher_metrics.json").read_text())["history"]
    assert (Path(teacher_runs["backup_uri"]) / "run-1" / "train-teacher").is_dir()  # still there for the next retry


# === A pod lost between a phase's end and the backup save of its weights ===


@pytest.mark.slow
def test_a_pod_lost_before_the_phase_weights_are_saved_does_not_skip_the_phase(
    gcs, tfrecord_dir, tmp_path, monkeypatch
):
    """The head phase's done marker and its weights go to gs:// in one save: a pod lost before that save
    leaves a retry that trains the head phase again, never one that fine-tunes from the untrained head."""
    config = _teacher_config(fine_tune_epochs=0)  # phase B only records the weights it would start from
    backup = {"backup_uri": f"gs://{BUCKET}/backups", "run_id": "run-1"}
    real_save = Backup.save

    def lost_when_the_weights_are_saved(self):
        if self.local_dir is not None and (self.local_dir / "phase_a_done" / "weights.index").is_file():
            raise Killed
        return real_save(self)

    monkeypatch.setattr(Backup, "save", lost_when_the_weights_are_saved)
    lost: dict[str, dict] = {}
    with pytest.raises(Killed):
        _run_teacher(config, tfrecord_dir, tmp_path / "pod-1", monkeypatch, lost, **backup)
    assert set(lost) == {TEACHER_HEAD}  # lost before phase B
    monkeypatch.setattr(Backup, "save", real_save)

    _, fits = _run_teacher(config, tfrecord_dir, tmp_path / "pod-2", monkeypatch, **backup)
    warmed, untrained = lost[TEACHER_HEAD]["end"], lost[TEACHER_HEAD]["start"]
    assert not _same(warmed, untrained)
    assert _same(fits[PHASE_B]["start"], warmed)  # phase B starts from the warm-up's weights, bit for bit
    assert fits[TEACHER_HEAD]["result"].best_val_map == lost[TEACHER_HEAD]["result"].best_val_map
    assert (tmp_path / "pod-2" / "teacher_best.h5").is_file()


# === The bundle stage deletes the run's backups, once the outputs are stored ===


def _stage_inputs(root: Path) -> dict[str, Path]:
    """Folders holding what the bundle stage copies (file contents do not matter here)."""
    dirs = {}
    for key, names in OutputFolder.SOURCES.items():
        dirs[key] = root / key
        dirs[key].mkdir(parents=True)
        for name in names:
            (dirs[key] / name).write_bytes(b"{}")
    (dirs["tflite_dir"] / "labels.txt").write_text("a\nb\n")
    (dirs["thresholds_dir"] / "threshold_recommendation.json").write_text(
        json.dumps({"classes": {"a": {"threshold": 0.4}, "b": {"threshold": 0.6}}})
    )
    return dirs


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_bundle_deletes_the_runs_backups_after_writing_the_output_and_nothing_else(tmp_path, monkeypatch):
    from mobiletag.stages import bundle

    monkeypatch.setattr(bundle, "TFLiteModel", lambda path: path)
    monkeypatch.setattr(bundle, "build_inference_config", lambda model, labels, thresholds: {"labels": labels})
    backups = tmp_path / "backups"
    for task in ("train-teacher", "train-student", "train-student-baseline", "quantize"):
        (backups / "run-1" / task / "best").mkdir(parents=True)
        (backups / "run-1" / task / "best" / "x.h5").write_bytes(task.encode())
    (backups / "run-10" / "train-teacher").mkdir(parents=True)
    (backups / "run-10" / "train-teacher" / "keep.bin").write_bytes(b"run-10")
    (backups / "run-1.txt").write_bytes(b"beside the run's folder")
    others = {k: v for k, v in _tree(backups).items() if not k.startswith("run-1/")}
    inputs = _stage_inputs(tmp_path / "in")

    # a bundle that fails leaves every backup: its retry, or a retry of the run, still needs them
    (inputs["eval_dir"] / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError):
        bundle.run(**inputs, out_dir=tmp_path / "out", backup_uri=str(backups), run_id="run-1")
    assert len(_tree(backups / "run-1")) == 4

    (inputs["eval_dir"] / "metrics.json").write_text("{}")
    result = bundle.run(**inputs, out_dir=tmp_path / "out", backup_uri=str(backups), run_id="run-1")
    assert "inference_config.json" in result.details["files"] and (tmp_path / "out" / "metrics.json").is_file()
    assert not (backups / "run-1").exists()
    assert _tree(backups) == others  # run-10 and the file beside run-1 are untouched

    # backups off (the defaults): nothing to delete; on with no run id: an error before any work
    bundle.run(**inputs, out_dir=tmp_path / "out2")
    assert _tree(backups) == others
    with pytest.raises(StorageError, match="run id for training backups is empty"):
        bundle.run(**inputs, out_dir=tmp_path / "out3", backup_uri=str(backups), run_id="")
    assert not (tmp_path / "out3").exists()


def test_clear_run_on_gcs_deletes_one_runs_prefix_only(gcs, tmp_path):
    from mobiletag.training.backup import clear_run

    root = f"gs://{BUCKET}/backups"
    for run_id, task in [("run-1", "train-teacher"), ("run-1", "quantize"), ("run-10", "train-teacher")]:
        backup = Backup(backup_prefix(root, run_id, task), local_root=tmp_path)
        (backup.local_dir / "chief").mkdir(parents=True)
        (backup.local_dir / "chief" / "checkpoint").write_bytes(f"{run_id} {task}".encode())
        backup.save()
    storage.write_bytes(f"{root}/run-1.txt", b"beside")
    before = {o.name: o.generation for o in storage.list_prefix(root)}
    assert clear_run(root, "run-1") == 4  # two manifests and two data objects
    after = {o.name: o.generation for o in storage.list_prefix(root)}
    assert after == {k: v for k, v in before.items() if not k.startswith("run-1/")}
    assert "run-1.txt" in after and any(k.startswith("run-10/") for k in after)
    assert clear_run(None, "run-1") == clear_run("", "") == 0

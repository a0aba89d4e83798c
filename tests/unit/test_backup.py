"""Training backups on gs:// against a real GCS emulator (gcp-storage-emulator on loopback) with
the real google-cloud-storage client, and on a local folder without any GCS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mobiletag import storage
from mobiletag.errors import StorageError
from mobiletag.training.backup import MANIFEST, Backup, backup_prefix, clear_run, safe_segment

from .test_gcs import BUCKET

ROOT = f"gs://{BUCKET}/backups"


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _remote(prefix: str) -> dict[str, int | None]:
    """Object name (relative to prefix) -> generation."""
    return {o.name: o.generation for o in storage.list_prefix(prefix)}


def _state_a() -> dict[str, bytes]:
    return {
        "chief/checkpoint": b'model_checkpoint_path: "ckpt-1"\n',
        "chief/ckpt-1.index": os.urandom(700),
        "chief/ckpt-1.data-00000-of-00001": os.urandom(9 * 1024 * 1024 + 5),  # > 8 MiB: resumable upload
        "best/student_best.h5": os.urandom(50_000),
        "best/empty.json": b"",
        "phase_a_done/weights.index": bytes(range(256)) * 4,
    }


# === Prefixes ===


def test_backup_prefix_joins_as_text_and_keeps_runs_and_tasks_apart(tmp_path):
    assert backup_prefix("gs://b/backups/", "run-1", "train-student") == "gs://b/backups/run-1/train-student"
    assert backup_prefix("gs://b", "run-1", "train-teacher") == "gs://b/run-1/train-teacher"
    assert backup_prefix(str(tmp_path), "run-1", "quantize") == str(tmp_path / "run-1" / "quantize")
    assert backup_prefix(None, "run-1", "x") is None and backup_prefix("", "run-1", "x") is None
    assert backup_prefix("  ", "run-1", "x") is None
    uuid = "3f2b0c1e-6f3a-4c55-9d3e-0a1b2c3d4e5f"
    assert safe_segment(uuid) == uuid  # KFP run ids stay readable
    # unsafe ids become one segment, and two ids that read the same once cleaned still differ
    a, b = safe_segment("a/b"), safe_segment("a b")
    assert a.startswith("a-b-") and b.startswith("a-b-") and a != b and "/" not in a
    assert safe_segment("..") not in ("", ".", "..") and "/" not in safe_segment("../../etc")
    assert len(safe_segment("x" * 500)) <= 100
    with pytest.raises(StorageError, match="run id for training backups is empty"):
        backup_prefix("gs://b/backups", "", "train-student")
    with pytest.raises(StorageError, match="unresolved placeholder"):
        backup_prefix("gs://b/backups", "{{$.pipeline_job_uuid}}", "train-student")
    with pytest.raises(StorageError, match="has no bucket name"):
        backup_prefix("gs:///backups", "run-1", "train-student")


def test_disabled_backup_does_nothing(tmp_path):
    backup = Backup(None)
    assert not backup.enabled and backup.local_dir is None
    assert backup.restore() is False
    assert backup.save().uploaded == 0
    backup.clear()
    backup.close()
    assert type(backup.callback()).__name__ == "BackupCallback"


# === gs:// ===


def test_save_and_restore_round_trip_of_a_nested_binary_folder(gcs, tmp_path):
    prefix = backup_prefix(ROOT, "run-1", "train-student")
    files = _state_a()
    first = Backup(prefix, local_root=tmp_path / "pod-1")
    assert first.local_dir is not None and first.local_dir.parent == tmp_path / "pod-1"
    assert first.restore() is False  # nothing there yet
    _write_tree(first.local_dir, files)
    report = first.save()
    assert (report.uploaded, report.unchanged, report.deleted) == (6, 0, 0)
    assert report.uploaded_bytes == sum(len(v) for v in files.values())
    remote = _remote(prefix)
    assert set(remote) == {MANIFEST} | {f"data/1/{rel}" for rel in files}
    manifest = json.loads(storage.read_bytes(f"{prefix}/{MANIFEST}"))
    assert manifest["save"] == 1 and set(manifest["files"]) == set(files)
    assert manifest["files"]["best/empty.json"]["size"] == 0

    assert first.save().uploaded == 0  # nothing changed: no upload, no new manifest
    assert _remote(prefix) == remote

    second = Backup(prefix, local_root=tmp_path / "pod-2")  # a new pod
    assert second.local_dir != first.local_dir
    assert second.restore() is True
    assert _read_tree(second.local_dir) == files
    # unchanged bytes are not uploaded again, whatever their mtime
    os.utime(second.local_dir / "best" / "student_best.h5", ns=(1, 1))
    assert second.save().uploaded == 0
    (second.local_dir / "chief" / "checkpoint").write_bytes(b'model_checkpoint_path: "ckpt-2"\n')
    report = second.save()
    assert (report.uploaded, report.unchanged) == (1, 5)
    assert "data/2/chief/checkpoint" in _remote(prefix) and "data/1/chief/checkpoint" not in _remote(prefix)

    third = Backup(prefix, local_root=tmp_path / "pod-3")
    assert third.restore() is True
    assert _read_tree(third.local_dir) == {**files, "chief/checkpoint": b'model_checkpoint_path: "ckpt-2"\n'}
    local_dir = third.local_dir
    third.close()
    assert not local_dir.exists()  # the private folder goes, the remote backup stays
    assert MANIFEST in _remote(prefix)
    with pytest.raises(StorageError, match="was closed"):
        third.save()  # mirroring a removed folder would delete the backup


def test_deletes_propagate(gcs, tmp_path):
    prefix = backup_prefix(ROOT, "run-1", "train-student")
    backup = Backup(prefix, local_root=tmp_path)
    _write_tree(backup.local_dir, _state_a())
    backup.save()
    # what BackupAndRestore does each epoch: a new checkpoint, the old one removed
    for name in ("ckpt-1.index", "ckpt-1.data-00000-of-00001"):
        (backup.local_dir / "chief" / name).unlink()
    (backup.local_dir / "chief" / "ckpt-2.index").write_bytes(b"index 2")
    (backup.local_dir / "phase_a_done" / "weights.index").unlink()
    (backup.local_dir / "phase_a_done").rmdir()
    report = backup.save()
    assert (report.uploaded, report.deleted) == (1, 3)
    expected = {
        "chief/checkpoint",
        "chief/ckpt-2.index",
        "best/student_best.h5",
        "best/empty.json",
    }
    again = Backup(prefix, local_root=tmp_path)
    assert again.restore() is True
    assert set(_read_tree(again.local_dir)) == expected
    assert not (again.local_dir / "phase_a_done").exists()
    # nothing stale is left behind remotely: the manifest and exactly the objects it names
    manifest = json.loads(storage.read_bytes(f"{prefix}/{MANIFEST}"))
    assert set(_remote(prefix)) == {MANIFEST} | {e["object"] for e in manifest["files"].values()}

    for path in sorted(again.local_dir.rglob("*"), reverse=True):  # everything deleted locally
        path.unlink() if path.is_file() else path.rmdir()
    again.save()
    assert _remote(prefix) == {}  # an empty backup leaves nothing, not even a manifest
    assert Backup(prefix, local_root=tmp_path).restore() is False


def test_a_second_run_never_sees_the_first_runs_files(gcs, tmp_path):
    run1 = Backup(backup_prefix(ROOT, "run-1", "train-student"), local_root=tmp_path)
    files = {"chief/checkpoint": b"run-1 epoch 2", "chief/ckpt-2.index": os.urandom(100)}
    _write_tree(run1.local_dir, files)
    run1.save()
    before = _remote(run1.prefix)

    run2 = Backup(backup_prefix(ROOT, "run-2", "train-student"), local_root=tmp_path)
    assert run2.restore() is False
    assert _read_tree(run2.local_dir) == {}
    _write_tree(run2.local_dir, {"chief/checkpoint": b"run-2 epoch 1"})
    run2.save()
    run2.clear()  # run-2 finished

    assert _remote(run1.prefix) == before  # same objects, same generations: not rewritten, not deleted
    resumed = Backup(backup_prefix(ROOT, "run-1", "train-student"), local_root=tmp_path)
    assert resumed.restore() is True and _read_tree(resumed.local_dir) == files
    # the other tasks of the same run are apart too
    assert Backup(backup_prefix(ROOT, "run-1", "train-teacher"), local_root=tmp_path).restore() is False


def test_clear_deletes_only_its_own_prefix(gcs, tmp_path):
    def saved(run_id: str, task: str) -> Backup:
        backup = Backup(backup_prefix(ROOT, run_id, task), local_root=tmp_path)
        _write_tree(backup.local_dir, {"chief/checkpoint": f"{run_id} {task}".encode()})
        backup.save()
        return backup

    target = saved("run-1", "train-student")
    siblings = [
        saved("run-1", "train-teacher"),
        saved("run-1", "train-student-qat"),  # shares the text prefix "train-student"
        saved("run-10", "train-student"),  # shares the text prefix "run-1"
        saved("run-2", "train-student"),
    ]
    # an object someone put right beside the prefix, with the same start of name
    storage.write_bytes(f"{ROOT}/run-1/train-student.txt", b"not a backup")
    everything = {o.name: o.generation for o in storage.list_prefix(ROOT)}

    local_dir = target.local_dir
    target.clear()
    assert not local_dir.exists()
    assert _remote(target.prefix) == {}
    left = {o.name: o.generation for o in storage.list_prefix(ROOT)}
    assert left == {k: v for k, v in everything.items() if not k.startswith("run-1/train-student/")}
    assert "run-1/train-student.txt" in left
    for sibling in siblings:
        fresh = Backup(sibling.prefix, local_root=tmp_path)
        assert fresh.restore() is True
        assert (fresh.local_dir / "chief" / "checkpoint").read_bytes().decode().endswith(sibling.prefix.split("/")[-1])
    with pytest.raises(StorageError, match="names a whole bucket"):
        storage.delete_prefix(f"gs://{BUCKET}")


def test_a_save_interrupted_midway_leaves_the_previous_backup(gcs, tmp_path, monkeypatch):
    prefix = backup_prefix(ROOT, "run-1", "train-student")
    backup = Backup(prefix, local_root=tmp_path)
    state_a = _state_a()
    _write_tree(backup.local_dir, state_a)
    backup.save()

    # epoch 2: two files change, one is new, one is gone
    (backup.local_dir / "chief" / "checkpoint").write_bytes(b'model_checkpoint_path: "ckpt-2"\n')
    (backup.local_dir / "best" / "student_best.h5").write_bytes(os.urandom(50_000))
    (backup.local_dir / "chief" / "ckpt-2.index").write_bytes(b"index 2")
    (backup.local_dir / "chief" / "ckpt-1.index").unlink()
    state_b = _read_tree(backup.local_dir)

    real_upload = storage.upload_file
    uploads: list[str] = []

    def upload_then_fail(path, uri, retry_deadline=120.0):  # the pod dies after the first upload
        if uploads:
            raise StorageError(f"simulated: the pod was killed while uploading {uri}")
        uploads.append(uri)
        return real_upload(path, uri, retry_deadline)

    monkeypatch.setattr(storage, "upload_file", upload_then_fail)
    with pytest.raises(StorageError, match="simulated"):
        backup.save()
    assert len(uploads) == 1 and "/data/2/" in uploads[0]
    assert any(name.startswith("data/2/") for name in _remote(prefix))  # the orphan is there

    restarted = Backup(prefix, local_root=tmp_path)
    assert restarted.restore() is True
    assert _read_tree(restarted.local_dir) == state_a  # the previous complete backup, byte for byte

    monkeypatch.setattr(storage, "upload_file", real_upload)
    backup.save()  # the next save completes and removes the orphan
    manifest = json.loads(storage.read_bytes(f"{prefix}/{MANIFEST}"))
    assert set(_remote(prefix)) == {MANIFEST} | {e["object"] for e in manifest["files"].values()}
    final = Backup(prefix, local_root=tmp_path)
    assert final.restore() is True and _read_tree(final.local_dir) == state_b


def test_restore_reports_a_missing_object_with_the_fix(gcs, tmp_path):
    prefix = backup_prefix(ROOT, "run-1", "train-student")
    backup = Backup(prefix, local_root=tmp_path)
    _write_tree(backup.local_dir, {"chief/checkpoint": b"x"})
    backup.save()
    storage.delete_object(f"{prefix}/data/1/chief/checkpoint")
    with pytest.raises(StorageError, match=r"lists chief/checkpoint but its object .* is gone.*delete the prefix"):
        Backup(prefix, local_root=tmp_path).restore()
    storage.write_bytes(f"{prefix}/{MANIFEST}", b"{not json")
    with pytest.raises(StorageError, match=r"not a backup manifest .*delete the prefix"):
        Backup(prefix, local_root=tmp_path).restore()


# === Local folders ===


def test_local_prefix_works_without_gcs(tmp_path, monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)

    def no_gcs():
        raise AssertionError("a local backup must not touch Cloud Storage")

    monkeypatch.setattr(storage, "thread_client", no_gcs)
    monkeypatch.setattr(storage, "gcs_client", no_gcs)
    prefix = backup_prefix(str(tmp_path / "backups"), "run-1", "train-student")
    backup = Backup(prefix)
    assert backup.enabled and not backup.remote
    assert backup.local_dir == tmp_path / "backups" / "run-1" / "train-student"
    assert backup.restore() is False
    _write_tree(backup.local_dir, {"chief/checkpoint": b"epoch 2"})
    _write_tree(tmp_path / "backups" / "run-1" / "train-teacher", {"chief/checkpoint": b"teacher"})
    assert backup.save().uploaded == 0
    assert Backup(prefix).restore() is True
    backup.callback().on_epoch_end(0)  # nothing to copy
    backup.clear()
    assert not backup.local_dir.exists()
    assert (tmp_path / "backups" / "run-1" / "train-teacher" / "chief" / "checkpoint").read_bytes() == b"teacher"


# === With Keras ===


def test_keras_training_resumes_through_gcs(gcs, tmp_path):
    """BackupAndRestore writes local_dir, the callback mirrors it; a new pod resumes at the next epoch."""
    import numpy as np
    import tf_keras as keras

    prefix = backup_prefix(ROOT, "run-1", "train-student")
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = (x.sum(axis=1, keepdims=True) > 0).astype("float32")

    def model() -> keras.Model:
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
        m.compile(optimizer="adam", loss="binary_crossentropy")
        return m

    class Killed(Exception):
        pass

    class KillAfterEpoch2(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.weights_at_kill = [w.copy() for w in self.model.get_weights()]
                raise Killed

    class Epochs(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seen: list[int] = []
            self.start_weights = None

        def on_epoch_begin(self, epoch, logs=None):
            self.seen.append(epoch)
            if self.start_weights is None:
                self.start_weights = [w.copy() for w in self.model.get_weights()]

    pod1 = Backup(prefix, local_root=tmp_path / "pod-1")
    assert pod1.restore() is False
    kill = KillAfterEpoch2()
    with pytest.raises(Killed):
        model().fit(
            x,
            y,
            epochs=5,
            verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(str(pod1.local_dir)), pod1.callback(), kill],
        )
    pod1.close()  # the pod is gone with its disk

    pod2 = Backup(prefix, local_root=tmp_path / "pod-2")
    assert pod2.restore() is True
    epochs = Epochs()
    history = model().fit(
        x,
        y,
        epochs=5,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(str(pod2.local_dir)), pod2.callback(), epochs],
    )
    assert epochs.seen == [2, 3, 4]  # 0-based: epochs 3 to 5
    assert len(history.history["loss"]) == 3
    for a, b in zip(epochs.start_weights, kill.weights_at_kill):
        np.testing.assert_array_equal(a, b)  # resumed from the weights of epoch 2
    pod2.clear()
    assert _remote(prefix) == {}


def test_callback_stops_on_a_first_failed_save_and_warns_later(gcs, tmp_path, monkeypatch, caplog):
    backup = Backup(backup_prefix(ROOT, "run-1", "train-student"), local_root=tmp_path)
    callback = backup.callback()
    (backup.local_dir / "a").write_bytes(b"1")

    def denied(path, uri, retry_deadline=120.0):
        raise StorageError(f"cannot upload {path} to {uri}: 403 Forbidden")

    real_upload = storage.upload_file
    monkeypatch.setattr(storage, "upload_file", denied)
    with pytest.raises(StorageError, match="403"):  # no access at all: fail at once, not after 10 hours
        callback.on_epoch_end(0)
    monkeypatch.setattr(storage, "upload_file", real_upload)
    callback.on_epoch_end(1)
    (backup.local_dir / "a").write_bytes(b"2")
    monkeypatch.setattr(storage, "upload_file", denied)
    callback.on_epoch_end(2)  # a later outage: training goes on, the previous backup stays
    assert "saving epoch 3 failed, training goes on" in caplog.text
    fresh = Backup(backup.prefix, local_root=tmp_path)
    monkeypatch.setattr(storage, "upload_file", real_upload)
    assert fresh.restore() is True and (fresh.local_dir / "a").read_bytes() == b"1"


# === The student stage, end to end (needs the stage's backup_uri / run_id integration) ===

STAGE_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
import mobiletag
from mobiletag.config import load_config
from mobiletag.stages import train_student
config = load_config(sys.argv[1], {"teacher": {"image_size": 32},
                                   "student": {"epochs": 3, "image_size": 32, "batch_size": 16}})
train_student.run(config, sys.argv[2], sys.argv[3], sys.argv[4], backup_uri=sys.argv[5], run_id=sys.argv[6])
print("STAGE DONE", flush=True)
"""


@pytest.mark.slow
def test_killed_student_resumes_from_gcs_and_runs_stay_apart(gcs, tfrecord_dir, teacher_dir, tmp_path):
    from ..conftest import REPO

    script = tmp_path / "run.py"
    script.write_text(STAGE_SCRIPT)
    backup_uri = f"gs://{BUCKET}/backups"
    # neighbours that no student run may touch: another task of run-1, and run-10
    storage.write_bytes(f"{backup_uri}/run-1/train-teacher/keep.bin", b"teacher")
    storage.write_bytes(f"{backup_uri}/run-10/train-student/keep.bin", b"run-10")

    def command(pod: str, run_id: str) -> tuple[list[str], dict[str, str]]:
        tmp = tmp_path / pod / "tmp"  # each pod: its own empty disk, output folder and TMPDIR
        tmp.mkdir(parents=True)
        args = [
            sys.executable,
            "-u",
            str(script),
            str(REPO / "configs" / "fast.yaml"),
            str(tfrecord_dir),
            str(teacher_dir),
            str(tmp_path / pod / "student"),
            backup_uri,
            run_id,
        ]
        return args, {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp)}

    def epoch_lines(stdout: str) -> list[str]:
        return [line for line in stdout.splitlines() if "student epoch" in line]

    # run-1 is killed right after epoch 2 (its log line comes after the epoch's backup)
    args, env = command("pod-1", "run-1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen: list[str] = []
    deadline = time.time() + 300
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if "student epoch 2/" in line:
            proc.send_signal(signal.SIGKILL)
            break
        assert time.time() < deadline, "".join(seen[-20:])
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-30:])
    run1 = {o.name: o.generation for o in storage.list_prefix(f"{backup_uri}/run-1")}
    assert "train-student/MANIFEST.json" in run1, sorted(run1)
    manifest = json.loads(storage.read_bytes(f"{backup_uri}/run-1/train-student/{MANIFEST}"))
    assert manifest["files"], manifest

    # run-2 starts from scratch, finishes, and leaves run-1's backup exactly as it was
    args, env = command("pod-2", "run-2")
    second = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert epoch_lines(second.stdout)[0].startswith("student epoch 1/"), epoch_lines(second.stdout)
    assert {o.name: o.generation for o in storage.list_prefix(f"{backup_uri}/run-1")} == run1
    # a finished stage keeps its backup (its pod may be lost before KFP stores its outputs); the bundle
    # stage removes the run's backups
    assert storage.list_prefix(f"{backup_uri}/run-2/train-student")
    clear_run(backup_uri, "run-2")
    assert storage.list_prefix(f"{backup_uri}/run-2") == []

    # run-1 again, on a new pod: resumes at epoch 3 from gs://.../run-1/train-student/
    args, env = command("pod-3", "run-1")
    third = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert epoch_lines(third.stdout)[0].startswith("student epoch 3/"), epoch_lines(third.stdout)
    assert "STAGE DONE" in third.stdout
    assert (tmp_path / "pod-3" / "student" / "student_best.h5").is_file()
    left = {o.name for o in storage.list_prefix(backup_uri)}
    assert "run-1/train-student/MANIFEST.json" in left
    assert {n for n in left if not n.startswith("run-1/train-student/")} == {
        "run-1/train-teacher/keep.bin",
        "run-10/train-student/keep.bin",
    }
    clear_run(backup_uri, "run-1")
    assert {o.name for o in storage.list_prefix(backup_uri)} == {"run-10/train-student/keep.bin"}


def test_a_pod_retried_after_fit_returned_does_not_train_again(gcs, tmp_path):
    """BackupAndRestore deletes its epoch backup when training ends; fit leaves a marker with its
    result and mirrors both to gs:// at once, so a pod preempted between fit and the end of the
    stage neither resumes a finished fit nor trains it again from scratch."""
    import tf_keras as keras

    from .tiny_training import tiny_fit, tiny_model

    prefix = backup_prefix(ROOT, "run-1", "train-student")

    def pod(name: str):
        backup = Backup(prefix, local_root=tmp_path / name)
        backup.restore()
        optimizer = keras.optimizers.SGD(0.01)
        return backup, tiny_fit(tiny_model(), optimizer, backup, name="student", epochs=3, steps_per_epoch=2)

    _, first = pod("pod-1")
    assert first.epochs_run == 3
    retry_backup, retry = pod("pod-2")  # preempted after fit returned: same result, no epoch trained
    assert retry == first
    assert retry_backup.local_dir is not None
    assert not [p for p in (retry_backup.local_dir / "fit").rglob("*") if p.is_file()]  # no epoch backup left
    assert (retry_backup.local_dir / "best" / "best.h5").is_file()  # the best model so far is kept

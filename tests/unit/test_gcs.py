"""gs:// end to end against a real GCS emulator (gcp-storage-emulator on a loopback port),
with the real google-cloud-storage client: no mocks of the client."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobiletag.config import GateConfig
from mobiletag.errors import DataError, StorageError

BUCKET = "mobiletag-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    def __init__(self, data_dir: Path) -> None:
        from gcp_storage_emulator.server import create_server

        self.port = _free_port()
        self.server = create_server(
            "127.0.0.1", self.port, in_memory=False, default_bucket=BUCKET, data_dir=str(data_dir)
        )
        self.server.start()
        self.host = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()


def _client():
    from google.cloud import storage

    return storage.Client.create_anonymous_client()


def upload_tree(local: Path, prefix: str) -> str:
    bucket = _client().bucket(BUCKET)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            bucket.blob(f"{prefix}/{path.relative_to(local).as_posix()}").upload_from_filename(str(path))
    return f"gs://{BUCKET}/{prefix}"


def _digests(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (shards, labels, stats) by its path, except the originals' manifest."""
    from mobiletag.artifacts import Dataset

    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != Dataset.ORIGINALS
    }


def test_gcs_dataset_validates_and_builds_the_same_tfrecords(gcs, sample_dir, fast_config, tmp_path):
    from mobiletag.data.dataset import index_dataset, validate_dataset
    from mobiletag.data.tfrecords import build_tfrecords, originals_of
    from mobiletag.export.inference_config import iter_eval_batches

    uri = upload_tree(sample_dir, "datasets/shapes")
    index, summary = validate_dataset(uri, fast_config)
    local_index, local_summary = validate_dataset(sample_dir, fast_config)
    assert summary["splits"] == local_summary["splits"] and index.classes == local_index.classes
    build_tfrecords(index, fast_config, tmp_path / "from_gcs")
    build_tfrecords(index_dataset(sample_dir, fast_config), fast_config, tmp_path / "from_local")
    assert _digests(tmp_path / "from_gcs") == _digests(tmp_path / "from_local")
    # the manifest: the same files, sizes and checksums; gs:// URIs with their generations
    blobs = {b.name: b for b in _client().list_blobs(BUCKET, prefix="datasets/shapes/images/")}
    for split in ("val", "test"):
        remote, local = originals_of(tmp_path / "from_gcs", split), originals_of(tmp_path / "from_local", split)
        assert [(o.filepath, o.size, o.crc32c) for o in remote] == [(o.filepath, o.size, o.crc32c) for o in local]
        for original in remote:
            blob = blobs[f"datasets/shapes/images/{original.filepath}"]
            assert original.uri == f"{uri}/images/{original.filepath}" and original.mtime_ns is None
            assert original.generation == int(blob.generation) and original.crc32c == blob.crc32c
    # the readers stream them from the bucket: the same pixels as from the local files
    for split in ("val", "test"):
        remote_batches = list(iter_eval_batches(tmp_path / "from_gcs", split, [24], batch_size=8))
        local_batches = list(iter_eval_batches(tmp_path / "from_local", split, [24], batch_size=8))
        assert [b.paths for b in remote_batches] == [b.paths for b in local_batches]
        for remote_batch, local_batch in zip(remote_batches, local_batches, strict=True):
            np.testing.assert_array_equal(remote_batch.pixels[0], local_batch.pixels[0])


def test_a_changed_or_deleted_gcs_original_is_named(gcs, sample_dir, fast_config, tmp_path):
    from mobiletag.data.dataset import index_dataset
    from mobiletag.data.tfrecords import build_tfrecords, originals_of
    from mobiletag.export.inference_config import iter_eval_batches

    uri = upload_tree(sample_dir, "datasets/changing")
    build_tfrecords(index_dataset(uri, fast_config), fast_config, tmp_path / "ds")
    first, second = originals_of(tmp_path / "ds", "test")[:2]
    blob = _client().bucket(BUCKET).blob(f"datasets/changing/images/{first.filepath}")
    data = bytearray(blob.download_as_bytes())
    data[-3] ^= 0xFF  # same size, other bytes
    blob.upload_from_string(bytes(data))
    with pytest.raises(DataError) as info:
        list(iter_eval_batches(tmp_path / "ds", "test", [16]))
    message = str(info.value)
    assert f"the test image {first.filepath} (test_labels.csv), {uri}/images/{first.filepath}, changed" in message
    assert f"generation {first.generation} then" in message and "start a new run" in message
    data[-3] ^= 0xFF
    blob.upload_from_string(bytes(data))  # restored: a new generation, the same bytes, read as they are
    assert len(next(iter_eval_batches(tmp_path / "ds", "test", [16], batch_size=1)).paths) == 1
    _client().bucket(BUCKET).blob(f"datasets/changing/images/{second.filepath}").delete()
    with pytest.raises(DataError, match=rf"{uri}/images/{second.filepath}, vanished since the run began"):
        list(iter_eval_batches(tmp_path / "ds", "test", [16]))


def test_missing_object_names_the_uri_and_line(gcs, sample_dir, fast_config):
    from mobiletag.data.dataset import validate_dataset

    uri = upload_tree(sample_dir, "datasets/broken")
    with open(sample_dir / "test_labels.csv", encoding="utf-8") as fh:
        fh.readline()
        first = fh.readline().split(",")[0]
    _client().bucket(BUCKET).blob(f"datasets/broken/images/{first}").delete()
    with pytest.raises(DataError) as info:
        validate_dataset(uri, fast_config)
    assert f"test_labels.csv line 2 ({first}): the object {uri}/images/{first} does not exist" in str(info.value)


def test_missing_csv_and_dataset_config_from_gcs(gcs, sample_dir, tmp_path):
    from mobiletag.stages.resolve_config import run

    data = tmp_path / "ds"
    shutil.copytree(sample_dir, data)
    (data / "config.yaml").write_text("student: {epochs: 3}\n")
    (data / "val_labels.csv").unlink()
    uri = upload_tree(data, "datasets/with-config")
    assert "epochs: 3" in run(uri, "")["full"]
    from mobiletag.config import Config
    from mobiletag.data.dataset import index_dataset

    with pytest.raises(DataError, match=rf"val_labels.csv: missing \({uri}/val_labels.csv\)"):
        index_dataset(uri, Config())


def test_weights_from_gcs(gcs, tmp_path):
    from mobiletag.storage import fetch_file

    (tmp_path / "w.h5").write_bytes(b"weights")
    _client().bucket(BUCKET).blob("weights/w.h5").upload_from_filename(str(tmp_path / "w.h5"))
    local = fetch_file(f"gs://{BUCKET}/weights/w.h5", cache_dir=tmp_path / "cache")
    assert local.read_bytes() == b"weights"
    with pytest.raises(StorageError, match="cannot download gs://"):
        fetch_file(f"gs://{BUCKET}/weights/none.h5", cache_dir=tmp_path / "cache")


def _folder(tmp_path: Path, name: str, map_macro: float, f1_micro: float = 0.8) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"test": {"map_macro": map_macro, "f1_micro": f1_micro}}))
    (folder / "model_qat_int8.tflite").write_bytes(os.urandom(300_000))
    (folder / "labels.txt").write_text("a\nb\n")
    return folder


def _latest(prefix: str) -> str | None:
    from google.api_core.exceptions import NotFound

    try:  # blob() rather than get_blob(): the emulator's stored mediaLink names the port it had then
        return _client().bucket(BUCKET).blob(f"{prefix}/LATEST").download_as_text().strip()
    except NotFound:
        return None


def test_publish_versions_and_moves_latest_and_the_gate_decides(gcs, tmp_path):
    from mobiletag.publish import publish

    uri = f"gs://{BUCKET}/models/shapes"
    gate = GateConfig(min_f1_micro=0.5, require_improvement=True)
    first = publish(_folder(tmp_path, "one", 0.70), uri, "run-1", gate)
    assert first.promoted and _latest("models/shapes") == first.version
    names = {b.name for b in _client().list_blobs(BUCKET, prefix=f"models/shapes/{first.version}/")}
    assert names == {
        f"models/shapes/{first.version}/{n}"
        for n in ("metrics.json", "model_qat_int8.tflite", "labels.txt", "gate.json")
    }

    worse = publish(_folder(tmp_path, "two", 0.60), uri, "run-2", gate)
    assert not worse.promoted and _latest("models/shapes") == first.version  # kept, not promoted
    gate_json = json.loads(_client().bucket(BUCKET).blob(f"models/shapes/{worse.version}/gate.json").download_as_text())
    assert gate_json["passed"] is False and "does not beat 0.7000" in gate_json["reasons"][0]

    low_f1 = publish(_folder(tmp_path, "three", 0.90, f1_micro=0.3), uri, "run-3", gate)
    assert not low_f1.promoted and "below the minimum 0.5" in low_f1.gate.reasons[0]

    better = publish(_folder(tmp_path, "four", 0.75), uri, "run-4", gate)
    assert better.promoted and _latest("models/shapes") == better.version
    assert better.gate.previous_version == first.version and better.gate.previous_value == 0.70


def test_latest_moved_by_another_run_is_not_overwritten(gcs, tmp_path):
    from mobiletag.publish import write_latest

    uri = f"gs://{BUCKET}/models/race"
    write_latest(uri, "v1", expected_previous=None)
    assert _latest("models/race") == "v1"
    # this run read LATEST when it was unset; another run has since moved it to v1
    with pytest.raises(StorageError, match=r"LATEST moved to v1 during this run; not overwriting it"):
        write_latest(uri, "v2", expected_previous=None)
    assert _latest("models/race") == "v1"
    write_latest(uri, "v2", expected_previous="v1")
    assert _latest("models/race") == "v2"


def test_publish_interrupted_midway_leaves_latest(gcs, tmp_path, monkeypatch):
    from mobiletag.publish import publish

    uri = f"gs://{BUCKET}/models/interrupted"
    first = publish(_folder(tmp_path, "one", 0.5), uri, "run-1", GateConfig())
    uploaded: list[str] = []

    def stop_emulator_after_first(name: str) -> None:
        uploaded.append(name)
        if len(uploaded) == 1:
            gcs.stop()  # the storage service goes away during the upload

    with pytest.raises(StorageError, match=r"failed midway.*LATEST was not moved"):
        publish(
            _folder(tmp_path, "two", 0.9),
            uri,
            "run-2",
            GateConfig(),
            retry_deadline=2.0,
            on_uploaded=stop_emulator_after_first,
        )
    assert len(uploaded) == 1
    # the same stored data, served again: LATEST still names the first version
    again = Emulator(tmp_path / "gcs-data")
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", again.host)
        assert _latest("models/interrupted") == first.version
    finally:
        again.stop()


def test_publish_to_a_local_folder(tmp_path):
    from mobiletag.publish import publish

    out = tmp_path / "models"
    result = publish(_folder(tmp_path, "one", 0.5), str(out), "run/1 x", GateConfig())
    assert result.version.endswith("-run-1-x")
    assert (out / "LATEST").read_text().strip() == result.version
    assert {p.name for p in (out / result.version).iterdir()} == {
        "metrics.json",
        "model_qat_int8.tflite",
        "labels.txt",
        "gate.json",
    }


def test_cli_validate_gs_dataset(gcs, sample_dir):
    uri = upload_tree(sample_dir, "datasets/cli")
    result = subprocess.run(
        [sys.executable, "-m", "mobiletag", "validate", "--data-dir", uri],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    assert "6 classes" in result.stdout

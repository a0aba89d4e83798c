"""The dataset fingerprint: it changes exactly when the files a run reads change, on a local
folder and on gs:// (the storage emulator with the real client), and reads gs:// through list
pages only."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mobiletag.data.fingerprint import dataset_fingerprint
from mobiletag.errors import StorageError

from .test_gcs import BUCKET, _client, upload_tree


@pytest.fixture
def dataset(sample_dir, tmp_path) -> Path:
    """A private copy of the sample dataset (copy2 keeps the files' mtimes)."""
    return Path(shutil.copytree(sample_dir, tmp_path / "ds"))


def _first_image(root: Path) -> Path:
    return sorted((root / "images").rglob("*.jpg"))[0]


# === Local folder ===


def test_local_unchanged_data_give_the_same_fingerprint(dataset, sample_dir):
    first = dataset_fingerprint(str(dataset))
    assert dataset_fingerprint(str(dataset)) == first
    assert dataset_fingerprint(str(sample_dir)).digest == first.digest  # same names, sizes, mtimes and CSVs
    assert first.digest.startswith("sha256:") and len(first.digest) == len("sha256:") + 64
    images = [p for p in (dataset / "images").rglob("*") if p.is_file()]
    assert first.num_images == len(images) == 120
    assert first.image_bytes == sum(p.stat().st_size for p in images)
    assert first.files["config.yaml"] == "missing" and len(first.files["train_labels.csv"]) == 64


def test_local_one_changed_image_changes_it(dataset):
    before = dataset_fingerprint(str(dataset)).digest
    image = _first_image(dataset)
    original, stat = image.read_bytes(), image.stat()

    image.write_bytes(original + b"\0")  # new content, new size
    assert dataset_fingerprint(str(dataset)).digest != before

    image.write_bytes(bytes(reversed(original)))  # same size, rewritten: a new mtime
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert dataset_fingerprint(str(dataset)).digest != before

    image.write_bytes(original)  # back to the old file and time: the old fingerprint
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert dataset_fingerprint(str(dataset)).digest == before


def test_local_new_image_csv_or_config_changes_it(dataset):
    before = dataset_fingerprint(str(dataset))
    extra = dataset / "images" / "new" / "extra.jpg"
    extra.parent.mkdir()
    shutil.copy2(_first_image(dataset), extra)
    added = dataset_fingerprint(str(dataset))
    assert added.digest != before.digest and added.num_images == before.num_images + 1

    extra.unlink()
    extra.parent.rmdir()
    assert dataset_fingerprint(str(dataset)).digest == before.digest

    csv = dataset / "val_labels.csv"
    data = csv.read_bytes()
    csv.write_bytes(data + b"\n")  # one byte more, the same rows
    assert dataset_fingerprint(str(dataset)).digest != before.digest
    csv.write_bytes(data)
    assert dataset_fingerprint(str(dataset)).digest == before.digest  # CSVs count by content, not by time

    (dataset / "config.yaml").write_text("student: {epochs: 3}\n")
    assert dataset_fingerprint(str(dataset)).digest != before.digest


def test_local_missing_dataset_is_a_fingerprint_not_an_error(tmp_path):
    missing = dataset_fingerprint(str(tmp_path / "nothing"))
    assert missing.num_images == 0 and set(missing.files.values()) == {"missing"}
    assert dataset_fingerprint(str(tmp_path / "other")).digest == missing.digest


# === gs:// (storage emulator) ===


def test_gcs_one_changed_image_changes_it(gcs, sample_dir):
    uri = upload_tree(sample_dir, "datasets/weekly")
    first = dataset_fingerprint(uri)
    assert dataset_fingerprint(uri) == first  # nothing changed: a cache hit next week
    assert first.num_images == 120 and first.files == dataset_fingerprint(str(sample_dir)).files
    assert dataset_fingerprint(uri + "/").digest == first.digest

    image = _first_image(sample_dir)
    name = f"datasets/weekly/images/{image.relative_to(sample_dir / 'images').as_posix()}"
    blob = _client().bucket(BUCKET).blob(name)
    blob.upload_from_string(bytes(reversed(image.read_bytes())))  # same size, a new generation
    changed = dataset_fingerprint(uri)
    assert changed.digest != first.digest
    assert (changed.num_images, changed.image_bytes) == (first.num_images, first.image_bytes)
    assert dataset_fingerprint(uri) == changed


def test_gcs_new_image_and_csv_change_it(gcs, sample_dir):
    uri = upload_tree(sample_dir, "datasets/weekly")
    before = dataset_fingerprint(uri)
    bucket = _client().bucket(BUCKET)
    bucket.blob("datasets/weekly/images/new/extra.jpg").upload_from_filename(str(_first_image(sample_dir)))
    added = dataset_fingerprint(uri)
    assert added.digest != before.digest and added.num_images == before.num_images + 1
    bucket.blob("datasets/weekly/images-old/x.jpg").upload_from_string(b"x")  # beside images/, not in it
    bucket.blob("datasets/weekly/notes.txt").upload_from_string(b"x")
    assert dataset_fingerprint(uri).digest == added.digest
    bucket.blob("datasets/weekly/test_labels.csv").upload_from_string(b"filepath,labels\n")
    assert dataset_fingerprint(uri).digest != added.digest


def test_gcs_reads_list_pages_only(gcs, sample_dir):
    """500,000 images must not mean 500,000 requests: one list request per page of images, one
    download per CSV / config.yaml, nothing per image."""
    from mobiletag.storage import thread_client

    uri = upload_tree(sample_dir, "datasets/big")
    session = thread_client()._http
    requests: list[tuple[str, str]] = []
    send = session.request

    def recording(method, url, *args, **kwargs):
        requests.append((method, url))
        return send(method, url, *args, **kwargs)

    session.request = recording
    result = dataset_fingerprint(uri)
    assert result.num_images == 120
    lists = [u for m, u in requests if m == "GET" and f"/b/{BUCKET}/o?" in u]
    downloads = [u for m, u in requests if "alt=media" in u]
    assert len(lists) == 1 and "prefix=datasets%2Fbig%2Fimages%2F" in lists[0]
    assert "maxResults=1000" in lists[0] and "fields=items%28name%2Csize%2Cgeneration%29%2CnextPageToken" in lists[0]
    assert sorted(u.split("?")[0].rsplit("%2F", 1)[-1] for u in downloads) == [
        "config.yaml",
        "test_labels.csv",
        "train_labels.csv",
        "val_labels.csv",
    ]
    # google-cloud-storage 3 checks once per client, in a background thread, that the bucket exists
    bucket_checks = [u for m, u in requests if u.split("?")[0].endswith(f"/b/{BUCKET}")]
    assert len(bucket_checks) <= 1
    assert len(requests) == len(lists) + len(downloads) + len(bucket_checks), "\n".join(u for _, u in requests)


def test_gcs_listing_error_names_the_prefix_and_the_fix(gcs):
    with pytest.raises(StorageError, match=r"cannot list gs://no-such-bucket/ds/images/: .*roles/storage.objectViewer"):
        dataset_fingerprint("gs://no-such-bucket/ds")

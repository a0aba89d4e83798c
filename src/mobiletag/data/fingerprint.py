"""A dataset's fingerprint: a digest that changes exactly when the files a run would read change.

KFP caches a step on its inputs. ``prepare_dataset`` reads ``data_uri``, and a weekly run with new
images under the same prefix has the same ``data_uri``: without the fingerprint as an input it would
hit the cache and every later step with it. The uncached ``resolve_config`` step computes the
fingerprint and passes it on.

What goes in:

- every file under ``images/``: its path relative to ``images/``, its size and its version (the
  object's generation on gs://, which Cloud Storage changes on every write; the file's
  ``st_mtime_ns`` on a local disk);
- the SHA-256 of ``train_labels.csv``, ``val_labels.csv``, ``test_labels.csv`` and ``config.yaml``
  (or that one is missing).

The cost is linear in the number of images and the memory constant: gs:// is read through list
pages only (up to 1,000 objects a request, never one request per object), a local folder through
``os.scandir``. The per-file records are combined by addition modulo 2**256 of their SHA-256s, so
neither listing order nor a sort (500,000 names held in memory) matters.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mobiletag.artifacts import SourceDataset
from mobiletag.data.dataset import IMAGES_DIR, SPLITS, csv_name
from mobiletag.errors import StorageError
from mobiletag.storage import is_gcs, join, split_gcs, thread_client

log = logging.getLogger(__name__)

VERSION = "mobiletag-dataset-fingerprint-v1"
LIST_PAGE_SIZE = 1000  # the JSON API's maximum objects per list page
_MODULUS = 1 << 256
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Fingerprint:
    """The digest and the figures behind it (for the log and the step's metadata)."""

    digest: str  # 'sha256:<64 hex digits>'
    num_images: int  # files under images/
    image_bytes: int  # their total size
    files: dict[str, str]  # CSV / config.yaml name -> its SHA-256, or 'missing'


def dataset_fingerprint(data_uri: str, page_size: int = LIST_PAGE_SIZE) -> Fingerprint:
    """The fingerprint of the dataset folder ``data_uri`` (local path or gs:// prefix).

    Missing parts (no ``images/``, a missing CSV) are part of the fingerprint, not errors: the
    dataset is validated by ``prepare_dataset``, which reports every problem with file and line.

    Raises:
        StorageError: the gs:// prefix cannot be listed or a CSV cannot be read.
    """
    entries = _gcs_entries(data_uri, page_size) if is_gcs(data_uri) else _local_entries(data_uri)
    total, count, size = 0, 0, 0
    for name, nbytes, version in entries:
        record = f"{name}\0{nbytes}\0{version}".encode()
        total = (total + int.from_bytes(hashlib.sha256(record).digest(), "big")) % _MODULUS
        count += 1
        size += nbytes
    files = {name: _file_sha256(join(data_uri, name)) for name in [*map(csv_name, SPLITS), SourceDataset.CONFIG]}
    outer = hashlib.sha256(f"{VERSION}\nimages {count} {size} {total:064x}\n".encode())
    for name, digest in files.items():
        outer.update(f"{name} {digest}\n".encode())
    result = Fingerprint(f"sha256:{outer.hexdigest()}", count, size, files)
    log.info(
        "dataset %s: %d files (%d bytes) under %s/, fingerprint %s", data_uri, count, size, IMAGES_DIR, result.digest
    )
    return result


# === Listings: (path relative to images/, size, version) per file ===


def _local_entries(data_uri: str) -> Iterator[tuple[str, int, int]]:
    """Files under images/, depth first, streaming. Links to files count with their target's
    size and mtime; links to folders are not followed (prepare_dataset reads nothing through them
    that is not also under images/ itself)."""
    root = Path(data_uri, IMAGES_DIR)
    if not root.is_dir():
        return
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                        continue
                    name = Path(entry.path).relative_to(root).as_posix()
                    try:
                        st = entry.stat()
                    except FileNotFoundError:  # a dangling link: its target may appear later
                        yield name, -1, -1
                        continue
                    yield name, st.st_size, st.st_mtime_ns
        except OSError as exc:
            raise StorageError(f"cannot list {folder}: {exc}; check that the dataset folder is readable") from exc


def _gcs_entries(data_uri: str, page_size: int) -> Iterator[tuple[str, int, int]]:
    """Objects under <data_uri>/images/, read from list pages (name, size and generation only)."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    bucket, blob = split_gcs(data_uri)
    prefix = f"{blob.strip('/')}/{IMAGES_DIR}/" if blob.strip("/") else f"{IMAGES_DIR}/"
    try:
        blobs = thread_client().list_blobs(
            bucket,
            prefix=prefix,
            page_size=page_size,
            fields="items(name,size,generation),nextPageToken",
            retry=DEFAULT_RETRY.with_deadline(300.0),
        )
        for item in blobs:
            yield item.name[len(prefix) :], int(item.size or 0), int(item.generation or 0)
    except Exception as exc:  # google.api_core and auth errors have no common base
        raise StorageError(
            f"cannot list gs://{bucket}/{prefix}: {exc}; check that the bucket exists and that this job's service "
            "account may list and read its objects (roles/storage.objectViewer)"
        ) from exc


class _HashWriter:
    """A file-like sink that hashes what is written to it (gs:// downloads stream into it)."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return len(data)


def _file_sha256(location: str) -> str:
    """SHA-256 of a local file or gs:// object, read in chunks; 'missing' when it does not exist."""
    if not is_gcs(location):
        path = Path(location)
        if not path.is_file():
            return "missing"
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest()
    from google.api_core import exceptions
    from google.cloud.storage.retry import DEFAULT_RETRY

    bucket, name = split_gcs(location)
    sink = _HashWriter()
    try:
        thread_client().bucket(bucket).blob(name).download_to_file(sink, retry=DEFAULT_RETRY.with_deadline(120.0))
    except exceptions.NotFound:
        return "missing"
    except Exception as exc:
        raise StorageError(f"cannot read {location}: {exc}") from exc
    return sink.hash.hexdigest()

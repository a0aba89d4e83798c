"""Local paths and gs:// URIs: the small set of file operations the stages need."""

from __future__ import annotations

import base64
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from mobiletag.errors import StorageError

log = logging.getLogger(__name__)


def is_gcs(uri: str) -> bool:
    return uri.startswith("gs://")


def join(root: str, *parts: str) -> str:
    """root/part/... for a local folder or a gs:// prefix."""
    if is_gcs(root):
        return "/".join([root.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(root, *parts))


def split_gcs(uri: str) -> tuple[str, str]:
    bucket, _, blob = uri[len("gs://") :].partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} has no bucket name; write gs://BUCKET/PATH")
    return bucket, blob


def gcs_client():  # type: ignore[no-untyped-def]
    """A storage client with Application Default Credentials (Workload Identity on GKE).

    With STORAGE_EMULATOR_HOST set (a local emulator), the client talks to it anonymously.
    That variable is the storage library's own convention, so it is read here, not only in
    the CLI. No credential is ever logged or written.
    """
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client.create_anonymous_client()
    try:
        return storage.Client()
    except Exception as exc:  # google.auth.exceptions.DefaultCredentialsError and friends
        raise StorageError(
            f"no Google Cloud credentials for gs:// access ({type(exc).__name__}); on GKE use Workload Identity, "
            "elsewhere run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
        ) from exc


_local = threading.local()


def thread_client():  # type: ignore[no-untyped-def]
    """One client per thread (parallel image downloads)."""
    client = getattr(_local, "client", None)
    if client is None:
        client = _local.client = gcs_client()
    return client


def read_bytes(uri: str, retry_deadline: float = 120.0) -> bytes:
    """The bytes of a gs:// object, with the client's retry on transient errors.

    Raises FileNotFoundError when the object does not exist, StorageError on other failures.
    """
    from google.api_core import exceptions
    from google.cloud.storage.retry import DEFAULT_RETRY

    bucket, blob = split_gcs(uri)
    try:
        return (
            thread_client()
            .bucket(bucket)
            .blob(blob)
            .download_as_bytes(retry=DEFAULT_RETRY.with_deadline(retry_deadline))
        )
    except exceptions.NotFound as exc:
        raise FileNotFoundError(uri) from exc
    except Exception as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from exc


def read_bytes_and_generation(uri: str, retry_deadline: float = 120.0) -> tuple[bytes, int | None]:
    """The bytes of a gs:// object and its generation: from the download's own
    ``x-goog-generation`` header (Cloud Storage sends it: no second request), else (emulators)
    from the object's metadata, read just after.

    Raises FileNotFoundError when the object does not exist, StorageError on other failures.
    """
    from google.api_core import exceptions
    from google.cloud.storage.retry import DEFAULT_RETRY

    bucket, name = split_gcs(uri)
    blob = thread_client().bucket(bucket).blob(name)
    try:
        data = blob.download_as_bytes(retry=DEFAULT_RETRY.with_deadline(retry_deadline))
        if blob.generation is None:
            blob.reload(retry=DEFAULT_RETRY.with_deadline(retry_deadline))
    except exceptions.NotFound as exc:
        raise FileNotFoundError(uri) from exc
    except Exception as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from exc
    return data, int(blob.generation) if blob.generation is not None else None


def fetch_file(uri: str, cache_dir: str | Path | None = None) -> Path:
    """A local path for a file given as a local path or gs:// URI (downloaded once)."""
    if not is_gcs(uri):
        path = Path(uri).expanduser()
        if not path.is_file():
            raise StorageError(f"file {path} does not exist")
        return path
    bucket, blob = split_gcs(uri)
    target_dir = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "mobiletag-downloads"
    target = target_dir / bucket / blob
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        client = gcs_client()
        partial = target.with_suffix(target.suffix + ".partial")
        client.bucket(bucket).blob(blob).download_to_filename(str(partial))
        partial.rename(target)
    except Exception as exc:  # google.api_core and auth errors have no common base
        raise StorageError(f"cannot download {uri}: {exc}") from exc
    log.info("downloaded %s", uri)
    return target


def read_text_if_exists(uri: str) -> str | None:
    """Text of a local file or gs:// object (UTF-8, BOM removed), or None when it does not exist."""
    try:
        data = read_bytes(uri) if is_gcs(uri) else Path(uri).read_bytes()
    except FileNotFoundError:
        return None
    return data.decode("utf-8-sig")


# === gs:// prefixes: list, upload, download, delete (training backups) ===

_FIX_ACCESS = (
    "check that the bucket exists and that this job's service account may read and write objects in it "
    "(e.g. roles/storage.objectAdmin on the bucket)"
)


@dataclass(frozen=True)
class ObjectInfo:
    """One object under a listed prefix."""

    name: str  # relative to the prefix, '/'-separated
    size: int
    crc32c: str | None  # base64, as the JSON API reports it
    generation: int | None


def file_crc32c(path: str | Path) -> str:
    """CRC32C of a local file, base64-encoded as Cloud Storage reports it."""
    import google_crc32c

    checksum = google_crc32c.Checksum()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            checksum.update(chunk)
    return base64.b64encode(checksum.digest()).decode("ascii")


def bytes_crc32c(data: bytes) -> str:
    """CRC32C of bytes in memory, base64-encoded as Cloud Storage reports it."""
    import google_crc32c

    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode("ascii")


def _prefix_parts(prefix_uri: str) -> tuple[str, str]:
    """(bucket, 'path/') for a gs:// prefix; refuses a whole bucket."""
    bucket, blob = split_gcs(prefix_uri.rstrip("/"))
    if not blob:
        raise StorageError(f"{prefix_uri!r} names a whole bucket; give a prefix inside it, e.g. gs://{bucket}/backups")
    return bucket, blob.rstrip("/") + "/"


def _retry(deadline: float):  # type: ignore[no-untyped-def]
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_deadline(deadline)


def list_prefix(prefix_uri: str, retry_deadline: float = 120.0) -> list[ObjectInfo]:
    """Every object under ``prefix_uri/`` (the slash is a boundary: ``run-1`` never lists ``run-10``)."""
    bucket, prefix = _prefix_parts(prefix_uri)
    try:
        blobs = list(thread_client().list_blobs(bucket, prefix=prefix, retry=_retry(retry_deadline)))
    except Exception as exc:
        raise StorageError(f"cannot list {prefix_uri}: {exc}; {_FIX_ACCESS}") from exc
    return [
        ObjectInfo(
            name=b.name[len(prefix) :],
            size=int(b.size or 0),
            crc32c=b.crc32c,
            generation=int(b.generation) if b.generation is not None else None,
        )
        for b in blobs
    ]


def upload_file(path: str | Path, uri: str, retry_deadline: float = 120.0) -> ObjectInfo:
    """Upload a local file to a gs:// object and check the stored CRC32C against the file's."""
    bucket, name = split_gcs(uri)
    expected = file_crc32c(path)
    try:
        blob = thread_client().bucket(bucket).blob(name)
        blob.upload_from_filename(str(path), checksum="crc32c", retry=_retry(retry_deadline), timeout=120)
    except Exception as exc:
        raise StorageError(f"cannot upload {path} to {uri}: {exc}; {_FIX_ACCESS}") from exc
    if blob.crc32c is not None and blob.crc32c != expected:
        raise StorageError(
            f"{uri} does not match {path} after upload (crc32c {blob.crc32c} != {expected}); "
            "the file changed while it was uploaded, or the transfer was corrupted: save again"
        )
    return ObjectInfo(
        name=name,
        size=int(blob.size) if blob.size is not None else Path(path).stat().st_size,
        crc32c=expected,
        generation=int(blob.generation) if blob.generation is not None else None,
    )


def write_bytes(
    uri: str, data: bytes, content_type: str = "application/octet-stream", retry_deadline: float = 120.0
) -> None:
    """Write a small gs:// object in one request (the write is atomic: readers see old or new)."""
    bucket, name = split_gcs(uri)
    try:
        thread_client().bucket(bucket).blob(name).upload_from_string(
            data, content_type=content_type, checksum="crc32c", retry=_retry(retry_deadline), timeout=60
        )
    except Exception as exc:
        raise StorageError(f"cannot write {uri}: {exc}; {_FIX_ACCESS}") from exc


def download_file(
    uri: str, target: str | Path, expected_crc32c: str | None = None, retry_deadline: float = 120.0
) -> Path:
    """Download a gs:// object to ``target`` (through a .partial file), optionally checking its CRC32C.

    Raises FileNotFoundError when the object does not exist, StorageError on other failures.
    """
    from google.api_core import exceptions

    bucket, name = split_gcs(uri)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        # blob(), not get_blob(): a listed blob's mediaLink may name another host (emulators)
        thread_client().bucket(bucket).blob(name).download_to_filename(
            str(partial), retry=_retry(retry_deadline), timeout=120
        )
    except exceptions.NotFound as exc:
        partial.unlink(missing_ok=True)
        raise FileNotFoundError(uri) from exc
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise StorageError(f"cannot download {uri} to {target}: {exc}; {_FIX_ACCESS}") from exc
    if expected_crc32c is not None and file_crc32c(partial) != expected_crc32c:
        partial.unlink(missing_ok=True)
        raise StorageError(
            f"{uri} does not have the expected crc32c {expected_crc32c}: the object was changed or corrupted "
            "after it was written"
        )
    partial.replace(target)
    return target


def download_prefix(prefix_uri: str, local_dir: str | Path, retry_deadline: float = 120.0) -> list[str]:
    """Download every object under ``prefix_uri/`` into ``local_dir`` (same relative paths); their names."""
    local = Path(local_dir)
    names = []
    for info in list_prefix(prefix_uri, retry_deadline):
        if not info.name or info.name.endswith("/"):  # folder placeholders made by consoles and tools
            continue
        download_file(join(prefix_uri, info.name), local / info.name, info.crc32c, retry_deadline)
        names.append(info.name)
    return names


def delete_object(uri: str, retry_deadline: float = 120.0) -> bool:
    """Delete one gs:// object; False when it was not there."""
    from google.api_core import exceptions

    bucket, name = split_gcs(uri)
    try:
        thread_client().bucket(bucket).delete_blob(name, retry=_retry(retry_deadline), timeout=60)
    except exceptions.NotFound:
        return False
    except Exception as exc:
        raise StorageError(f"cannot delete {uri}: {exc}; {_FIX_ACCESS}") from exc
    return True


def delete_prefix(prefix_uri: str, retry_deadline: float = 120.0) -> int:
    """Delete every object under ``prefix_uri/`` and nothing else; how many were deleted."""
    deleted = 0
    for info in list_prefix(prefix_uri, retry_deadline):
        deleted += delete_object(join(prefix_uri, info.name), retry_deadline)
    return deleted

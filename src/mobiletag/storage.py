"""Local paths and gs:// URIs: the small set of file operations the stages need."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
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

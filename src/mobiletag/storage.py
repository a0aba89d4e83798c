"""Local paths and gs:// URIs: the small set of file operations the stages need."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from mobiletag.errors import StorageError

log = logging.getLogger(__name__)


def is_gcs(uri: str) -> bool:
    return uri.startswith("gs://")


def split_gcs(uri: str) -> tuple[str, str]:
    bucket, _, blob = uri[len("gs://") :].partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} has no bucket name; write gs://BUCKET/PATH")
    return bucket, blob


def gcs_client():  # type: ignore[no-untyped-def]
    """A storage client with Application Default Credentials (Workload Identity on GKE).

    STORAGE_EMULATOR_HOST, when set by the caller's environment, is honoured by the client.
    """
    from google.cloud import storage

    return storage.Client()


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
    """Text of a gs:// object, or None when it does not exist."""
    bucket, blob = split_gcs(uri)
    try:
        obj = gcs_client().bucket(bucket).blob(blob)
        if not obj.exists():
            return None
        return obj.download_as_text(encoding="utf-8")
    except Exception as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from exc

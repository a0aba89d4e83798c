"""Training backups of one task of one run, on a local folder or a gs:// prefix.

A preempted or retried training pod resumes from ``<backup_uri>/<run id>/<task>/``: the run
id keeps runs apart (next week's run never resumes from this week's failed one) and the
task keeps the teacher, student and QAT steps apart. Nothing here deletes outside that
prefix.

Keras' ``BackupAndRestore`` writes to a local folder (``Backup.local_dir``). For a gs://
prefix that folder is a private temporary folder, and ``save()`` mirrors it to the prefix at
the end of every epoch (``Backup.callback()``). The mirror is safe against a kill at any
moment: changed files are uploaded under a new name (``data/<save number>/<path>``), then a
single ``MANIFEST.json`` object naming every file of the backup is written (one request: it is
either the old or the new manifest), and only then are the objects that no manifest names
any more deleted. ``restore()`` reads only what the manifest lists, so a save killed midway
leaves the previous complete backup in place; its leftovers are removed by the next save.

Layout under a gs:// prefix::

    MANIFEST.json                 {"format": 1, "save": N, "files": {path: {object, size, crc32c}}}
    data/<save number>/<path>     file contents, each uploaded once and kept while listed

TensorFlow's own gs:// file system is not used: it cannot be pointed at a storage emulator,
so it could not be tested here; the google-cloud-storage client can (STORAGE_EMULATOR_HOST).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobiletag import storage
from mobiletag.errors import StorageError

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
DATA = "data"
FORMAT = 1

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def safe_segment(text: str, what: str = "run id") -> str:
    """``text`` as one path segment: letters, digits, ``_ . -``.

    Unchanged when already safe (KFP run ids are UUIDs). Otherwise unsafe characters become
    ``-`` and 8 hex digits of the text's SHA-256 are appended, so two different ids never share
    a prefix (``a/b`` and ``a b`` both read ``a-b`` but differ in the suffix).

    Raises:
        StorageError: ``text`` is empty, or an unresolved KFP placeholder (``{{$...}}``),
            which would put every run under one prefix.
    """
    if not text or not text.strip():
        raise StorageError(
            f"the {what} for training backups is empty: backups of different runs would share one prefix and "
            "resume each other. In the pipeline it comes from MOBILETAG_RUN_ID, which pipeline.py fills from the "
            "pod's pipeline/runid label (set by the KFP API server, backend >= 2.5); when running a stage by hand, "
            "set MOBILETAG_RUN_ID (or pass run_id) to an id unique to the run, or leave backup_uri empty"
        )
    if "{{" in text:
        raise StorageError(
            f"the {what} for training backups is an unresolved placeholder ({text!r}): KFP did not fill it in; "
            "give a concrete id unique to the run (the pipeline takes it from the pod's pipeline/runid label)"
        )
    if _SAFE.fullmatch(text) and len(text) <= 100:
        return text
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:80]
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return f"{safe}-{digest}" if safe else digest


def backup_prefix(backup_uri: str | None, run_id: str, task: str) -> str | None:
    """``<backup_uri>/<run_id>/<task>``, or None when backups are off (``backup_uri`` empty or None).

    ``backup_uri`` is a local folder or a gs:// prefix, joined as text (never through
    ``pathlib``, which turns ``gs://b`` into ``gs:/b``). ``run_id`` and ``task`` go through
    ``safe_segment``; an empty run id is an error rather than a shared default.
    """
    prefix = run_prefix(backup_uri, run_id)
    return None if prefix is None else storage.join(prefix, safe_segment(task, "task name"))


def run_prefix(backup_uri: str | None, run_id: str) -> str | None:
    """``<backup_uri>/<run_id>``: the backups of every task of one run, or None when backups are off.

    Raises:
        StorageError: ``backup_uri`` is set and ``run_id`` is empty or an unresolved placeholder
            (see ``safe_segment``), or a gs:// URI names no bucket.
    """
    if not backup_uri or not backup_uri.strip():
        return None
    backup_uri = backup_uri.strip()
    if storage.is_gcs(backup_uri):
        storage.split_gcs(backup_uri)  # a missing bucket name is reported here, before training
    return storage.join(backup_uri, safe_segment(run_id, "run id"))


def clear_run(backup_uri: str | None, run_id: str, retry_deadline: float = 120.0) -> int:
    """Delete the training backups of every task of one run: everything under ``<backup_uri>/<run_id>/``
    (a local folder or a gs:// prefix) and nothing outside it; how many files or objects were deleted.

    Nothing happens when backups are off (``backup_uri`` empty or None). Call it only once the
    outputs that replace the backups are stored: a training step retried after this trains again
    from scratch.

    Raises:
        StorageError: as ``run_prefix``, or a listing or deletion failed.
    """
    prefix = run_prefix(backup_uri, run_id)
    if prefix is None:
        return 0
    if storage.is_gcs(prefix):
        deleted = storage.delete_prefix(prefix, retry_deadline)
    else:
        folder = Path(prefix)
        deleted = sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
        try:
            if folder.is_dir():
                shutil.rmtree(folder)
        except OSError as exc:
            raise StorageError(
                f"cannot delete the training backups of run {run_id!r} in {folder}/ ({exc}); delete the folder by "
                "hand (every output of the run is stored: nothing there is needed any more)"
            ) from exc
    log.info("backup: deleted the run's backups, %d file(s) under %s/", deleted, prefix)
    return deleted


@dataclass
class SaveReport:
    """What one ``save()`` did (all zero when nothing changed)."""

    uploaded: int = 0
    uploaded_bytes: int = 0
    unchanged: int = 0
    deleted: int = 0
    seconds: float = 0.0


class Backup:
    """Training backups of one task of one run.

    ``Backup(None)`` is disabled: ``enabled`` is False, ``local_dir`` None and every method a
    no-op. For a local prefix, ``local_dir`` is that folder itself (``save`` and ``restore``
    have nothing to copy). For a gs:// prefix, ``local_dir`` is a new private temporary folder
    (under ``local_root`` if given, else the system's temporary folder), removed by
    ``close()``, at the end of a ``with`` block, or when the object is garbage collected;
    the remote backup stays until ``clear()`` or ``clear_run``.

    Typical use in a stage::

        backup = Backup(backup_prefix(backup_uri, run_id, "train-student"))
        resumed = backup.restore()
        ... keras.callbacks.BackupAndRestore(str(backup.local_dir)), backup.callback(), ...

    A training stage does not clear its backup: a pod lost after the stage wrote its outputs
    but before the KFP launcher stored them is retried and must find its backup. The whole
    run's backups are removed by ``clear_run`` once every training output is stored (the
    bundle stage).
    """

    def __init__(self, prefix: str | None, local_root: str | Path | None = None, retry_deadline: float = 120.0) -> None:
        self.prefix = prefix.rstrip("/") if prefix else None
        self.retry_deadline = retry_deadline
        self._remote = bool(self.prefix) and storage.is_gcs(self.prefix or "")
        self._files: dict[str, dict[str, Any]] = {}  # the manifest's entries: what the remote backup holds
        self._save_number = 0
        self._manifest_read = False
        self._closed = False
        self.local_dir: Path | None
        if not self.prefix:
            self.local_dir = None
        elif self._remote:
            storage.split_gcs(self.prefix)
            root = Path(local_root) if local_root is not None else None
            if root is not None:
                root.mkdir(parents=True, exist_ok=True)
            self.local_dir = Path(tempfile.mkdtemp(prefix="mobiletag-backup-", dir=root))
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.local_dir), True)
        else:
            self.local_dir = Path(self.prefix)

    def __repr__(self) -> str:
        return f"Backup({self.prefix!r}, local_dir={str(self.local_dir) if self.local_dir else None!r})"

    def __enter__(self) -> Backup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def enabled(self) -> bool:
        return self.prefix is not None

    def folder(self, name: str) -> Path | None:
        """``local_dir / name``, created, when backups are on (None when they are off)."""
        if self.local_dir is None:
            return None
        path = self.local_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def remote(self) -> bool:
        """True for a gs:// prefix (``local_dir`` is then a private copy)."""
        return self._remote

    # === Remote state ===

    def _uri(self, name: str) -> str:
        assert self.prefix is not None
        return storage.join(self.prefix, name)

    def _read_manifest(self) -> dict[str, Any] | None:
        try:
            data = storage.read_bytes(self._uri(MANIFEST), self.retry_deadline)
        except FileNotFoundError:
            return None
        try:
            manifest = json.loads(data.decode("utf-8"))
            if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
                raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT}")
        except ValueError as exc:
            raise StorageError(
                f"{self._uri(MANIFEST)} is not a backup manifest this version can read ({exc}); delete the prefix "
                f"{self.prefix}/ to start this task from scratch, or run with another run id"
            ) from exc
        return manifest

    def _load_manifest(self) -> None:
        manifest = self._read_manifest()
        self._files = dict(manifest["files"]) if manifest else {}
        self._save_number = int(manifest.get("save", 0)) if manifest else 0
        self._manifest_read = True

    # === Public API ===

    def restore(self) -> bool:
        """Bring the last complete backup into ``local_dir``; True when there was one.

        For gs://, ``local_dir`` is made equal to the files the manifest lists (other local
        files are removed); objects that no manifest names (a save killed midway) are ignored.
        For a local prefix: True when the folder holds any file.
        """
        if not self.enabled:
            return False
        assert self.local_dir is not None
        if not self._remote:
            return self.local_dir.is_dir() and any(p.is_file() for p in self.local_dir.rglob("*"))
        if self._closed:
            raise StorageError(f"{self!r} was closed; make a new Backup to restore into")
        started = time.perf_counter()
        self._load_manifest()
        if self.local_dir.exists():
            shutil.rmtree(self.local_dir)
        self.local_dir.mkdir(parents=True)
        if not self._files:
            log.info("backup: none at %s/, starting from scratch", self.prefix)
            return False
        total = 0
        for rel, entry in sorted(self._files.items()):
            target = self.local_dir / rel
            try:
                storage.download_file(self._uri(entry["object"]), target, entry["crc32c"], self.retry_deadline)
            except FileNotFoundError as exc:
                raise StorageError(
                    f"the backup {self._uri(MANIFEST)} lists {rel} but its object {self._uri(entry['object'])} is "
                    f"gone (deleted by hand or by a lifecycle rule?); delete the prefix {self.prefix}/ to start this "
                    "task from scratch"
                ) from exc
            total += target.stat().st_size
        log.info(
            "backup: restored %d file(s), %.1f MB, of save %d from %s/ in %.1f s",
            len(self._files),
            total / 1e6,
            self._save_number,
            self.prefix,
            time.perf_counter() - started,
        )
        return True

    def save(self) -> SaveReport:
        """Mirror ``local_dir`` to the gs:// prefix (a no-op for a local prefix or when disabled).

        Uploads new and changed files (a file with the size and CRC32C of its stored copy is
        unchanged), writes the manifest, then deletes objects under this
        prefix that the manifest does not name. A failure at any point leaves the previous
        complete backup readable by ``restore()``.

        Raises:
            StorageError: an upload, the manifest write or a listing failed.
        """
        report = SaveReport()
        if not self._remote:
            return report
        assert self.local_dir is not None
        if self._closed:  # the working folder is gone: mirroring it would delete the remote backup
            raise StorageError(f"{self!r} was closed; save() before close(), or make a new Backup and restore()")
        started = time.perf_counter()
        if not self._manifest_read:
            self._load_manifest()
        number = self._save_number + 1
        local = (
            {p.relative_to(self.local_dir).as_posix(): p for p in sorted(self.local_dir.rglob("*")) if p.is_file()}
            if self.local_dir.is_dir()
            else {}
        )
        files: dict[str, dict[str, Any]] = {}
        for rel, path in local.items():
            if rel.endswith(".partial"):  # a download of ours that did not finish
                continue
            entry = self._files.get(rel)
            # size and CRC32C, not mtimes: a file rewritten within one clock tick keeps its mtime,
            # and CRC32C runs at several GB/s (150 MB in 0.02 s here)
            if (
                entry is not None
                and entry["size"] == path.stat().st_size
                and entry["crc32c"] == storage.file_crc32c(path)
            ):
                files[rel] = entry
                report.unchanged += 1
                continue
            name = f"{DATA}/{number}/{rel}"
            info = storage.upload_file(path, self._uri(name), self.retry_deadline)
            files[rel] = {"object": name, "size": info.size, "crc32c": info.crc32c}
            report.uploaded += 1
            report.uploaded_bytes += info.size
        removed = set(self._files) - set(files)
        if report.uploaded or removed:
            manifest = {
                "format": FORMAT,
                "save": number,
                "saved_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "prefix": self.prefix,
                "files": files,
            }
            data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8")
            storage.write_bytes(self._uri(MANIFEST), data, "application/json", self.retry_deadline)
            self._files, self._save_number = files, number
        report.deleted = self._collect_garbage()
        report.seconds = time.perf_counter() - started
        log.log(
            logging.INFO if report.uploaded or report.deleted else logging.DEBUG,
            "backup: saved to %s/ (save %d): %d file(s) uploaded (%.1f MB), %d unchanged, %d object(s) deleted, %.1f s",
            self.prefix,
            self._save_number,
            report.uploaded,
            report.uploaded_bytes / 1e6,
            report.unchanged,
            report.deleted,
            report.seconds,
        )
        return report

    def _collect_garbage(self) -> int:
        """Delete objects under this prefix that the current manifest does not name."""
        keep = {MANIFEST} | {entry["object"] for entry in self._files.values()}
        if not self._files:
            keep.discard(MANIFEST)  # an empty backup: nothing to restore, nothing kept
        deleted = 0
        for info in storage.list_prefix(self.prefix or "", self.retry_deadline):
            if info.name not in keep:
                deleted += storage.delete_object(self._uri(info.name), self.retry_deadline)
        return deleted

    def clear(self) -> None:
        """Delete this backup: every object under ``<prefix>/`` and ``local_dir``; nothing else."""
        if not self.enabled:
            return
        assert self.local_dir is not None and self.prefix is not None
        if self._remote:
            deleted = storage.delete_prefix(self.prefix, self.retry_deadline)
            self._files, self._save_number, self._manifest_read = {}, 0, True
            log.info("backup: deleted %d object(s) under %s/", deleted, self.prefix)
        if self.local_dir.exists():
            shutil.rmtree(self.local_dir)

    def close(self) -> None:
        """Remove the private working folder of a gs:// backup (the remote backup stays)."""
        if self._remote:
            self._closed = True
            self._cleanup()

    def callback(self) -> Any:
        """A tf_keras Callback that calls ``save()`` at the end of every epoch.

        Put it right after ``keras.callbacks.BackupAndRestore(str(local_dir))`` so it copies
        that epoch's backup. If the first save of the callback fails (no access to the
        bucket, for example) training stops with the StorageError; a later failure is logged
        as a warning and training goes on (the previous backup stays valid, the next epoch
        saves again).
        """
        return _callback_class()(self)


_CALLBACK_CLASS: type | None = None


def _callback_class() -> type:
    """The Callback class, defined on first use so importing this module does not import TensorFlow."""
    global _CALLBACK_CLASS
    if _CALLBACK_CLASS is None:
        import tf_keras as keras

        class BackupCallback(keras.callbacks.Callback):
            """Calls ``Backup.save()`` at the end of each epoch."""

            def __init__(self, backup: Backup) -> None:
                super().__init__()
                self.backup = backup
                self.saved = 0

            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                if not self.backup.remote:
                    return
                try:
                    self.backup.save()
                except StorageError as exc:
                    if not self.saved:
                        raise
                    log.warning("backup: saving epoch %d failed, training goes on: %s", epoch + 1, exc)
                    return
                self.saved += 1

        _CALLBACK_CLASS = BackupCallback
    return _CALLBACK_CLASS

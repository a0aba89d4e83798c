"""How one attempt of a training task ends early: preempted (retry resumes) or failed for good (retry stops).

On a cluster a training task is retried when its pod ends ``Failed`` (Argo's default retry
policy). Two cases need the attempt's help:

- **SIGTERM** (GKE's graceful node shutdown of a spot VM gives the pod 15-30 s): while a model
  trains, :func:`sigterm_flag` turns SIGTERM into a flag, and :class:`StopOnSigterm` acts on it
  at the next step boundary: it writes a backup of the training state at that step (mirrored to
  gs:// when the backup is there), then raises :class:`~mobiletag.errors.Preempted`, so the
  process exits non-zero within the grace period and the retry resumes at the next step.
  Outside training SIGTERM keeps its default action (the process ends at once; the backups are
  as the last epoch left them).
- **Deterministic failures** (:data:`DETERMINISTIC`: a config or data error, a NaN loss, no
  usable GPU) repeat on every retry. :func:`records_failures` writes a marker
  ``<backup_uri>/<run id>/<task>.FAILED.json`` (beside the task's backup folder, never inside it:
  a backup save deletes what its manifest does not name) with the error's kind and message and a
  fingerprint of the call's arguments; the next attempt of the same task and run with the same
  arguments finds it before reading any data and raises the same error at once (with other
  arguments, e.g. a fixed config in the local runner's same work dir, the marker is dropped).
  Without backups (``backup_uri`` empty) nothing is written or read.

The step boundary is the end of the current call of ``multi_gpu.steps_per_execution`` steps.
Under KFP v2 on Argo the Python process is a child of the KFP launcher, which has no SIGTERM
handler: Argo's emissary (the container's PID 1) forwards SIGTERM to the launcher's process group,
the launcher exits at once, and the container stops within about a second (the emissary polls its
child once a second), killing Python. There the pod still ends ``Failed`` and the retry resumes
from the last epoch's backup (a gs:// save cut short leaves the previous one complete); the
step-level save completes where Python receives the SIGTERM and nothing stops it before it exits
(``mobiletag train`` in a terminal, a container whose main process is Python).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import tf_keras as keras

from mobiletag import storage
from mobiletag.errors import ConfigError, DataError, Preempted, StorageError, TrainingError
from mobiletag.training.backup import Backup, backup_prefix

log = logging.getLogger(__name__)

MARKER_SUFFIX = ".FAILED.json"
# failures that a retry of the same task with the same inputs meets again
DETERMINISTIC: tuple[type[Exception], ...] = (ConfigError, DataError, TrainingError)
_KINDS = {kind.__name__: kind for kind in DETERMINISTIC}

F = TypeVar("F", bound=Callable[..., Any])


# === Deterministic failures ===


def marker_uri(prefix: str) -> str:
    """The failure marker of the task whose backup is ``prefix``: a sibling object, not inside it."""
    return prefix.rstrip("/") + MARKER_SUFFIX


def inputs_fingerprint(arguments: dict[str, Any]) -> str:
    """SHA-256 of the call's arguments but folders (``*_dir``: a pod's local copies), by ``repr`` (the
    config is a frozen dataclass): a retry of the same task has the same; a run started again with a
    fixed config (the local runner's same work dir) has another."""
    kept = sorted((name, repr(value)) for name, value in arguments.items() if not name.endswith("_dir"))
    text = repr(kept)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_earlier_failure(prefix: str, inputs: str = "") -> None:
    """Raise the error an earlier attempt of this task recorded at ``marker_uri(prefix)``, if any.

    The error has the kind and message recorded, plus a line on where the marker is and how to
    start over. A marker left by a call with other ``inputs`` (see :func:`inputs_fingerprint`) is
    deleted instead: the cause may have been fixed.
    """
    uri = marker_uri(prefix)
    text = storage.read_text_if_exists(uri)
    if text is None:
        return
    try:
        record = json.loads(text)
        kind, message, failed_at = _KINDS[record["kind"]], str(record["message"]), str(record["failed_at"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"{uri} is not a failure marker this version can read ({exc}); delete it") from exc
    if record.get("inputs", "") != inputs:
        log.info("an earlier attempt failed with other inputs (%s, %s); trying again", uri, failed_at)
        if storage.is_gcs(uri):
            storage.delete_object(uri)
        else:
            Path(uri).unlink(missing_ok=True)
        return
    log.error("an earlier attempt of this task failed (%s, %s); not trying again", uri, failed_at)
    raise kind(
        f"{message}\n(this task failed the same way on an earlier attempt, at {failed_at}, and a retry with the same "
        f"inputs would too. To start over: fix the cause and start a new run; to retry this run as it is, e.g. "
        f"after fixing the GPU node, delete {uri})"
    )


def record_failure(prefix: str, exc: BaseException, inputs: str = "") -> str:
    """Write the failure marker for ``exc`` (of a call with ``inputs``) beside the backup ``prefix``; its URI.

    A marker that cannot be written is logged, not raised: the original error matters more.
    """
    uri = marker_uri(prefix)
    record = {
        "kind": type(exc).__name__ if type(exc).__name__ in _KINDS else _base_kind(exc),
        "message": str(exc),
        "failed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs,
    }
    data = (json.dumps(record, indent=1) + "\n").encode("utf-8")
    try:
        if storage.is_gcs(uri):
            storage.write_bytes(uri, data, "application/json")
        else:
            path = Path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".partial")
            partial.write_bytes(data)
            partial.replace(path)
    except (StorageError, OSError) as write_error:
        log.warning("could not record the failure at %s: %s", uri, write_error)
        return uri
    log.info("recorded the failure at %s: a retry of this task stops at once with the same message", uri)
    return uri


def _base_kind(exc: BaseException) -> str:
    """The name of the deterministic kind ``exc`` derives from (a subclass is recorded as its base)."""
    return next(kind.__name__ for kind in DETERMINISTIC if isinstance(exc, kind))


def records_failures(task: str) -> Callable[[F], F]:
    """Decorate a training stage's ``run``: deterministic failures are recorded and not tried again.

    The marker sits beside the task's backup, ``backup_prefix(backup_uri, run_id, task)``, from the
    call's ``backup_uri``, ``run_id`` and ``task`` arguments (``task`` defaults to the one given
    here). Before the stage runs, an earlier attempt's marker for the same arguments is raised
    again (:func:`check_earlier_failure`); a :data:`DETERMINISTIC` error out of the stage is recorded.
    """

    def decorate(func: F) -> F:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = bound.arguments
            prefix = backup_prefix(
                arguments.get("backup_uri"), arguments.get("run_id", ""), arguments.get("task", task)
            )
            inputs = inputs_fingerprint(arguments)
            if prefix is not None:
                check_earlier_failure(prefix, inputs)
            try:
                return func(*args, **kwargs)
            except DETERMINISTIC as exc:
                if prefix is not None:
                    record_failure(prefix, exc, inputs)
                raise

        return cast(F, wrapper)

    return decorate


# === SIGTERM ===


@dataclass
class SigtermFlag:
    """Set (``received_at``, a ``time.monotonic()`` value) when SIGTERM arrived while installed."""

    received_at: float | None = None

    @property
    def is_set(self) -> bool:
        return self.received_at is not None


@contextlib.contextmanager
def sigterm_flag() -> Iterator[SigtermFlag]:
    """While the block runs, SIGTERM only sets the yielded flag; the previous handler is back after.

    A second SIGTERM while the flag is set ends the process at once (default action). Outside the
    main thread (where Python cannot install signal handlers) nothing is installed and the flag
    never gets set.
    """
    flag = SigtermFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        if flag.is_set:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        flag.received_at = time.monotonic()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


class StopOnSigterm(keras.callbacks.Callback):
    """At the first step boundary after SIGTERM: back up the training state at that step, then raise
    :class:`~mobiletag.errors.Preempted`.

    Put it after ``keras.callbacks.BackupAndRestore`` and the ``Backup`` mirror callback. The state
    goes through BackupAndRestore's own checkpoint (``model._training_state``) with the epoch and
    the last finished step, and ``backup.save()`` mirrors it to gs://. BackupAndRestore saves only
    at epoch ends and resumes at the next epoch; this callback switches its resume rule to the
    step-level one (``save_freq`` an integer) so a backup written mid-epoch resumes at the next
    step, and marks every epoch-end backup as the epoch's last step, which that rule resumes at
    the next epoch. SIGTERM during an epoch's last step, its validation or its backup: the epoch
    ends as usual (its backup is stored) and the callback raises at the epoch's end. A loss that is
    not finite is never saved: the last epoch's backup stays.
    """

    def __init__(self, flag: SigtermFlag, name: str, backup: Backup | None = None) -> None:
        super().__init__()
        self.flag = flag
        self.name = name
        self.backup = backup
        self.epoch = 0
        self._supports_tf_logs = True  # batch logs stay tensors: no host sync per step

    def _state(self) -> Any:
        return getattr(self.model, "_training_state", None)  # set by BackupAndRestore.on_train_begin

    def _steps(self) -> int:
        return int(self.params.get("steps") or 0)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        state = self._state()
        if state is not None:
            epoch, step = int(state._ckpt_saved_epoch.numpy()), int(state._ckpt_saved_batch.numpy())
            if step >= 0:  # a backup without a step (none restored, or written without batch hooks): by epoch
                # read in fit() right after on_train_begin: (epoch, step + 1), or (epoch + 1, 0) after its last step
                state._save_freq = max(1, self._steps())
            if epoch >= 0 and 0 <= step < self._steps() - 1:
                log.info(
                    "%s: resuming epoch %d at step %d of %d (backup written at SIGTERM)",
                    self.name,
                    epoch + 1,
                    step + 2,
                    self._steps(),
                )
        self._stop_if_asked(None, "")

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # ``batch``: the last step this call ran (steps_per_execution may group several)
        last_step = batch >= self._steps() - 1
        state = self._state()
        if last_step and state is not None:
            state._ckpt_saved_batch.assign(self._steps() - 1)  # the epoch-end backup resumes at the next epoch
        if not self.flag.is_set or last_step:
            return
        saved = ""
        loss = (logs or {}).get("loss")
        if state is not None and (loss is None or math.isfinite(float(loss))):
            started = time.perf_counter()
            state._ckpt_saved_batch.assign(batch)
            state.back_up(epoch=self.epoch, batch=batch)
            saved = f"; backup of step {batch + 1} written in {time.perf_counter() - started:.1f} s"
            try:
                if self.backup is not None:
                    self.backup.save()
            except StorageError as exc:  # the previous complete backup (the last epoch's) stays in place
                saved = f"; mirroring the backup of step {batch + 1} failed ({exc}), the last epoch's stays"
        elif state is not None:
            saved = "; the loss is not finite, so the last epoch's backup is kept"
        self._stop_if_asked(batch, saved)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._stop_if_asked(self._steps() - 1, "; the epoch's backup is stored")

    def _stop_if_asked(self, step: int | None, saved: str) -> None:
        if self.flag.received_at is None:
            return
        where = (
            "before training" if step is None else f"after step {step + 1} of {self._steps()} of epoch {self.epoch + 1}"
        )
        if self._state() is None:
            resume = "backups are off (backup_uri empty): a retry starts this phase again"
        elif self.backup is not None and self.backup.prefix:
            resume = f"a retry of this task (same run id) resumes from the backup at {self.backup.prefix}"
        else:
            resume = "a retry resumes from the backup"
        seconds = time.monotonic() - self.flag.received_at
        self.model.stop_training = True
        raise Preempted(
            f"{self.name}: stopped by SIGTERM (node shutdown, e.g. a spot VM reclaimed) {where}, "
            f"{seconds:.1f} s after the signal{saved}; {resume}"
        )

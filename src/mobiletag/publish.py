"""Safe publishing of an output folder for recurring runs.

The folder goes to a new versioned prefix ``<output_uri>/<UTC timestamp>-<run id>/``. Only
after every object is written and checked (size and CRC32C) does a small ``LATEST`` object
move to it, and only if the model passes the quality gate. A failure midway leaves
``LATEST`` where it was; a model that fails the gate stays in its versioned prefix, with
``gate.json`` saying why, but is not promoted. Works for gs:// and for local folders.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import google_crc32c

from mobiletag.artifacts import Published, atomic_dir, read_json, write_json
from mobiletag.config import GateConfig
from mobiletag.errors import StorageError
from mobiletag.progress import report_result
from mobiletag.storage import gcs_client, is_gcs, join, read_text_if_exists, split_gcs

log = logging.getLogger(__name__)


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    previous_version: str | None = None
    previous_value: float | None = None


@dataclass
class PublishResult:
    version: str
    version_uri: str
    promoted: bool
    gate: GateDecision


def version_name(run_id: str, now: dt.datetime | None = None) -> str:
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_id).strip("-") or "run"
    return f"{stamp}-{safe}"


def _crc32c(path: Path) -> str:
    checksum = google_crc32c.Checksum()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            checksum.update(chunk)
    return base64.b64encode(checksum.digest()).decode("ascii")


def read_latest(output_uri: str) -> str | None:
    text = read_text_if_exists(join(output_uri, Published.LATEST))
    return text.strip() or None if text is not None else None


def check_gate(metrics: dict[str, Any], cfg: GateConfig, output_uri: str) -> GateDecision:
    """Minimum test figures; optionally beating the model LATEST points to by ``gate.min_improvement``,
    and a distilled student that beat the baseline student (``gate.require_distillation_gain``)."""
    test = metrics["test"]
    decision = GateDecision(passed=True)
    for key, minimum in (("f1_micro", cfg.min_f1_micro), ("map_macro", cfg.min_map_macro)):
        value = test.get(key) or 0.0
        if value < minimum:
            decision.reasons.append(f"test {key} {value:.4f} is below the minimum {minimum} (gate.min_{key})")
    previous = read_latest(output_uri)
    decision.previous_version = previous
    if cfg.require_improvement and previous:
        text = read_text_if_exists(join(output_uri, previous, Published.METRICS))
        if text is None:
            log.warning("LATEST points to %s, which has no %s; comparing with nothing", previous, Published.METRICS)
        else:
            old = json.loads(text)["test"].get(cfg.metric) or 0.0
            new = test.get(cfg.metric) or 0.0
            decision.previous_value = old
            reason = improvement_refusal(new, old, previous, cfg)
            if reason:
                decision.reasons.append(reason)
    if cfg.require_distillation_gain:
        reason = distillation_refusal(metrics)
        if reason:
            decision.reasons.append(reason)
    decision.passed = not decision.reasons
    return decision


def improvement_refusal(new: float, old: float, previous: str, cfg: GateConfig) -> str | None:
    """Why ``new`` does not beat the published ``old`` by ``gate.min_improvement``; None when it does.

    With a margin of 0 any gain passes (``new > old``); with a margin m the gain must be at least m
    (compared after rounding to 1e-9, so that 0.45 - 0.43 passes a margin of 0.02).
    """
    margin = cfg.min_improvement
    gain = new - old
    if margin <= 0.0:
        if gain > 0.0:
            return None
        return (
            f"test {cfg.metric} {new:.4f} does not beat {old:.4f} of the published {previous} "
            "(gate.require_improvement)"
        )
    if round(gain, 9) >= round(margin, 9):
        return None
    return (
        f"test {cfg.metric} {new:.4f} does not beat {old:.4f} of the published {previous} by the margin "
        f"gate.min_improvement = {margin} (gain {gain:+.4f}); a smaller margin promotes smaller gains, and more "
        "run-to-run noise with them: lower gate.min_improvement, or set gate.require_improvement: false"
    )


def distillation_refusal(metrics: dict[str, Any]) -> str | None:
    """Why ``gate.require_distillation_gain`` refuses this model; None when its distilled student won.

    Reads ``metrics["distillation"]`` (written when the run also trained the baseline student
    without the teacher): ``shipped`` is ``"distilled"`` or ``"baseline"``, with ``reason``.
    """
    block: dict[str, Any] = metrics.get("distillation") or {}
    students = block.get("students")
    if not isinstance(students, dict) or not students.get("baseline"):
        return (
            f"{Published.METRICS} has no baseline student in its 'distillation' block: this run trained none to compare the "
            "distilled one with (gate.require_distillation_gain); run with the baseline student (pipeline "
            "parameter baseline_student=True, or `mobiletag train --baseline-student`), or set "
            "gate.require_distillation_gain: false"
        )
    shipped = block.get("shipped")
    if shipped == "distilled":
        return None
    figures = ""
    vals = {name: (students.get(name) or {}).get("val", {}).get("map_macro") for name in ("distilled", "baseline")}
    if all(isinstance(v, (int, float)) for v in vals.values()):
        figures = f" (validation macro mAP: distilled {vals['distilled']:.4f}, baseline {vals['baseline']:.4f})"
    why = f": {block['reason']}" if block.get("reason") else ""
    return (
        f"the shipped student is {shipped!r}, not the distilled one{figures}{why}; the teacher did not pay for "
        "itself (gate.require_distillation_gain): improve the teacher or set student.alpha: 1.0 to train without "
        "it, or set gate.require_distillation_gain: false"
    )


def _upload_gcs(
    folder: Path, prefix_uri: str, retry_deadline: float, on_uploaded: Callable[[str], None] | None
) -> None:
    from google.cloud.storage.retry import DEFAULT_RETRY

    bucket_name, prefix = split_gcs(prefix_uri)
    bucket = gcs_client().bucket(bucket_name)
    retry = DEFAULT_RETRY.with_deadline(retry_deadline)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    for path in files:
        blob = bucket.blob(f"{prefix}/{path.name}")
        blob.upload_from_filename(str(path), checksum="crc32c", retry=retry, timeout=60)
        if on_uploaded:
            on_uploaded(path.name)
    for path in files:  # check what the server holds, not what we sent
        blob = bucket.get_blob(f"{prefix}/{path.name}", retry=retry)
        if blob is None or blob.size != path.stat().st_size or blob.crc32c != _crc32c(path):
            raise StorageError(f"{prefix_uri}/{path.name} does not match the local file after upload")


def _upload_local(folder: Path, target: Path, on_uploaded: Callable[[str], None] | None) -> None:
    with atomic_dir(target) as tmp:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            shutil.copyfile(path, tmp / path.name)
            if on_uploaded:
                on_uploaded(path.name)
        for path in folder.iterdir():
            if path.is_file() and _crc32c(tmp / path.name) != _crc32c(path):
                raise StorageError(f"{tmp / path.name} does not match {path} after copying")


def write_latest(output_uri: str, version: str, expected_previous: str | None) -> None:
    """Point LATEST at version, unless another run moved it since we read it."""
    if is_gcs(output_uri):
        from google.api_core.exceptions import PreconditionFailed

        bucket_name, name = split_gcs(join(output_uri, Published.LATEST))
        bucket = gcs_client().bucket(bucket_name)
        seen = bucket.get_blob(name)  # its generation makes the write below a compare-and-swap
        current = (seen.download_as_text(if_generation_match=seen.generation).strip() or None) if seen else None
        moved = f"{output_uri}/{Published.LATEST} moved to {{}} during this run; not overwriting it (publish again to retry)"
        if current != expected_previous:
            raise StorageError(moved.format(current))
        try:
            bucket.blob(name).upload_from_string(
                version + "\n", content_type="text/plain", if_generation_match=seen.generation if seen else 0
            )
        except PreconditionFailed as exc:
            raise StorageError(moved.format("another version")) from exc
        return
    path = Path(output_uri, Published.LATEST)
    tmp = path.with_suffix(".partial")
    tmp.write_text(version + "\n", encoding="utf-8")
    os.replace(tmp, path)


def publish(
    folder: str | Path,
    output_uri: str,
    run_id: str,
    gate: GateConfig,
    *,
    promote: bool = True,
    now: dt.datetime | None = None,
    retry_deadline: float = 120.0,
    on_uploaded: Callable[[str], None] | None = None,
) -> PublishResult:
    """Upload folder to a new versioned prefix, check it, and move LATEST if the gate passes.

    With ``promote=False`` only the upload and the gate decision happen (the pipeline moves
    LATEST in a separate step, shown in the UI under a condition).
    """
    output_uri = output_uri.rstrip("/")
    metrics = read_json(Path(folder, Published.METRICS))
    version = version_name(run_id, now)
    version_uri = join(output_uri, version)
    decision = check_gate(metrics, gate, output_uri)
    with tempfile.TemporaryDirectory(prefix="mobiletag-publish-") as tmp:
        source = Path(tmp, "folder")
        shutil.copytree(folder, source)  # the input artifact stays untouched
        write_json(
            source / Published.GATE,
            {
                "passed": decision.passed,
                "reasons": decision.reasons,
                "previous_version": decision.previous_version,
                "previous_value": decision.previous_value,
                "metric": gate.metric,
                "min_improvement": gate.min_improvement,
            },
        )
        try:
            if is_gcs(output_uri):
                _upload_gcs(source, version_uri, retry_deadline, on_uploaded)
            else:
                Path(output_uri).mkdir(parents=True, exist_ok=True)
                _upload_local(source, Path(version_uri), on_uploaded)
        except Exception as exc:
            raise StorageError(
                f"publishing to {version_uri} failed midway ({exc}); {Published.LATEST} was not moved"
            ) from exc
    report_result(log, "published %s", version_uri)
    promoted = False
    if decision.passed and promote:
        write_latest(output_uri, version, decision.previous_version)
        promoted = True
        log.info("%s now points to %s", join(output_uri, Published.LATEST), version)
    elif not decision.passed:
        report_result(log, "not promoted: %s", "; ".join(decision.reasons), level=logging.WARNING)
    return PublishResult(version=version, version_uri=version_uri, promoted=promoted, gate=decision)

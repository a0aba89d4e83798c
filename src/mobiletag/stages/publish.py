"""Stages: publish the output folder to a new versioned prefix with its quality-gate decision,
and promote it (move LATEST) when the gate passed."""

from __future__ import annotations

import logging
from pathlib import Path

from mobiletag.config import Config
from mobiletag.progress import report_result
from mobiletag.publish import publish, write_latest
from mobiletag.stages.common import StageResult

log = logging.getLogger(__name__)


def run(config: Config, folder: str | Path, output_uri: str, run_id: str, promote: bool = True) -> StageResult:
    result = publish(folder, output_uri, run_id, config.gate, promote=promote)
    gate = result.gate
    if gate.passed:
        report_result(log, "quality gate passed for %s", result.version_uri)
    else:
        report_result(
            log, "quality gate failed for %s: %s", result.version_uri, "; ".join(gate.reasons), level=logging.WARNING
        )
    metrics = {"gate_passed": float(gate.passed), "promoted": float(gate.passed)}
    details = {
        "version": result.version,
        "version_uri": result.version_uri,
        "gate_passed": gate.passed,
        "reasons": gate.reasons,
        "previous_version": gate.previous_version or "",
        "promoted": result.promoted,
    }
    return StageResult(metrics=metrics, details=details)


def promote(output_uri: str, version: str, previous_version: str) -> None:
    write_latest(output_uri.rstrip("/"), version, previous_version or None)
    log.info("%s/LATEST -> %s", output_uri.rstrip("/"), version)

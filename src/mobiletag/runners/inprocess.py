"""Run the stage table in this process: the quickest way to train on one machine.

Each stage gets what its component gets on a cluster: the same entry point
(``mobiletag.stages.<name>.run``), the same per-stage config JSON (resolve_config's), and a
folder of its own under ``work_dir`` for each artifact. The output folder appears only when every
stage succeeded.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobiletag.config import Config
from mobiletag.errors import MobiletagError
from mobiletag.progress import report_result
from mobiletag.stages import STAGE, STAGES, Stage
from mobiletag.stages.common import StageResult
from mobiletag.stages.resolve_config import config_from_json, stage_config_json
from mobiletag.storage import is_gcs

log = logging.getLogger(__name__)


class StageFailed(MobiletagError):
    pass


@dataclass(frozen=True)
class Run:
    """What a stage call may need besides its inputs' folders."""

    data_uri: str
    data_fingerprint: str
    out_dir: Path  # the bundle's folder: the output folder itself
    work: Path
    backup_uri: str
    run_id: str
    output_uri: str
    baseline_student: bool

    def folder(self, stage: str) -> Path:
        return self.out_dir if stage == "bundle" else self.work / stage

    @property
    def backups(self) -> dict[str, Any]:
        return {"backup_uri": self.backup_uri, "run_id": self.run_id}


# How each stage's entry point is called: (entry point, run, inputs by component parameter, config).
# The inputs are the upstream folders (or, for a parameter output such as publish's version,
# its value) named as in the stage table; the config is the stage's own (None without one).
Call = Callable[[Callable[..., Any], Run, dict[str, Any], Any], Any]
CALLS: dict[str, Call] = {
    "prepare_dataset": lambda fn, r, i, c: fn(
        c, r.data_uri, r.folder("prepare_dataset"), data_fingerprint=r.data_fingerprint
    ),
    "train_teacher": lambda fn, r, i, c: fn(c, i["dataset"], r.folder("train_teacher"), **r.backups),
    "train_student": lambda fn, r, i, c: fn(c, i["dataset"], i["teacher"], r.folder("train_student"), **r.backups),
    "train_student_baseline": lambda fn, r, i, c: fn(
        c, i["dataset"], r.folder("train_student_baseline"), enabled=r.baseline_student, **r.backups
    ),
    "select_student": lambda fn, r, i, c: fn(c, i["distilled"], i["baseline"], r.folder("select_student")),
    "quantize": lambda fn, r, i, c: fn(c, i["dataset"], i["teacher"], i["student"], r.folder("quantize"), **r.backups),
    "export_tflite": lambda fn, r, i, c: fn(c, i["dataset"], i["qat_model"], r.folder("export_tflite")),
    "optimize_thresholds": lambda fn, r, i, c: fn(c, i["dataset"], i["tflite_model"], r.folder("optimize_thresholds")),
    "mediapipe_package": lambda fn, r, i, c: fn(
        i["dataset"], i["tflite_model"], i["thresholds"], r.folder("mediapipe_package")
    ),
    "evaluate": lambda fn, r, i, c: fn(
        c,
        i["dataset"],
        i["teacher"],
        i["student"],
        i["tflite_model"],
        i["thresholds"],
        r.folder("evaluate"),
        distilled_dir=i["distilled_student"],
        baseline_dir=i["baseline_student"],
        qat_dir=i["qat_model"],
    ),
    "bundle": lambda fn, r, i, c: fn(
        i["teacher"],
        i["student"],
        i["qat_model"],
        i["tflite_model"],
        i["thresholds"],
        i["evaluation"],
        r.folder("bundle"),
        **r.backups,
    ),
    "publish": lambda fn, r, i, c: fn(c, i["output"], r.output_uri, r.run_id, promote=False),
    "promote": lambda fn, r, i, c: fn(r.output_uri, i["version"], i["previous_version"]),
}

# Stages that run only when this holds (pipeline.py's dsl.If groups); a stage whose upstream
# did not run does not run either.
WHEN: dict[str, Callable[[Run, dict[str, StageResult]], bool]] = {
    "publish": lambda r, results: bool(r.output_uri),
    "promote": lambda r, results: bool(results["publish"].details["gate_passed"]),
}


def _inputs(stage: Stage, run: Run, results: dict[str, StageResult]) -> dict[str, Any] | None:
    """The stage's inputs by parameter: an upstream's folder (its first output) or the value of
    one of its parameter outputs; None when an upstream did not run."""
    values = {}
    for parameter, (upstream, output) in stage.upstream.items():
        if upstream not in results:
            return None
        first = STAGE[upstream].outputs[0]
        values[parameter] = run.folder(upstream) if output == first else results[upstream].details[output]
    return values


def run_pipeline(
    config: Config,
    data_dir: str | Path,
    out_dir: str | Path,
    work_dir: str | Path | None = None,
    keep_work: bool = False,
    output_uri: str | None = None,
    baseline_student: bool = True,
) -> dict[str, StageResult]:
    """The stage table's stages in this process, in table order (``baseline_student``: also train
    the student without the teacher and ship the one with the better validation mAP)."""
    from mobiletag.data.fingerprint import dataset_fingerprint

    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="mobiletag-run-"))
    data_uri = str(data_dir) if is_gcs(str(data_dir)) else str(Path(data_dir).resolve())
    run = Run(
        data_uri=data_uri,
        data_fingerprint=dataset_fingerprint(data_uri).digest,
        out_dir=Path(out_dir),
        work=work,
        backup_uri=str(work / "backup"),
        run_id=f"local-{work.name}",
        output_uri=output_uri or "",
        baseline_student=baseline_student,
    )
    results: dict[str, StageResult] = {}
    timings: dict[str, float] = {}
    try:
        for stage in STAGES:
            inputs = _inputs(stage, run, results)
            if inputs is None or not WHEN.get(stage.name, lambda *_: True)(run, results):
                continue
            stage_config = config_from_json(stage_config_json(config, stage.name)) if stage.config_key else None
            log.info("=== stage %s ===", stage.name)
            start = time.perf_counter()
            try:
                results[stage.name] = CALLS[stage.name](stage.entry(), run, inputs, stage_config) or StageResult()
            except MobiletagError as exc:
                raise StageFailed(f"stage {stage.name} failed: {exc}") from exc
            timings[stage.name] = time.perf_counter() - start
            log.info("=== stage %s done in %.1f s ===", stage.name, timings[stage.name])
    finally:
        if not keep_work and work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    report_result(log, "stage times: %s", ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return results

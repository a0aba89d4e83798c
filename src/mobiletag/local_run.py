"""Run every stage in this process, in pipeline order: the quickest way to train on one machine.

Each stage writes into its own folder under ``work_dir`` (as KFP artifacts would be), and the
final output folder appears only when every stage succeeded.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

from mobiletag.config import Config
from mobiletag.errors import MobiletagError
from mobiletag.stages.common import StageResult

log = logging.getLogger(__name__)


class StageFailed(MobiletagError):
    pass


def run_pipeline(
    config: Config,
    data_dir: str | Path,
    out_dir: str | Path,
    work_dir: str | Path | None = None,
    keep_work: bool = False,
    output_uri: str | None = None,
    baseline_student: bool = True,
) -> dict[str, StageResult]:
    """The pipeline's stages in this process, in pipeline.py's order (``baseline_student``: also
    train the student without the teacher and ship the one with the better validation mAP)."""
    from mobiletag.data.dataset import index_dataset
    from mobiletag.data.tfrecords import build_tfrecords
    from mobiletag.stages import (
        bundle,
        evaluate,
        export_tflite,
        mediapipe_package,
        optimize_thresholds,
        quantize,
        select_student,
        train_student,
        train_student_baseline,
        train_teacher,
    )
    from mobiletag.stages import publish as publish_stage

    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="mobiletag-run-"))
    d = {
        name: work / name
        for name in (
            "dataset",
            "teacher",
            "student",
            "baseline",
            "selected",
            "qat",
            "tflite",
            "thresholds",
            "mediapipe",
            "evaluation",
        )
    }
    results: dict[str, StageResult] = {}
    timings: dict[str, float] = {}

    def stage(name: str, fn, *args) -> None:  # type: ignore[no-untyped-def]
        log.info("=== stage %s ===", name)
        start = time.perf_counter()
        try:
            results[name] = fn(*args) or StageResult()
        except MobiletagError as exc:
            raise StageFailed(f"stage {name} failed: {exc}") from exc
        timings[name] = time.perf_counter() - start
        log.info("=== stage %s done in %.1f s ===", name, timings[name])

    try:
        stage(
            "prepare_dataset",
            lambda: StageResult(details=build_tfrecords(index_dataset(data_dir, config), config, d["dataset"])),
        )
        backup_uri, run_id = str(work / "backup"), f"local-{work.name}"
        stage(
            "train_teacher",
            partial(train_teacher.run, backup_uri=backup_uri, run_id=run_id),
            config,
            d["dataset"],
            d["teacher"],
        )
        stage(
            "train_student",
            partial(train_student.run, backup_uri=backup_uri, run_id=run_id),
            config,
            d["dataset"],
            d["teacher"],
            d["student"],
        )
        stage(
            "train_student_baseline",
            partial(train_student_baseline.run, enabled=baseline_student, backup_uri=backup_uri, run_id=run_id),
            config,
            d["dataset"],
            d["baseline"],
        )
        stage("select_student", select_student.run, d["student"], d["baseline"], d["selected"])
        stage(
            "quantize",
            partial(quantize.run, backup_uri=backup_uri, run_id=run_id),
            config,
            d["dataset"],
            d["teacher"],
            d["selected"],
            d["qat"],
        )
        stage("export_tflite", export_tflite.run, config, d["dataset"], d["qat"], d["tflite"])
        stage("optimize_thresholds", optimize_thresholds.run, config, d["dataset"], d["tflite"], d["thresholds"])
        stage("mediapipe_package", mediapipe_package.run, d["dataset"], d["tflite"], d["thresholds"], d["mediapipe"])
        stage(
            "evaluate",
            partial(evaluate.run, distilled_dir=d["student"], baseline_dir=d["baseline"], qat_dir=d["qat"]),
            d["dataset"],
            d["teacher"],
            d["selected"],
            d["mediapipe"],
            d["thresholds"],
            d["evaluation"],
        )
        stage(
            "bundle",
            partial(bundle.run, backup_uri=backup_uri, run_id=run_id),
            d["teacher"],
            d["selected"],
            d["qat"],
            d["mediapipe"],
            d["thresholds"],
            d["evaluation"],
            out_dir,
        )
        if output_uri:
            stage("publish", publish_stage.run, config, out_dir, output_uri, f"local-{work.name}")
    finally:
        if not keep_work and work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    log.info("stage times: %s", ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return results

"""Stage: the baseline student, the same student trained without the teacher (``student.alpha = 1``).

With the pipeline parameter ``baseline_student`` on, the student is trained twice from the same
config and seed: distilled (train_student) and here, in a task of its own, so on a cluster both
run in parallel; select_student ships the one with the better validation macro mAP.

The task is always in the pipeline (KFP backends before 2.17.0 cannot pass an artifact out of a
``dsl.If`` branch: ``dsl.OneOf`` of artifacts resolves to the last branch); with the parameter
off it trains nothing, asks for no GPU (:func:`baseline_resources`) and leaves :data:`SKIPPED_FILE`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from mobiletag.artifacts import StudentModel, write_json
from mobiletag.config import Config
from mobiletag.stages.common import StageResult

log = logging.getLogger(__name__)

BASELINE_TASK = "train-student-baseline"
SKIPPED_FILE = StudentModel.BASELINE_SKIPPED
# what the baseline task asks for when it trains nothing: no GPU, no GPU node pool, a small CPU slice
IDLE_RESOURCES = {"gpu_limit": "0", "node_selector": {}, "cpu": "1", "memory": "1Gi"}


def baseline_config(config: Config) -> Config:
    """The same config with the teacher's weight at zero: ``student.alpha = 1`` (hard labels only)."""
    return dataclasses.replace(config, student=dataclasses.replace(config.student, alpha=1.0))


def baseline_resources(
    enabled: bool, student_gpus: int, node_selector: dict[str, str], cpu: str, memory: str
) -> dict[str, Any]:
    """Resources of the baseline task: the student's when ``enabled``, else :data:`IDLE_RESOURCES`.

    ``gpu_limit`` is text: the KFP driver substitutes only string parameters into resource requests.
    """
    if not enabled:
        return dict(IDLE_RESOURCES)
    return {"gpu_limit": str(student_gpus), "node_selector": dict(node_selector), "cpu": cpu, "memory": memory}


def run(
    config: Config,
    dataset_dir: str | Path,
    model_dir: str | Path,
    *,
    enabled: bool,
    backup_uri: str | None = None,
    run_id: str = "",
    expected_gpus: int = 0,
    devices: list[str] | None = None,
) -> StageResult:
    """Train the baseline student (``student.alpha = 1``), or, when not ``enabled``, leave a note only.

    Backups go to ``<backup_uri>/<run_id>/train-student-baseline``, apart from the distilled student's.
    """
    out = Path(model_dir)
    if not enabled:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / SKIPPED_FILE, {"trained": False, "reason": "pipeline parameter baseline_student is false"})
        log.info("baseline student: not trained (pipeline parameter baseline_student is false)")
        return StageResult(metrics={"trained": 0.0}, details={"trained": False})
    from mobiletag.stages import train_student  # TensorFlow: only when training

    log.info("baseline student: the same student without the teacher (student.alpha = 1)")
    result = train_student.run(
        baseline_config(config),
        dataset_dir,
        None,  # alpha 1: no teacher
        model_dir,
        backup_uri=backup_uri,
        run_id=run_id,
        expected_gpus=expected_gpus,
        devices=devices,
        task=BASELINE_TASK,
    )
    result.details["trained"] = True
    return result

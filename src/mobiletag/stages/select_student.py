"""Stage: the baseline student (no teacher, alpha = 1) and the choice of the student that ships.

With the pipeline parameter ``baseline_student`` on, the student is trained twice from the same
config and seed: distilled (train-student) and with ``student.alpha = 1`` (train-student-baseline,
in a task of its own, so on a cluster both run in parallel). ``run`` ships the one with the
better validation macro mAP (ties: the distilled one); the test split decides nothing.

The baseline task is always in the pipeline (KFP backends before 2.17.0 cannot pass an artifact
out of a ``dsl.If`` branch: ``dsl.OneOf`` of artifacts resolves to the last branch); with the
parameter off it trains nothing, asks for no GPU (:func:`baseline_resources`) and leaves a note
that ``run`` reads as "no baseline".
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

from mobiletag.config import Config
from mobiletag.errors import ConfigError
from mobiletag.stages.common import STUDENT_CHECKPOINT, STUDENT_METRICS, StageResult, read_json, write_json

log = logging.getLogger(__name__)

BASELINE_TASK = "train-student-baseline"

SELECTION_FILE = "selection.json"
SKIPPED_FILE = "baseline_skipped.json"
DISTILLED = "distilled"
BASELINE = "baseline"
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


def train_baseline(
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


def _val_map(model_dir: Path, role: str) -> float:
    path = model_dir / STUDENT_METRICS
    try:
        return float(read_json(path)["metrics"]["val_map"])
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path}: missing; the {role} student's folder must come from the train_student stage"
        ) from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"{path}: no numeric metrics.val_map; re-run the train_student stage for the {role} student"
        ) from exc


def choose(distilled_val_map: float, baseline_val_map: float | None) -> tuple[str, str]:
    """(shipped, reason): the better validation macro mAP; a tie or no baseline ships the distilled student."""
    if baseline_val_map is None:
        return DISTILLED, "no baseline student in this run (pipeline parameter baseline_student is false)"
    figures = f"validation macro mAP: distilled {distilled_val_map:.4f}, baseline {baseline_val_map:.4f}"
    if baseline_val_map > distilled_val_map:
        return BASELINE, f"the baseline (no teacher) has the better {figures}"
    if baseline_val_map == distilled_val_map:
        return DISTILLED, f"tie on {figures}: the distilled student ships"
    return DISTILLED, f"the distilled student has the better {figures}"


def run(distilled_dir: str | Path, baseline_dir: str | Path | None, out_dir: str | Path) -> StageResult:
    """Copy the student that ships (checkpoint and its student_metrics.json) into ``out_dir``.

    Reads only the validation mAP that each training step recorded. Writes ``selection.json``:
    ``shipped`` (distilled or baseline), ``reason``, ``val_map`` of both, ``alpha`` of the shipped one.
    """
    distilled = Path(distilled_dir)
    baseline = Path(baseline_dir) if baseline_dir else None
    has_baseline = baseline is not None and (baseline / STUDENT_CHECKPOINT).is_file()
    if baseline is not None and not has_baseline and not (baseline / SKIPPED_FILE).is_file():
        raise ConfigError(
            f"{baseline}: neither {STUDENT_CHECKPOINT} nor {SKIPPED_FILE}; "
            "the baseline folder must come from the train-student-baseline step"
        )
    distilled_map = _val_map(distilled, DISTILLED)
    baseline_map = _val_map(baseline, BASELINE) if baseline is not None and has_baseline else None
    shipped, reason = choose(distilled_map, baseline_map)
    source = baseline if shipped == BASELINE and baseline is not None else distilled
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in (STUDENT_CHECKPOINT, STUDENT_METRICS):
        shutil.copyfile(source / name, out / name)
    alpha = read_json(source / STUDENT_METRICS).get("alpha")
    selection = {
        "shipped": shipped,
        "reason": reason,
        "val_map": {DISTILLED: distilled_map, BASELINE: baseline_map},
        "alpha": alpha,
    }
    write_json(out / SELECTION_FILE, selection)
    log.info("select student: %s ships (%s)", shipped, reason)
    metrics = {"val_map_distilled": distilled_map, "baseline_shipped": 1.0 if shipped == BASELINE else 0.0}
    if baseline_map is not None:
        metrics["val_map_baseline"] = baseline_map
    details = {
        "shipped": shipped,
        "reason": reason,
        "val_map_distilled": distilled_map,
        "val_map_baseline": -1.0 if baseline_map is None else baseline_map,
        "alpha": alpha,
        "size_bytes": (out / STUDENT_CHECKPOINT).stat().st_size,
    }
    return StageResult(
        metrics=metrics,
        files={"checkpoint": str(out / STUDENT_CHECKPOINT), "selection": str(out / SELECTION_FILE)},
        details=details,
    )

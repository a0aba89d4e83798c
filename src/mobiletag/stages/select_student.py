"""Stage: the choice of the student that ships, distilled or baseline (train_student_baseline).

``run`` ships the one with the better validation macro mAP, the figure each training stage
recorded on the validation split through the training input path; the baseline ships only when
it is better by more than ``student.selection_margin`` (ties and smaller margins: the distilled
one). The test split decides nothing. A baseline folder holding only the note of an untrained baseline
(:data:`mobiletag.artifacts.StudentModel.BASELINE_SKIPPED`) reads as "no baseline".
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from mobiletag.artifacts import StudentModel, read_json, write_json
from mobiletag.config import Config
from mobiletag.errors import ConfigError
from mobiletag.stages.common import StageResult

log = logging.getLogger(__name__)

DISTILLED = "distilled"
BASELINE = "baseline"


def _val_map(model_dir: Path, role: str) -> float:
    path = model_dir / StudentModel.METRICS
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


def choose(distilled_val_map: float, baseline_val_map: float | None, margin: float = 0.0) -> tuple[str, str]:
    """(shipped, reason): the baseline ships only when its validation macro mAP exceeds the distilled
    student's by more than ``margin``; a tie, a smaller gain or no baseline ships the distilled student."""
    if baseline_val_map is None:
        return DISTILLED, "no baseline student in this run (pipeline parameter baseline_student is false)"
    figures = f"validation macro mAP (training input path): distilled {distilled_val_map:.4f}, baseline {baseline_val_map:.4f}"
    gain = baseline_val_map - distilled_val_map
    if gain > margin:
        return BASELINE, f"the baseline (no teacher) has the better {figures}" + (
            f", by more than the margin {margin:g}" if margin else ""
        )
    if gain > 0:
        return DISTILLED, f"the baseline's gain is within the margin {margin:g} (student.selection_margin): {figures}"
    if gain == 0:
        return DISTILLED, f"tie on {figures}: the distilled student ships"
    return DISTILLED, f"the distilled student has the better {figures}"


def run(config: Config, distilled_dir: str | Path, baseline_dir: str | Path | None, out_dir: str | Path) -> StageResult:
    """Copy the student that ships (checkpoint and its student_metrics.json) into ``out_dir``.

    Reads only the validation mAP that each training step recorded and ``student.selection_margin``.
    Writes ``selection.json``: ``shipped`` (distilled or baseline), ``reason``, ``val_map`` of both,
    ``margin``, ``alpha`` of the shipped one.
    """
    distilled = Path(distilled_dir)
    baseline = Path(baseline_dir) if baseline_dir else None
    has_baseline = baseline is not None and (baseline / StudentModel.CHECKPOINT).is_file()
    if baseline is not None and not has_baseline and not (baseline / StudentModel.BASELINE_SKIPPED).is_file():
        raise ConfigError(
            f"{baseline}: neither {StudentModel.CHECKPOINT} nor {StudentModel.BASELINE_SKIPPED}; "
            "the baseline folder must come from the train-student-baseline step"
        )
    distilled_map = _val_map(distilled, DISTILLED)
    baseline_map = _val_map(baseline, BASELINE) if baseline is not None and has_baseline else None
    margin = config.student.selection_margin
    shipped, reason = choose(distilled_map, baseline_map, margin)
    source = baseline if shipped == BASELINE and baseline is not None else distilled
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in (StudentModel.CHECKPOINT, StudentModel.METRICS):
        shutil.copyfile(source / name, out / name)
    alpha = read_json(source / StudentModel.METRICS).get("alpha")
    selection = {
        "shipped": shipped,
        "reason": reason,
        "val_map": {DISTILLED: distilled_map, BASELINE: baseline_map},
        "margin": margin,
        "alpha": alpha,
    }
    write_json(out / StudentModel.SELECTION, selection)
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
        "size_bytes": (out / StudentModel.CHECKPOINT).stat().st_size,
    }
    return StageResult(
        metrics=metrics,
        files={"checkpoint": str(out / StudentModel.CHECKPOINT), "selection": str(out / StudentModel.SELECTION)},
        details=details,
    )

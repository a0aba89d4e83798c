from kfp import dsl

from components.base import component


@component()
def select_student(
    distilled: dsl.Input[dsl.Model],
    baseline: dsl.Input[dsl.Model],
    config_json: str,
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Ships the student with the better validation mAP, distilled or baseline (ties and margins within student.selection_margin: distilled); the test split decides nothing.

    Args:
        distilled: The distilled student (train-student).
        baseline: The student trained without the teacher (train-student-baseline); baseline_skipped.json only when off.
        config_json: train-student's config sections (from resolve_config): student.selection_margin.
        model: The chosen student_best.h5 and student_metrics.json, and selection.json (both validation mAPs, the reason).
        metrics: Validation mAP of both students and whether the baseline ships.
    """
    from mobiletag.stages import select_student as stage
    from mobiletag.stages.component_io import record
    from mobiletag.stages.resolve_config import config_from_json

    result = stage.run(config_from_json(config_json), distilled.path, baseline.path, model.path)
    record(result, model, metrics)

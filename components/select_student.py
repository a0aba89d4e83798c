from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_student(
    distilled: dsl.Input[dsl.Model],
    baseline: dsl.Input[dsl.Model],
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Ships the student with the better validation mAP, distilled or baseline (ties: distilled); the test split decides nothing.

    Args:
        distilled: The distilled student (train-student).
        baseline: The student trained without the teacher (train-student-baseline); baseline_skipped.json only when off.
        model: The chosen student_best.h5 and student_metrics.json, and selection.json (both validation mAPs, the reason).
        metrics: Validation mAP of both students and whether the baseline ships.
    """
    from mobiletag.stages import select_student as stage

    result = stage.run(distilled.path, baseline.path, model.path)
    model.metadata.update(result.details)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)

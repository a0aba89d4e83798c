from kfp import dsl

from components.base import STUDENT_METRICS, component


@component(metrics=STUDENT_METRICS)
def train_student(
    dataset: dsl.Input[dsl.Dataset],
    teacher: dsl.Input[dsl.Model],
    config_json: str,
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Distils the EfficientNet-Lite student from the frozen teacher (0.7*hard + 0.3*T^2*soft).

    Args:
        teacher: The trained teacher.
        model: student_best.h5 (best validation mAP) and student_metrics.json.
    """
    from mobiletag.stages import train_student as stage
    from mobiletag.stages.component_io import run_training

    run_training(stage.run, config_json, [dataset, teacher], model, metrics)

from kfp import dsl

from components.base import STUDENT_METRICS, component


@component(metrics=STUDENT_METRICS)
def train_student_baseline(
    dataset: dsl.Input[dsl.Dataset],
    config_json: str,
    enabled: bool,
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Trains the same student without the teacher (student.alpha = 1): the baseline that shows whether distillation pays.

    Args:
        config_json: The train_student stage's config sections and step (from resolve_config); alpha is set to 1 here.
        enabled: Pipeline parameter baseline_student; false: trains nothing, asks for no GPU and leaves baseline_skipped.json.
        model: student_best.h5 (best validation mAP) and student_metrics.json, or baseline_skipped.json.
    """
    from mobiletag.stages import train_student_baseline as stage
    from mobiletag.stages.component_io import run_training

    run_training(stage.run, config_json, [dataset], model, metrics, enabled=enabled)

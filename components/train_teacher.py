from kfp import dsl

from components.base import component


@component()
def train_teacher(
    dataset: dsl.Input[dsl.Dataset],
    config_json: str,
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Trains the EfficientNet-B3 teacher: head warm-up, then fine-tuning of the top 30%.

    Args:
        model: teacher_best.h5 (best validation mAP) and teacher_metrics.json.
        metrics: Validation mAP, training images/second.
    """
    from mobiletag.stages import train_teacher as stage
    from mobiletag.stages.component_io import run_training

    run_training(stage.run, config_json, [dataset], model, metrics)

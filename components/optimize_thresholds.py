from kfp import dsl

from components.base import component


@component()
def optimize_thresholds(
    dataset: dsl.Input[dsl.Dataset],
    tflite_model: dsl.Input[dsl.Model],
    config_json: str,
    thresholds: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
):
    """Chooses per-class thresholds by grid search on validation, on the INT8 model's outputs.

    Args:
        dataset: TFRecords (validation split).
        tflite_model: The exported INT8 model.
        metrics: Validation macro F1 at the chosen thresholds.
    """
    from mobiletag.stages import optimize_thresholds as stage
    from mobiletag.stages.component_io import record
    from mobiletag.stages.resolve_config import config_from_json

    result = stage.run(config_from_json(config_json), dataset.path, tflite_model.path, thresholds.path)
    record(result, metrics=metrics)
    thresholds.metadata.update({"strategy": result.details["strategy"], "seconds": result.details["seconds"]})

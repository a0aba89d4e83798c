from kfp import dsl

from components.base import component


@component()
def export_tflite(
    dataset: dsl.Input[dsl.Dataset],
    qat_model: dsl.Input[dsl.Model],
    config_json: str,
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Converts the QAT model to a full-integer INT8 TFLite model and verifies it.

    Args:
        dataset: TFRecords (representative data from train, parity check on validation).
        qat_model: The QAT model.
        model: model_qat_int8.tflite, labels.txt, export_report.json.
        metrics: Size in bytes and the parity with the QAT model.
    """
    from mobiletag.stages import export_tflite as stage
    from mobiletag.stages.component_io import record
    from mobiletag.stages.resolve_config import config_from_json

    result = stage.run(config_from_json(config_json), dataset.path, qat_model.path, model.path)
    record(result, model, metrics)

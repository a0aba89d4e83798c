from kfp import dsl

from components.base import component


@component()
def bundle(
    teacher: dsl.Input[dsl.Model],
    student: dsl.Input[dsl.Model],
    qat_model: dsl.Input[dsl.Model],
    tflite_model: dsl.Input[dsl.Model],
    thresholds: dsl.Input[dsl.Artifact],
    evaluation: dsl.Input[dsl.Artifact],
    backup_uri: str,
    output: dsl.Output[dsl.Artifact],
):
    """Assembles the output folder (model, labels, metrics, thresholds, inference config, checkpoints).

    Args:
        teacher: The teacher checkpoint.
        student: The float student checkpoint.
        qat_model: The QAT student checkpoint.
        tflite_model: The INT8 TFLite model with MediaPipe metadata (mediapipe-package) and labels.
        evaluation: metrics.json and report.md.
        backup_uri: The training steps' backup prefix: once the output folder is written, <backup_uri>/<run id>/ is deleted (every training output is stored by then); empty: nothing to delete.
        output: The output folder of the contract with the app team.
    """
    from mobiletag.stages import bundle as stage
    from mobiletag.stages.component_io import run_id

    result = stage.run(
        teacher.path,
        student.path,
        qat_model.path,
        tflite_model.path,
        thresholds.path,
        evaluation.path,
        output.path,
        backup_uri=backup_uri or None,
        run_id=run_id(),
    )
    output.metadata.update(result.details)

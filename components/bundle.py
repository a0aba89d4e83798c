from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def bundle(
    teacher: dsl.Input[dsl.Model],
    student: dsl.Input[dsl.Model],
    qat_model: dsl.Input[dsl.Model],
    tflite_model: dsl.Input[dsl.Model],
    thresholds: dsl.Input[dsl.Artifact],
    evaluation: dsl.Input[dsl.Artifact],
    output: dsl.Output[dsl.Artifact],
):
    """Assembles the output folder (model, labels, metrics, thresholds, inference config, checkpoints).

    Args:
        teacher: The teacher checkpoint.
        student: The float student checkpoint.
        qat_model: The QAT student checkpoint.
        tflite_model: The INT8 TFLite model with MediaPipe metadata (mediapipe-package) and labels.
        thresholds: threshold_recommendation.json.
        evaluation: metrics.json and report.md.
        output: The output folder of the contract with the app team.
    """
    from mobiletag.stages import bundle as stage

    result = stage.run(
        teacher.path, student.path, qat_model.path, tflite_model.path, thresholds.path, evaluation.path, output.path
    )
    output.metadata.update(result.details)

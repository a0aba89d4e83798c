from kfp import dsl

from components.base import component


@component()
def quantize(
    dataset: dsl.Input[dsl.Dataset],
    teacher: dsl.Input[dsl.Model],
    student: dsl.Input[dsl.Model],
    config_json: str,
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Quantization-aware training of the student (tensorflow-model-optimization), one device.

    Args:
        teacher: The trained teacher (distillation stays on during QAT by default).
        student: The distilled float student.
        model: student_qat.h5.
        metrics: Validation mAP of the QAT model and of the float student.
    """
    from mobiletag.stages import quantize as stage
    from mobiletag.stages.component_io import run_training

    run_training(stage.run, config_json, [dataset, teacher, student], model, metrics)

from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def quantize(
    dataset: dsl.Input[dsl.Dataset],
    teacher: dsl.Input[dsl.Model],
    student: dsl.Input[dsl.Model],
    config_json: str,
    backup_uri: str,
    gpus: int,
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Quantization-aware training of the student (tensorflow-model-optimization), one device.

    Args:
        dataset: TFRecords from prepare_dataset.
        teacher: The trained teacher (distillation stays on during QAT by default).
        student: The distilled float student.
        config_json: This stage's config sections (from resolve_config).
        backup_uri: Prefix (gs:// on a cluster) for backups, kept in <backup_uri>/<run id>/<task>/ (run id: the pod's pipeline/runid label); empty: none.
        gpus: GPUs this step gets (1, or 0 on a CPU); above 0 the step fails at once when TensorFlow sees no GPU.
        model: student_qat.h5.
        metrics: Validation mAP of the QAT model and of the float student.
    """
    import os

    from mobiletag.stages import quantize as stage
    from mobiletag.stages.component_io import run_training

    run_id = os.environ.get("MOBILETAG_RUN_ID", "")  # the pod's pipeline/runid label (pipeline.py)
    run_training(
        stage.run,
        config_json,
        [dataset, teacher, student],
        model,
        metrics,
        backup_uri=backup_uri,
        gpus=gpus,
        run_id=run_id,
    )

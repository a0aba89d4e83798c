from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_student(
    dataset: dsl.Input[dsl.Dataset],
    teacher: dsl.Input[dsl.Model],
    config_json: str,
    backup_uri: str,
    gpus: int,
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Distils the EfficientNet-Lite student from the frozen teacher (0.7*hard + 0.3*T^2*soft).

    Args:
        dataset: TFRecords from prepare_dataset.
        teacher: The trained teacher.
        config_json: This stage's config sections (from resolve_config).
        backup_uri: Prefix (gs:// on a cluster) for backups, kept in <backup_uri>/<run id>/<task>/ (run id: the pod's pipeline/runid label); empty: none.
        gpus: GPUs this step gets; above 0 the step fails at once when TensorFlow sees no GPU.
        model: student_best.h5 (best validation mAP) and student_metrics.json.
        metrics: Validation mAP, training images/second, parameter count.
    """
    import os

    from mobiletag.stages import train_student as stage
    from mobiletag.stages.component_io import run_training

    run_id = os.environ.get("MOBILETAG_RUN_ID", "")  # the pod's pipeline/runid label (pipeline.py)
    run_training(
        stage.run, config_json, [dataset, teacher], model, metrics, backup_uri=backup_uri, gpus=gpus, run_id=run_id
    )

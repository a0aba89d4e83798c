from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_student(
    dataset: dsl.Input[dsl.Dataset],
    teacher: dsl.Input[dsl.Model],
    config_json: str,
    backup_uri: str,
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Distils the EfficientNet-Lite student from the frozen teacher (0.7*hard + 0.3*T^2*soft).

    Args:
        dataset: TFRecords from prepare_dataset.
        teacher: The trained teacher.
        config_json: This stage's config sections (from resolve_config).
        backup_uri: Folder (gs:// on a cluster) for BackupAndRestore, so a preempted pod resumes; empty: none.
        model: student_best.h5 (best validation mAP) and student_metrics.json.
        metrics: Validation mAP, training images/second, parameter count.
    """
    from mobiletag.stages import train_student as stage
    from mobiletag.stages.resolve_config import config_from_json

    result = stage.run(
        config_from_json(config_json), dataset.path, teacher.path, model.path, backup_dir=backup_uri or None
    )
    model.metadata.update(result.details)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)

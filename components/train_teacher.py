from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_teacher(
    dataset: dsl.Input[dsl.Dataset],
    config_json: str,
    backup_uri: str,
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Trains the EfficientNet-B3 teacher: head warm-up, then fine-tuning of the top 30%.

    Args:
        dataset: TFRecords from prepare_dataset.
        config_json: This stage's config sections (from resolve_config).
        backup_uri: Folder (gs:// on a cluster) for BackupAndRestore, so a preempted pod resumes; empty: none.
        model: teacher_best.h5 (best validation mAP) and teacher_metrics.json.
        metrics: Validation mAP, training images/second.
    """
    from mobiletag.stages import train_teacher as stage
    from mobiletag.stages.resolve_config import config_from_json

    result = stage.run(config_from_json(config_json), dataset.path, model.path, backup_dir=backup_uri or None)
    model.metadata.update(result.details)
    for name, value in result.metrics.items():
        metrics.log_metric(name, value)

from kfp import dsl

from components.base import STUDENT_METRICS, component


@component(metrics=STUDENT_METRICS)
def train_student_baseline(
    dataset: dsl.Input[dsl.Dataset],
    config_json: str,
    enabled: bool,
    backup_uri: str,
    gpus: int,
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Trains the same student without the teacher (student.alpha = 1): the baseline that shows whether distillation pays.

    Args:
        config_json: The train_student stage's config sections (from resolve_config); alpha is set to 1 here.
        enabled: Pipeline parameter baseline_student; false: trains nothing, asks for no GPU and leaves baseline_skipped.json.
        backup_uri: Prefix (gs:// on a cluster) for backups, kept in <backup_uri>/<run id>/train-student-baseline/; empty: none.
        gpus: GPUs this step gets (the student's); above 0 the step fails at once when TensorFlow sees no GPU.
        model: student_best.h5 (best validation mAP) and student_metrics.json, or baseline_skipped.json.
    """
    import os

    from mobiletag.stages import train_student_baseline as stage
    from mobiletag.stages.component_io import run_training

    run_id = os.environ.get("MOBILETAG_RUN_ID", "")  # the pod's pipeline/runid label (pipeline.py)
    run_training(
        stage.run,
        config_json,
        [dataset],
        model,
        metrics,
        backup_uri=backup_uri,
        gpus=gpus,
        run_id=run_id,
        enabled=enabled,
    )

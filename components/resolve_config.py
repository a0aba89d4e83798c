from typing import NamedTuple

from kfp import dsl

from components.base import component


@component()
def resolve_config(
    data_uri: str,
    config_overrides: str,
    backup_uri: str,
    gpu_node_pool: str,
    gpu_accelerator: str,
    teacher_gpus: int,
    student_gpus: int,
    baseline_student: bool,
    student_cpu: str,
    student_memory: str,
    config: dsl.Output[dsl.Artifact],
) -> NamedTuple(
    "StageConfigs",
    [
        ("prepare_dataset", str),
        ("train_teacher", str),
        ("train_student", str),
        ("quantize", str),
        ("export_tflite", str),
        ("optimize_thresholds", str),
        ("publish", str),
        ("data_fingerprint", str),
        ("gpu_node_selector", dict),
        ("teacher_gpu_limit", str),
        ("student_gpu_limit", str),
        ("qat_gpu_limit", str),
        ("baseline_gpu_limit", str),
        ("baseline_node_selector", dict),
        ("baseline_cpu", str),
        ("baseline_memory", str),
    ],
):
    """Merges the default config, the dataset's config.yaml and the run's overrides; fingerprints the dataset.

    Args:
        data_uri: Dataset folder (local path or gs:// URI) whose config.yaml is read if present.
        config_overrides: YAML text of config overrides for this run (may be empty).
        backup_uri: Prefix (gs://) for the training steps' backups, in their config JSON's step block; empty: none.
        gpu_node_pool: GKE node pool for the training steps (empty: no node-pool selector).
        gpu_accelerator: GKE accelerator label of that pool (empty: no accelerator selector).
        teacher_gpus: GPUs for the teacher step.
        student_gpus: GPUs for the student step (QAT gets one when this is above 0).
        baseline_student: Whether the baseline student (alpha = 1) is trained; false: its step gets no GPU.
        student_cpu: CPU request of the student step (the baseline's too when it is trained).
        student_memory: Memory request of the student step (the baseline's too when it is trained).
        config: The merged configuration as YAML, for the record.

    Returns:
        The JSON config of each stage (only the sections it reads; a training step's, its step block too), the dataset's fingerprint (an input of
        prepare_dataset, so a change of the data is a cache miss), the GPU node selector and the GPU limits.
    """
    from collections import namedtuple

    from mobiletag.stages import CONFIG_OUTPUTS
    from mobiletag.stages import resolve_config as stage
    from mobiletag.stages.train_student_baseline import baseline_resources

    steps = stage.training_steps(backup_uri, teacher_gpus, student_gpus)
    result = stage.run(data_uri, config_overrides, steps=steps)
    with open(config.path, "w", encoding="utf-8") as fh:
        fh.write(result["full"])
    config.metadata["data_fingerprint"] = result["data_fingerprint"]
    gpus = stage.gpu_limits(teacher_gpus, student_gpus)
    node_selector = stage.gpu_node_selector(gpu_node_pool, gpu_accelerator)
    baseline = baseline_resources(baseline_student, student_gpus, node_selector, student_cpu, student_memory)
    gpu_fields = ["teacher_gpu_limit", "student_gpu_limit", "qat_gpu_limit"]
    baseline_fields = ["gpu_limit", "node_selector", "cpu", "memory"]
    outputs = namedtuple(
        "StageConfigs",
        [
            *CONFIG_OUTPUTS,
            "data_fingerprint",
            "gpu_node_selector",
            *gpu_fields,
            *[f"baseline_{f}" for f in baseline_fields],
        ],
    )
    return outputs(
        *[result[s] for s in CONFIG_OUTPUTS],
        result["data_fingerprint"],
        node_selector,
        *[gpus[f] for f in gpu_fields],
        *[baseline[f] for f in baseline_fields],
    )

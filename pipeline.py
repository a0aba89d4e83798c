"""The mobiletag Kubeflow pipeline: wiring only (GPU pools, caching, retries).

Compile: ``make compile`` (or ``kfp dsl compile --py pipeline.py --output pipeline.yaml``).
"""

from components.bundle import bundle
from components.evaluate import evaluate
from components.export_tflite import export_tflite
from components.image import IMAGE
from components.optimize_thresholds import optimize_thresholds
from components.prepare_dataset import prepare_dataset
from components.promote import promote
from components.publish import publish
from components.quantize import quantize
from components.resolve_config import resolve_config
from components.train_student import train_student
from components.train_teacher import train_teacher
from kfp import compiler, dsl, kubernetes

PIPELINE_NAME = "mobiletag"
GPU_RESOURCE = "nvidia.com/gpu"
TRAINING_RETRIES = 3  # GPU nodes get preempted; BackupAndRestore resumes from the last epoch


def _on_gpu_pool(task: dsl.PipelineTask, gpus, node_selector, cpu: str, memory: str) -> dsl.PipelineTask:
    """Request GPUs on the GPU node pool, tolerate its taint, give TF a memory-backed /dev/shm."""
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    task.set_cpu_request(cpu).set_memory_request(memory)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit="16Gi")
    task.set_retry(num_retries=TRAINING_RETRIES, backoff_duration="60s", backoff_factor=2.0)
    return task


def _on_cpu(task: dsl.PipelineTask, cpu: str = "2", memory: str = "8Gi") -> dsl.PipelineTask:
    return task.set_cpu_request(cpu).set_memory_request(memory)


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Trains a mobile multi-label image classifier (EfficientNet-B3 teacher, EfficientNet-Lite "
    "student, QAT) and ships it as an INT8 TFLite model with per-class thresholds.",
)
def mobiletag_pipeline(
    data_uri: str,
    config_overrides: str = "",
    output_uri: str = "",
    backup_uri: str = "",
    teacher_gpus: int = 4,
    student_gpus: int = 4,
    gpu_node_pool: str = "gpu-pool",
    gpu_accelerator: str = "nvidia-tesla-t4",
) -> dsl.Artifact:
    """mobiletag: dataset folder in, INT8 TFLite model and thresholds out.

    Returns:
        The output folder: model_qat_int8.tflite, labels.txt, metrics.json, threshold_recommendation.json,
        inference_config.json, checkpoints.

    Args:
        data_uri: Dataset folder, local path or gs:// URI (images/, train/val/test_labels.csv, config.yaml).
        config_overrides: YAML text of config overrides (see configs/default.yaml).
        output_uri: Where to publish (gs:// or local): a versioned prefix per run, LATEST moved when the gate passes.
        backup_uri: Prefix (gs://) for training backups, so a preempted step resumes; empty: no backups.
        teacher_gpus: GPUs for the teacher step (MirroredStrategy over all of them).
        student_gpus: GPUs for the student step.
        gpu_node_pool: GKE node pool of the GPU nodes (empty: any node).
        gpu_accelerator: GKE accelerator label of that pool, e.g. nvidia-tesla-t4, nvidia-l4 (empty: any).
    """
    configs = resolve_config(
        data_uri=data_uri,
        config_overrides=config_overrides,
        gpu_node_pool=gpu_node_pool,
        gpu_accelerator=gpu_accelerator,
    ).set_display_name("resolve config")
    _on_cpu(configs, cpu="1", memory="1Gi")
    configs.set_caching_options(False)  # re-read the dataset's config.yaml on every run

    data = prepare_dataset(data_uri=data_uri, config_json=configs.outputs["prepare_dataset"])
    _on_cpu(data.set_display_name("prepare dataset"), cpu="8", memory="16Gi")

    teacher = train_teacher(
        dataset=data.outputs["dataset"],
        config_json=configs.outputs["train_teacher"],
        backup_uri=backup_uri,
    ).set_display_name("train teacher")
    _on_gpu_pool(teacher, teacher_gpus, configs.outputs["gpu_node_selector"], cpu="16", memory="64Gi")

    student = train_student(
        dataset=data.outputs["dataset"],
        teacher=teacher.outputs["model"],
        config_json=configs.outputs["train_student"],
        backup_uri=backup_uri,
    ).set_display_name("train student")
    _on_gpu_pool(student, student_gpus, configs.outputs["gpu_node_selector"], cpu="16", memory="64Gi")

    qat = quantize(
        dataset=data.outputs["dataset"],
        teacher=teacher.outputs["model"],
        student=student.outputs["model"],
        config_json=configs.outputs["quantize"],
        backup_uri=backup_uri,
    ).set_display_name("quantization-aware training")
    _on_gpu_pool(qat, 1, configs.outputs["gpu_node_selector"], cpu="8", memory="32Gi")  # QAT: one device

    exported = export_tflite(
        dataset=data.outputs["dataset"],
        qat_model=qat.outputs["model"],
        config_json=configs.outputs["export_tflite"],
    ).set_display_name("export INT8 TFLite")
    _on_cpu(exported, cpu="4", memory="8Gi")

    thresholds = optimize_thresholds(
        dataset=data.outputs["dataset"],
        tflite_model=exported.outputs["model"],
        config_json=configs.outputs["optimize_thresholds"],
    ).set_display_name("optimize thresholds")
    _on_cpu(thresholds)

    evaluation = evaluate(
        dataset=data.outputs["dataset"],
        teacher=teacher.outputs["model"],
        student=student.outputs["model"],
        tflite_model=exported.outputs["model"],
        thresholds=thresholds.outputs["thresholds"],
    ).set_display_name("evaluate")
    _on_cpu(evaluation, cpu="4", memory="8Gi")

    output = bundle(
        teacher=teacher.outputs["model"],
        student=student.outputs["model"],
        qat_model=qat.outputs["model"],
        tflite_model=exported.outputs["model"],
        thresholds=thresholds.outputs["thresholds"],
        evaluation=evaluation.outputs["evaluation"],
    ).set_display_name("bundle")
    _on_cpu(output, cpu="1", memory="2Gi")

    with dsl.If(output_uri != "", name="publish-requested"):
        published = publish(
            output=output.outputs["output"],
            output_uri=output_uri,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            config_json=configs.outputs["publish"],
        ).set_display_name("publish + quality gate")
        _on_cpu(published, cpu="1", memory="2Gi")
        published.set_caching_options(False)  # LATEST may have moved since a cached run
        with dsl.If(published.outputs["gate_passed"] == True, name="gate-passed"):  # noqa: E712
            promoted = promote(
                output_uri=output_uri,
                version=published.outputs["version"],
                previous_version=published.outputs["previous_version"],
            ).set_display_name("promote: move LATEST")
            _on_cpu(promoted, cpu="1", memory="1Gi")
            promoted.set_caching_options(False)
    return output.outputs["output"]


def compile_pipeline(path: str = "pipeline.yaml") -> str:
    compiler.Compiler().compile(mobiletag_pipeline, package_path=path)
    return path


if __name__ == "__main__":
    print(compile_pipeline(), "compiled with image", IMAGE)

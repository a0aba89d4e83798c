"""The mobiletag Kubeflow pipeline: wiring only (GPU pools, resources, timeouts, caching, retries).

Each task's inputs, config JSON and `after` come from the stage table (mobiletag.stages.STAGES) through
``_stage``, each ``dsl.If`` group's condition from the table's ``when`` through ``_when``; this file adds
what the table does not say: the pipeline's parameters, display names and resources.
tests/pipeline/test_stage_table.py checks the compiled DAG against the table (order, tasks, conditions,
resources).

Compile: ``make compile`` (or ``kfp dsl compile --py pipeline.py --output pipeline.yaml``).
"""

from components.bundle import bundle
from components.evaluate import evaluate
from components.export_tflite import export_tflite
from components.image import IMAGE
from components.mediapipe_package import mediapipe_package
from components.optimize_thresholds import optimize_thresholds
from components.prepare_dataset import prepare_dataset
from components.promote import promote
from components.publish import publish
from components.quantize import quantize
from components.resolve_config import resolve_config
from components.select_student import select_student
from components.train_student import train_student
from components.train_student_baseline import train_student_baseline
from components.train_teacher import train_teacher
from kfp import compiler, dsl, kubernetes

from mobiletag.stages import CONFIG_STAGE, STAGE
from mobiletag.stages.component_io import RUN_ID_ENV

PIPELINE_NAME = "mobiletag"
GPU_RESOURCE = "nvidia.com/gpu"
HOUR = 3600

# === Resources ===
# GPU steps, per run (pipeline parameters; the KFP driver substitutes string parameters into
# resource requests since backend 2.4.0). The defaults fit the smallest common 4-GPU GKE node,
# n1-standard-16 + 4 x T4 (15.89 CPU / ~54.7 GiB allocatable), leaving ~1.9 CPU / ~6.7 GiB for
# DaemonSets (kube-proxy, logging, metrics, GPU device plugin) and Argo's wait container; a
# g2-standard-48 + 4 x L4 or a2-highgpu-4g has room to raise them. QAT uses one GPU: its defaults
# also fit a 1-GPU n1-standard-8 + T4 or g2-standard-8 (7.91 CPU / ~26 GiB allocatable).
TRAINING_CPU = "14"
TRAINING_MEMORY = "48Gi"
QAT_CPU = "6"
QAT_MEMORY = "20Gi"

# === Timeouts and retries ===
# Every step's pod gets activeDeadlineSeconds (kfp-kubernetes set_timeout; the driver applies it
# since backend 2.1.0), counted per attempt: a retried pod gets a new deadline.
TIMEOUTS = {
    "resolve-config": 1 * HOUR,  # config + one listing of images/ (list pages of 1,000 objects)
    "prepare-dataset": 6 * HOUR,
    "train-teacher": 48 * HOUR,
    "train-student": 48 * HOUR,
    "train-student-baseline": 48 * HOUR,
    "select-student": 1 * HOUR,
    "quantize": 48 * HOUR,
    "export-tflite": 2 * HOUR,
    "optimize-thresholds": 2 * HOUR,
    "mediapipe-package": 2 * HOUR,  # metadata in seconds; ImageClassifier decodes every test image
    "evaluate": 12 * HOUR,  # runs the float teacher and student on the test split on CPUs
    "bundle": 1 * HOUR,
    "publish": 1 * HOUR,
    "promote": 1 * HOUR,
}
RUN_ID_LABEL = "pipeline/runid"  # set on every pod of a run by the KFP API server (and on recurring runs)
TRAINING_RETRIES = 3  # GPU nodes get preempted; BackupAndRestore resumes from the last epoch
# Argo's retryStrategy.backoff.maxDuration counts from the start of the first attempt: no retry
# starts after it, and a retried pod is cut at it. kfp's default (1 h) would mean that a step
# preempted after an hour of training is never retried; 72 h covers the 48 h attempt and resumes.
TRAINING_RETRY_WINDOW = "72h"


def _on_gpu_pool(task: dsl.PipelineTask, gpu_limit, node_selector, cpu, memory) -> dsl.PipelineTask:
    """Request GPUs on the GPU node pool, tolerate its taint, give TF a memory-backed /dev/shm.

    ``gpu_limit`` must be a string channel: the driver substitutes a resource placeholder with
    the parameter's string value only (an integer one would give the pod no GPU).
    """
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpu_limit)
    task.set_cpu_request(cpu).set_memory_request(memory)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit="16Gi")
    _run_id_from_label(task)
    task.set_retry(
        num_retries=TRAINING_RETRIES,
        backoff_duration="60s",
        backoff_factor=2.0,
        backoff_max_duration=TRAINING_RETRY_WINDOW,
    )
    return kubernetes.set_timeout(task, TIMEOUTS[task.name])


def _run_id_from_label(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Backups live under <backup_uri>/<run id>/<task>/. The run id comes from the pod's label, not
    from an input: KFP's cache key is the inputs, so an input that differs every run would make
    the step (and everything after it) never cached."""
    return kubernetes.use_field_path_as_env(task, env_name=RUN_ID_ENV, field_path=f"metadata.labels['{RUN_ID_LABEL}']")


def _stage(tasks: dict[str, dsl.PipelineTask], component, display_name: str, **parameters) -> dsl.PipelineTask:
    """The stage's task, wired as the stage table says: each input from its upstream stage's task in
    ``tasks``, its config JSON from resolve_config's output, after the stages it waits for;
    ``parameters``: the pipeline's values it takes besides. The task joins ``tasks`` under the stage's name."""
    stage = STAGE[component.name.replace("-", "_")]
    inputs = {name: tasks[upstream].outputs[output] for name, (upstream, output) in stage.upstream.items()}
    if stage.config_key:
        inputs["config_json"] = tasks[CONFIG_STAGE].outputs[stage.config_key]
    task = component(**inputs, **parameters).set_display_name(display_name)
    tasks[stage.name] = task.after(*(tasks[name] for name in stage.after))
    return task


def _when(tasks: dict[str, dsl.PipelineTask], component, **parameters) -> dsl.If:
    """The ``dsl.If`` group of the stage's condition (the stage table's ``when``): its source is the
    upstream task's output in ``tasks``, or the pipeline parameter of that name in ``parameters``."""
    when = STAGE[component.name.replace("-", "_")].when
    if when is None:
        raise ValueError(
            f"stage {component.name} has no `when` in the stage table (mobiletag.stages.STAGES): "
            "give its row one, or create its task outside a dsl.If"
        )
    outputs = {name: task.outputs for name, task in tasks.items()}
    return dsl.If(when.condition(outputs, parameters), name=when.group)


def _on_cpu(task: dsl.PipelineTask, cpu: str = "2", memory: str = "8Gi") -> dsl.PipelineTask:
    """CPU steps: requests that fit a 4-vCPU node (prepare-dataset: an 8-vCPU node)."""
    task.set_cpu_request(cpu).set_memory_request(memory)
    return kubernetes.set_timeout(task, TIMEOUTS[task.name])


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
    baseline_student: bool = True,
    gpu_node_pool: str = "",
    gpu_accelerator: str = "nvidia-tesla-t4",
    gpu_max_pending_minutes: int = 60,
    teacher_cpu: str = TRAINING_CPU,
    teacher_memory: str = TRAINING_MEMORY,
    student_cpu: str = TRAINING_CPU,
    student_memory: str = TRAINING_MEMORY,
    qat_cpu: str = QAT_CPU,
    qat_memory: str = QAT_MEMORY,
) -> dsl.Artifact:
    """mobiletag: dataset folder in, INT8 TFLite model and thresholds out.

    Returns:
        The output folder: model_qat_int8.tflite (with TFLite metadata for MediaPipe Tasks), labels.txt, metrics.json, threshold_recommendation.json,
        inference_config.json, checkpoints.

    Args:
        data_uri: Dataset folder, local path or gs:// URI (images/, train/val/test_labels.csv, config.yaml).
        config_overrides: YAML text of config overrides (see configs/default.yaml).
        output_uri: Where to publish (gs:// or local): a versioned prefix per run, LATEST moved when the gate passes.
        backup_uri: Prefix (gs://) for training backups, so a preempted step resumes; empty: no backups.
        teacher_gpus: GPUs for the teacher step (MirroredStrategy over all of them).
        student_gpus: GPUs for the student step (QAT gets one GPU when this is above 0).
        baseline_student: Also train the student without the teacher (alpha = 1) in its own step, in parallel with the distilled one (same GPUs and resources), and ship whichever has the better validation mAP; metrics.json gets a "distillation" block. False: that step trains nothing and requests no GPU.
        gpu_node_pool: GKE node pool of the GPU nodes (empty, the default: any node with the accelerator label and free GPUs).
        gpu_accelerator: GKE accelerator label of the GPU nodes, e.g. nvidia-tesla-t4, nvidia-l4 (empty: any).
        gpu_max_pending_minutes: Longest time a GPU step may stay Pending (unschedulable) before `mobiletag submit --wait` (and the weekly CronJob) reports the scheduler's message and stops the run; 0: no limit. Kubernetes' own deadline does not count Pending time.
        teacher_cpu: CPU request of the teacher step (Kubernetes quantity, e.g. 14 or 44 on a g2-standard-48).
        teacher_memory: Memory request of the teacher step (e.g. 48Gi, or 160Gi on a g2-standard-48).
        student_cpu: CPU request of the student step (and of the baseline student's).
        student_memory: Memory request of the student step (and of the baseline student's).
        qat_cpu: CPU request of the QAT step (one GPU).
        qat_memory: Memory request of the QAT step.
    """
    configs = resolve_config(
        data_uri=data_uri,
        config_overrides=config_overrides,
        backup_uri=backup_uri,
        gpu_node_pool=gpu_node_pool,
        gpu_accelerator=gpu_accelerator,
        teacher_gpus=teacher_gpus,
        student_gpus=student_gpus,
        baseline_student=baseline_student,
        student_cpu=student_cpu,
        student_memory=student_memory,
    ).set_display_name("resolve config")
    _on_cpu(configs, cpu="1", memory="1Gi")
    configs.set_caching_options(False)  # re-read config.yaml and fingerprint the dataset on every run
    tasks = {CONFIG_STAGE: configs}  # each stage's task, by stage name, for the stages after it

    data = _stage(
        tasks,
        prepare_dataset,
        "prepare dataset",
        data_uri=data_uri,
        data_fingerprint=configs.outputs["data_fingerprint"],  # new data under data_uri: a cache miss
    )
    _on_cpu(data, cpu="6", memory="16Gi")

    node_selector = configs.outputs["gpu_node_selector"]
    teacher = _stage(tasks, train_teacher, "train teacher")
    _on_gpu_pool(teacher, configs.outputs["teacher_gpu_limit"], node_selector, teacher_cpu, teacher_memory)

    student = _stage(tasks, train_student, "train student")
    _on_gpu_pool(student, configs.outputs["student_gpu_limit"], node_selector, student_cpu, student_memory)

    # Does the teacher pay for itself? The same student without it (alpha = 1), beside the distilled one.
    # Always in the DAG, trained only when baseline_student is true: a dsl.If branch cannot hand
    # its artifact to select-student on our minimum backend (2.5.0): dsl.OneOf of artifacts needs
    # 2.17.0 (earlier drivers resolve it to the last branch's task, run or not). When off, resolve-config
    # gives this step no GPU, no node selector and a small CPU request (train_student_baseline.baseline_resources).
    # It reads no teacher: it waits for the teacher's step (the stage table's `after`, so it runs beside
    # the distilled student) without its launcher downloading the teacher's checkpoint.
    baseline = _stage(
        tasks,
        train_student_baseline,
        "train student baseline (no teacher)",
        enabled=baseline_student,
    )
    _on_gpu_pool(
        baseline,
        configs.outputs["baseline_gpu_limit"],
        configs.outputs["baseline_node_selector"],
        configs.outputs["baseline_cpu"],
        configs.outputs["baseline_memory"],
    )

    selected = _stage(tasks, select_student, "select student (validation mAP)")
    _on_cpu(selected, cpu="1", memory="2Gi")

    qat = _stage(tasks, quantize, "quantization-aware training")
    _on_gpu_pool(qat, configs.outputs["qat_gpu_limit"], node_selector, qat_cpu, qat_memory)  # QAT: one device

    exported = _stage(tasks, export_tflite, "export INT8 TFLite")
    _on_cpu(exported, cpu="3", memory="8Gi")

    thresholds = _stage(tasks, optimize_thresholds, "optimize thresholds")
    _on_cpu(thresholds)

    # The shipped model gets TFLite metadata for MediaPipe Tasks (its calibration needs the thresholds);
    # MediaPipe's ImageClassifier runs on the test images in its own image (mediapipe needs protobuf < 5).
    packaged = _stage(tasks, mediapipe_package, "MediaPipe metadata + ImageClassifier")
    _on_cpu(packaged, cpu="2", memory="4Gi")

    evaluation = _stage(tasks, evaluate, "evaluate")
    _on_cpu(evaluation, cpu="3", memory="8Gi")

    output = _stage(tasks, bundle, "bundle", backup_uri=backup_uri)
    _on_cpu(output, cpu="1", memory="2Gi")
    _run_id_from_label(output)  # deletes <backup_uri>/<run id>/ once the output folder is written

    # publish only when an output URI is given, promote only when publish's quality gate passed
    with _when(tasks, publish, output_uri=output_uri):
        # the run's id names the version; publish is never cached
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        published = _stage(tasks, publish, "publish + quality gate", output_uri=output_uri, run_id=run_id)
        _on_cpu(published, cpu="1", memory="2Gi")
        published.set_caching_options(False)  # LATEST may have moved since a cached run
        with _when(tasks, promote):
            promoted = _stage(tasks, promote, "promote: move LATEST", output_uri=output_uri)
            _on_cpu(promoted, cpu="1", memory="1Gi")
            promoted.set_caching_options(False)
    return output.outputs["output"]


def compile_pipeline(path: str = "pipeline.yaml") -> str:
    compiler.Compiler().compile(mobiletag_pipeline, package_path=path)
    return path


if __name__ == "__main__":
    print(compile_pipeline(), "compiled with image", IMAGE)

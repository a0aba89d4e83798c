"""Stage: distil the student (EfficientNet-Lite) from the frozen teacher.

loss = alpha * hard + (1 - alpha) * T^2 * soft, per-class sigmoid; the teacher sees the same
augmented image as the student, at its own resolution. With pretrained weights a head phase
(a linear probe) comes first: a fresh head trained at full rate through the pretrained backbone
would push large, random gradients into it; with the head fitted first, the full fine-tuning
starts from sensible logits.
"""

from __future__ import annotations

import logging
from pathlib import Path

import tf_keras as keras

from mobiletag.artifacts import StudentModel, TeacherModel
from mobiletag.config import Config
from mobiletag.data.augment import TrainAugment
from mobiletag.errors import ConfigError
from mobiletag.models.lite_weights import imagenet_weights, load_backbone
from mobiletag.models.student import build_student, preprocess, train_head_only
from mobiletag.models.weights import is_pretrained, weights_file
from mobiletag.stages.common import StageResult
from mobiletag.training.attempts import records_failures
from mobiletag.training.fit import Trainer, set_batch_norm_momentum
from mobiletag.training.phases import STUDENT_FINE_TUNE, STUDENT_HEAD, Phase
from mobiletag.training.precision import cast_model, load_float32
from mobiletag.training.stage_runner import Context, Report, Trained, TrainingStage, run_training_stage, task_backup
from mobiletag.training.strategy import training_devices

log = logging.getLogger(__name__)

CHECKPOINT = StudentModel.CHECKPOINT
METRICS = StudentModel.METRICS
TASK = "train-student"


def load_teacher(teacher_dir: str | Path | None, policy: str = "float32") -> keras.Model:
    """The trained teacher (saved in float32), rebuilt under ``policy`` for a mixed-precision step."""
    if teacher_dir is None:
        raise ConfigError(
            "student.alpha is below 1 (distillation) but no teacher was given: pass the train_teacher stage's "
            "folder, or set student.alpha: 1 to train on the labels alone"
        )
    path = Path(teacher_dir) / TeacherModel.CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"{teacher_dir}: no {TeacherModel.CHECKPOINT}; run the train_teacher stage first")
    teacher = load_float32(path)
    return teacher if policy == "float32" else cast_model(teacher, policy)


def build_student_for(config: Config, num_classes: int) -> keras.Model:
    """The student of ``config``, its backbone from ``student.weights``."""
    cfg = config.student
    model = build_student(num_classes, cfg.image_size, cfg.architecture, cfg.dropout)
    set_batch_norm_momentum(model, cfg.batch_norm_momentum)
    source = weights_file(cfg.weights, "student.weights", lambda: imagenet_weights(cfg.architecture))
    if source is None:
        log.info("student: %s from random weights (student.weights: none)", cfg.architecture)
        return model
    load_backbone(model, source)
    if cfg.weights.strip().lower() == "imagenet":
        log.info("student: %s backbone from the official ImageNet weights (%s)", cfg.architecture, source)
    else:
        log.info("student: %s backbone from %s", cfg.architecture, cfg.weights)
    return model


def stage(config: Config, teacher_dir: str | Path | None) -> TrainingStage:
    """The student stage, declared: the student (and the teacher it learns from), its phases, its metrics file."""
    cfg = config.student
    teacher_size = config.teacher.image_size
    distil = cfg.alpha < 1.0
    sizes = [teacher_size, cfg.image_size] if distil else [cfg.image_size]
    head_epochs = cfg.head_epochs if is_pretrained(cfg.weights) else 0
    freeze_bn = cfg.freeze_batch_norm and is_pretrained(cfg.weights)  # a random backbone must learn its statistics

    def build(ctx: Context) -> Trainer:
        teacher = load_teacher(teacher_dir, ctx.devices.policy) if distil else None
        student = build_student_for(config, ctx.facts.num_classes)
        return Trainer(
            student,
            teacher,
            alpha=cfg.alpha,
            temperature=cfg.temperature,
            preprocess=preprocess,
            augment=TrainAugment(sizes, config.data.augment),
            loss=cfg.loss,
            pos_weight=ctx.facts.positive_weights(cfg.loss),
        )

    def phases(ctx: Context, trainer: Trainer) -> list[Phase]:
        student = trainer.model

        def head_only() -> None:
            trainable = train_head_only(student, True)
            log.info(
                "student head phase: %d epoch(s), %d trainable layer(s), learning rate %.3g",
                head_epochs,
                trainable,
                ctx.scaled(cfg.head_learning_rate),
            )

        head = Phase(
            STUDENT_HEAD, "warmup", head_epochs, cfg.head_learning_rate, "constant", prepare=head_only, once=True
        )
        fine_tune = Phase(
            STUDENT_FINE_TUNE,
            "fit",
            cfg.epochs,
            cfg.learning_rate,
            "cosine",
            cfg.lr_warmup_epochs,
            prepare=lambda: train_head_only(student, False, freeze_bn),
        )
        return [head, fine_tune] if head_epochs else [fine_tune]

    def report(ctx: Context, trained: Trained) -> Report:
        head = trained.results.get(STUDENT_HEAD)
        fine_tune = trained.results[STUDENT_FINE_TUNE]
        return Report(
            metrics={
                "epochs_warmup": head.epochs_run if head else 0,
                "epochs": fine_tune.epochs_run,
                "replicas": ctx.devices.strategy.num_replicas_in_sync,
                "params": int(trained.model.count_params()),
            },
            body={
                "architecture": cfg.architecture,
                "image_size": cfg.image_size,
                "classes": ctx.facts.classes,
                "alpha": cfg.alpha,
                "temperature": cfg.temperature,
                "precision_policy": ctx.devices.policy,
                "jit_compile": ctx.devices.jit_compile,
                "learning_rate": trained.rates[STUDENT_FINE_TUNE],
                "warmup_learning_rate": trained.rates.get(STUDENT_HEAD),
                "history": fine_tune.history,
                "warmup_history": head.history if head else {},
            },
        )

    summary = (
        f"distilled from the teacher at {teacher_size} px (alpha {cfg.alpha:.2f}, T {cfg.temperature:.1f})"
        if distil
        else "on the labels alone (alpha 1: no teacher)"
    )
    return TrainingStage(
        "student",
        CHECKPOINT,
        METRICS,
        f"{cfg.architecture} at {cfg.image_size} px {summary}",
        sizes,
        build,
        phases,
        report,
        cfg.architecture,
        preprocess=preprocess,
    )


@records_failures(TASK)
def run(
    config: Config,
    dataset_dir: str | Path,
    teacher_dir: str | Path | None,
    model_dir: str | Path,
    *,
    backup_uri: str | None = None,
    run_id: str = "",
    expected_gpus: int = 0,
    devices: list[str] | None = None,
    task: str = TASK,
) -> StageResult:
    """Distil the student; backups (if ``backup_uri``) go to ``<backup_uri>/<run_id>/<task>``.

    With ``student.alpha`` 1 this is the baseline student: hard labels only, no teacher loaded
    or run (``task`` then names its own backup folder, e.g. ``train-student-baseline``, so the two
    students of a run never share one)."""
    place = training_devices(config.multi_gpu, expected_gpus, devices)
    backup = task_backup(backup_uri, run_id, task)
    return run_training_stage(stage(config, teacher_dir), config, (dataset_dir, model_dir), backup, place)

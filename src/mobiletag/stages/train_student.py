"""Stage: distil the student (EfficientNet-Lite) from the frozen teacher.

loss = alpha * hard + (1 - alpha) * T^2 * soft, per-class sigmoid; the teacher sees the same
augmented image as the student, at its own resolution.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import tf_keras as keras

from mobiletag.config import Config
from mobiletag.data.augment import TrainAugment
from mobiletag.data.pipeline import train_and_val
from mobiletag.errors import ConfigError
from mobiletag.models.lite_weights import imagenet_weights, load_backbone
from mobiletag.models.student import build_student, preprocess, train_head_only
from mobiletag.models.teacher import resolve_weights
from mobiletag.progress import STUDENT_WARM_UP
from mobiletag.stages.common import (
    STUDENT_CHECKPOINT,
    STUDENT_METRICS,
    TEACHER_CHECKPOINT,
    StageResult,
    dataset_facts,
    reproducibility,
    steps_per_epoch,
    write_json,
)
from mobiletag.training.attempts import records_failures
from mobiletag.training.backup import Backup, backup_prefix
from mobiletag.training.fit import (
    FitResult,
    Trainer,
    best_model,
    cosine_schedule,
    fit,
    fit_phase_once,
    scaled_learning_rate,
    set_batch_norm_momentum,
    warmup_steps,
)
from mobiletag.training.precision import cast_model, load_float32
from mobiletag.training.strategy import Devices, training_devices

log = logging.getLogger(__name__)

CHECKPOINT = STUDENT_CHECKPOINT
METRICS = STUDENT_METRICS
TASK = "train-student"


def load_teacher(teacher_dir: str | Path | None, policy: str = "float32") -> keras.Model:
    """The trained teacher (saved in float32), rebuilt under ``policy`` for a mixed-precision step."""
    if teacher_dir is None:
        raise ConfigError(
            "student.alpha is below 1 (distillation) but no teacher was given: pass the train_teacher stage's "
            "folder, or set student.alpha: 1 to train on the labels alone"
        )
    path = Path(teacher_dir) / TEACHER_CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"{teacher_dir}: no {TEACHER_CHECKPOINT}; run the train_teacher stage first")
    teacher = load_float32(path)
    return teacher if policy == "float32" else cast_model(teacher, policy)


def build_student_for(config: Config, num_classes: int) -> keras.Model:
    cfg = config.student
    model = build_student(num_classes, cfg.image_size, cfg.architecture, cfg.dropout)
    set_batch_norm_momentum(model, cfg.batch_norm_momentum)
    source = resolve_weights(cfg.weights, "student.weights")
    if source == "imagenet":
        path = imagenet_weights(cfg.architecture)
        load_backbone(model, path)
        log.info("student: %s backbone from the official ImageNet weights (%s)", cfg.architecture, path)
    elif source is not None:
        load_backbone(model, source)
        log.info("student: %s backbone from %s", cfg.architecture, cfg.weights)
    else:
        log.info("student: %s from random weights (student.weights: none)", cfg.architecture)
    return model


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
    started = time.perf_counter()
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    backup = Backup(backup_prefix(backup_uri, run_id, task))
    with reproducibility(config), training_devices(config.multi_gpu, expected_gpus, devices) as dev:
        return _train(config, dataset_dir, teacher_dir, out, dev, backup, started)


def _train(
    config: Config,
    dataset_dir: str | Path,
    teacher_dir: str | Path | None,
    out: Path,
    dev: Devices,
    backup: Backup,
    started: float,
) -> StageResult:
    cfg = config.student
    facts = dataset_facts(dataset_dir)
    steps = steps_per_epoch(facts.num_train, cfg.batch_size, "student.batch_size")
    resumed = backup.restore()
    teacher_size = config.teacher.image_size
    lr = scaled_learning_rate(cfg.learning_rate, cfg.batch_size, cfg.reference_batch_size)
    lr_warmup = scaled_learning_rate(cfg.warmup_learning_rate, cfg.batch_size, cfg.reference_batch_size)
    distil = cfg.alpha < 1.0
    log.info(
        "student: %s at %d px %s, %d replica(s), %s, XLA %s, learning rate %.3g (batch %d, reference %d)%s",
        cfg.architecture,
        cfg.image_size,
        f"distilled from the teacher at {teacher_size} px (alpha {cfg.alpha:.2f}, T {cfg.temperature:.1f})"
        if distil
        else "on the labels alone (alpha 1: no teacher)",
        dev.strategy.num_replicas_in_sync,
        dev.policy,
        "on" if dev.jit_compile else "off",
        lr,
        cfg.batch_size,
        cfg.reference_batch_size,
        ", resuming from a backup" if resumed else "",
    )
    sizes = [teacher_size, cfg.image_size] if distil else [cfg.image_size]
    train_ds, val_ds = train_and_val(
        dataset_dir,
        config,
        train_sizes=sizes,
        val_size=cfg.image_size,
        batch_size=cfg.batch_size,
        num_classes=facts.num_classes,
    )
    # the best checkpoint lives in the backup (a retried pod starts with an empty output folder)
    work = backup.folder("best") or out
    checkpoint = work / CHECKPOINT
    with dev.strategy.scope():
        teacher = load_teacher(teacher_dir, dev.policy) if distil else None
        student = build_student_for(config, facts.num_classes)
        trainer = Trainer(
            student,
            teacher,
            alpha=cfg.alpha,
            temperature=cfg.temperature,
            preprocess=preprocess,
            augment=TrainAugment(sizes, config.data.augment),
        )

    fit_args: dict[str, Any] = dict(
        steps_per_epoch=steps,
        batch_size=cfg.batch_size,
        checkpoint=checkpoint,
        validation_steps=math.ceil(facts.num_val / cfg.batch_size),
        patience=cfg.early_stopping_patience,
        backup=backup,
    )
    # Head warm-up (a linear probe): a fresh head trained at full rate through the pretrained
    # backbone would push large, random gradients into it; with the head fitted first, the full
    # fine-tuning starts from sensible logits.
    warmup_epochs = cfg.warmup_epochs if resolve_weights(cfg.weights, "student.weights") is not None else 0
    best_so_far, warmed = -math.inf, None
    if warmup_epochs:

        def warm_up() -> FitResult:
            trainable = train_head_only(student, True)
            log.info(
                "student head warm-up: %d epoch(s), %d trainable layer(s), learning rate %.3g",
                warmup_epochs,
                trainable,
                lr_warmup,
            )
            dev.compile(trainer, lr_warmup)
            return fit(
                trainer,
                train_ds,
                val_ds,
                name=STUDENT_WARM_UP,
                epochs=warmup_epochs,
                backup_dir=backup.folder("warmup"),
                mark_done=False,  # fit_phase_once stores the result with the weights
                **fit_args,
            )

        warmed = fit_phase_once(student, backup, "warmup_done", warm_up, STUDENT_WARM_UP)
        best_so_far = warmed.best_val_map  # the fine-tuning saves a checkpoint only when it beats the warm-up
    train_head_only(student, False)
    total = cfg.epochs * steps
    dev.compile(trainer, cosine_schedule(lr, total, warmup_steps(cfg.lr_warmup_epochs, steps, total)))
    result = fit(
        trainer,
        train_ds,
        val_ds,
        name="student",
        epochs=cfg.epochs,
        backup_dir=backup.folder("fit"),
        best_so_far=best_so_far,
        **fit_args,
    )
    final = out / CHECKPOINT
    # the backup stays: it is cleared by the bundle stage, once the outputs that replace it are stored
    best, val_map = best_model(student, checkpoint, val_ds, preprocess, save_to=final)  # float32
    metrics = {
        "val_map": round(val_map, 4),
        "train_images_per_second": round(result.train_images_per_second, 2),
        "epochs_warmup": warmed.epochs_run if warmed else 0,
        "epochs": result.epochs_run,
        "replicas": dev.strategy.num_replicas_in_sync,
        "params": int(best.count_params()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(
        out / METRICS,
        {
            "metrics": metrics,
            "architecture": cfg.architecture,
            "image_size": cfg.image_size,
            "classes": facts.classes,
            "alpha": cfg.alpha,
            "temperature": cfg.temperature,
            "precision_policy": dev.policy,
            "jit_compile": dev.jit_compile,
            "learning_rate": lr,
            "warmup_learning_rate": lr_warmup if warmup_epochs else None,
            "history": result.history,
            "warmup_history": warmed.history if warmed else {},
        },
    )
    log.info("student: validation mAP %.4f (%s)", val_map, final)
    details = {
        "framework": f"tf_keras {keras.__version__}",
        "architecture": cfg.architecture,
        "image_size": cfg.image_size,
        "size_bytes": final.stat().st_size,
        "val_map": metrics["val_map"],
    }
    return StageResult(
        metrics=metrics, files={"checkpoint": str(final), "metrics": str(out / METRICS)}, details=details
    )

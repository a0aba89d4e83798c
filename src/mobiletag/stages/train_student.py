"""Stage: distil the student (EfficientNet-Lite) from the frozen teacher.

loss = alpha * hard + (1 - alpha) * T^2 * soft, per-class sigmoid; the teacher sees the same
augmented image as the student, at its own resolution.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import tensorflow as tf
import tf_keras as keras

from mobiletag.config import Config
from mobiletag.data.pipeline import train_and_val
from mobiletag.errors import ConfigError
from mobiletag.models.lite_weights import imagenet_weights, load_backbone
from mobiletag.models.student import build_student, preprocess
from mobiletag.models.teacher import resolve_weights
from mobiletag.stages.common import (
    STUDENT_CHECKPOINT,
    TEACHER_CHECKPOINT,
    StageResult,
    dataset_facts,
    seed_everything,
    steps_per_epoch,
    write_json,
)
from mobiletag.training.fit import Trainer, best_model, cosine_schedule, fit, set_batch_norm_momentum
from mobiletag.training.strategy import enable_memory_growth, get_strategy, set_precision

log = logging.getLogger(__name__)

CHECKPOINT = STUDENT_CHECKPOINT
METRICS = "student_metrics.json"


def load_teacher(teacher_dir: str | Path) -> keras.Model:
    path = Path(teacher_dir) / TEACHER_CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"{teacher_dir}: no {TEACHER_CHECKPOINT}; run the train_teacher stage first")
    return keras.models.load_model(path, compile=False)


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


def run(
    config: Config,
    dataset_dir: str | Path,
    teacher_dir: str | Path,
    model_dir: str | Path,
    backup_dir: str | None = None,
    devices: list[str] | None = None,
) -> StageResult:
    started = time.perf_counter()
    cfg = config.student
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = dataset_facts(dataset_dir)
    steps = steps_per_epoch(facts.num_train, cfg.batch_size, "student.batch_size")
    seed_everything(config)
    enable_memory_growth()
    strategy = get_strategy(config.multi_gpu, devices)
    policy = set_precision(config.multi_gpu)
    teacher_size = config.teacher.image_size
    log.info(
        "student: %s at %d px distilled from the teacher at %d px (alpha %.2f, T %.1f), %d replica(s)",
        cfg.architecture,
        cfg.image_size,
        teacher_size,
        cfg.alpha,
        cfg.temperature,
        strategy.num_replicas_in_sync,
    )

    train_ds, val_ds = train_and_val(
        dataset_dir,
        config,
        train_sizes=[teacher_size, cfg.image_size],
        val_size=cfg.image_size,
        batch_size=cfg.batch_size,
        num_classes=facts.num_classes,
    )
    checkpoint = out / CHECKPOINT
    with strategy.scope():
        teacher = load_teacher(teacher_dir)
        student = build_student_for(config, facts.num_classes)
        trainer = Trainer(student, teacher, alpha=cfg.alpha, temperature=cfg.temperature, preprocess=preprocess)
        trainer.compile(optimizer=keras.optimizers.Adam(cosine_schedule(cfg.learning_rate, cfg.epochs * steps)))
    result = fit(
        trainer,
        train_ds,
        val_ds,
        name="student",
        epochs=cfg.epochs,
        steps_per_epoch=steps,
        batch_size=cfg.batch_size,
        checkpoint=checkpoint,
        backup_dir=Path(backup_dir) if backup_dir else None,
        patience=cfg.early_stopping_patience,
        preprocess=preprocess,
    )
    best, val_map = best_model(student, checkpoint, val_ds, preprocess)
    if backup_dir and tf.io.gfile.exists(backup_dir):
        tf.io.gfile.rmtree(backup_dir)
    metrics = {
        "val_map": round(val_map, 4),
        "train_images_per_second": round(result.train_images_per_second, 2),
        "epochs": result.epochs_run,
        "replicas": strategy.num_replicas_in_sync,
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
            "precision_policy": policy,
            "history": result.history,
        },
    )
    log.info("student: validation mAP %.4f (%s)", val_map, checkpoint)
    details = {
        "framework": f"tf_keras {keras.__version__}",
        "architecture": cfg.architecture,
        "image_size": cfg.image_size,
        "size_bytes": checkpoint.stat().st_size,
        "val_map": metrics["val_map"],
    }
    return StageResult(
        metrics=metrics, files={"checkpoint": str(checkpoint), "metrics": str(out / METRICS)}, details=details
    )

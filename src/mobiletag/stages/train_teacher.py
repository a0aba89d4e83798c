"""Stage: train the teacher (EfficientNet-B3). Phase A warms up the head on a frozen
backbone; phase B fine-tunes the top of the backbone at a lower, cosine-decayed rate."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import tensorflow as tf
import tf_keras as keras

from mobiletag.config import Config
from mobiletag.data.pipeline import train_and_val
from mobiletag.models.teacher import build_teacher, resolve_weights, set_phase
from mobiletag.stages.common import (
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

CHECKPOINT = TEACHER_CHECKPOINT
METRICS = "teacher_metrics.json"


def run(
    config: Config,
    dataset_dir: str | Path,
    model_dir: str | Path,
    backup_dir: str | None = None,
    devices: list[str] | None = None,
) -> StageResult:
    started = time.perf_counter()
    cfg = config.teacher
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = dataset_facts(dataset_dir)
    steps = steps_per_epoch(facts.num_train, cfg.batch_size, "teacher.batch_size")
    seed_everything(config)
    enable_memory_growth()
    strategy = get_strategy(config.multi_gpu, devices)
    policy = set_precision(config.multi_gpu)
    log.info(
        "teacher: %d classes, %d train images, %d steps/epoch, %d replica(s), %s",
        facts.num_classes,
        facts.num_train,
        steps,
        strategy.num_replicas_in_sync,
        policy,
    )

    train_ds, val_ds = train_and_val(
        dataset_dir,
        config,
        train_sizes=[cfg.image_size],
        val_size=cfg.image_size,
        batch_size=cfg.batch_size,
        num_classes=facts.num_classes,
    )
    checkpoint = out / CHECKPOINT

    with strategy.scope():
        model = build_teacher(facts.num_classes, cfg.image_size, cfg.weights, cfg.dropout)
        set_batch_norm_momentum(model, cfg.batch_norm_momentum)
        trainer = Trainer(model)

    phase_a_done = f"{backup_dir}/phase_a_done/weights" if backup_dir else None
    fit_args: dict[str, Any] = dict(
        steps_per_epoch=steps, batch_size=cfg.batch_size, checkpoint=checkpoint, patience=cfg.early_stopping_patience
    )

    # Phase A: head warm-up on a frozen backbone.
    if phase_a_done and tf.io.gfile.exists(phase_a_done + ".index"):
        log.info("teacher: phase A finished before a restart; loading its weights")
        model.load_weights(phase_a_done)
        result_a = None
    else:
        set_phase(model, "warmup", cfg.fine_tune_fraction)
        with strategy.scope():
            trainer.compile(optimizer=keras.optimizers.Adam(cfg.warmup_learning_rate))
        result_a = fit(
            trainer,
            train_ds,
            val_ds,
            name="teacher phase A",
            epochs=cfg.warmup_epochs,
            backup_dir=Path(backup_dir) / "phase_a" if backup_dir else None,
            **fit_args,
        )
        if phase_a_done:
            model.save_weights(phase_a_done)

    # Phase B: fine-tune the top of the backbone; BatchNormalization stays in inference mode.
    pretrained = resolve_weights(cfg.weights, "teacher.weights") is not None
    trainable = set_phase(model, "finetune", cfg.fine_tune_fraction, pretrained=pretrained)
    log.info(
        "teacher phase B: %d trainable layers (%s)",
        trainable,
        f"top {cfg.fine_tune_fraction:.0%} of the backbone + head"
        if pretrained
        else "no pretrained weights: the whole backbone",
    )
    with strategy.scope():
        schedule = cosine_schedule(cfg.fine_tune_learning_rate, cfg.fine_tune_epochs * steps)
        trainer.compile(optimizer=keras.optimizers.Adam(schedule))
    best_a = result_a.best_val_map if result_a else -float("inf")
    result_b = fit(
        trainer,
        train_ds,
        val_ds,
        name="teacher phase B",
        epochs=cfg.fine_tune_epochs,
        backup_dir=Path(backup_dir) / "phase_b" if backup_dir else None,
        best_so_far=best_a,
        **fit_args,
    )

    _, val_map = best_model(model, checkpoint, val_ds)
    if backup_dir and tf.io.gfile.exists(backup_dir):
        tf.io.gfile.rmtree(backup_dir)
    metrics = {
        "val_map": round(val_map, 4),
        "train_images_per_second": round(
            result_b.train_images_per_second or (result_a.train_images_per_second if result_a else 0.0), 2
        ),
        "epochs_phase_a": result_a.epochs_run if result_a else cfg.warmup_epochs,
        "epochs_phase_b": result_b.epochs_run,
        "replicas": strategy.num_replicas_in_sync,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(
        out / METRICS,
        {
            "metrics": metrics,
            "architecture": cfg.architecture,
            "image_size": cfg.image_size,
            "classes": facts.classes,
            "precision_policy": policy,
            "history": {"phase_a": result_a.history if result_a else {}, "phase_b": result_b.history},
        },
    )
    log.info("teacher: validation mAP %.4f (%s)", val_map, checkpoint)
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

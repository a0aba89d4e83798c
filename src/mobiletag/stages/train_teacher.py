"""Stage: train the teacher (EfficientNet-B3). Phase A warms up the head on a frozen
backbone; phase B fine-tunes the top of the backbone at a lower, cosine-decayed rate."""

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
from mobiletag.models.teacher import build_teacher, resolve_weights, set_phase
from mobiletag.progress import TEACHER_WARM_UP
from mobiletag.stages.common import (
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
from mobiletag.training.strategy import Devices, training_devices

log = logging.getLogger(__name__)

CHECKPOINT = TEACHER_CHECKPOINT
METRICS = "teacher_metrics.json"
TASK = "train-teacher"


@records_failures(TASK)
def run(
    config: Config,
    dataset_dir: str | Path,
    model_dir: str | Path,
    *,
    backup_uri: str | None = None,
    run_id: str = "",
    expected_gpus: int = 0,
    devices: list[str] | None = None,
) -> StageResult:
    """Train the teacher; backups (if ``backup_uri``) go to ``<backup_uri>/<run_id>/train-teacher``."""
    started = time.perf_counter()
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    backup = Backup(backup_prefix(backup_uri, run_id, TASK))
    with reproducibility(config), training_devices(config.multi_gpu, expected_gpus, devices) as dev:
        return _train(config, dataset_dir, out, dev, backup, started)


def _train(
    config: Config, dataset_dir: str | Path, out: Path, dev: Devices, backup: Backup, started: float
) -> StageResult:
    facts = dataset_facts(dataset_dir)
    steps = steps_per_epoch(facts.num_train, config.teacher.batch_size, "teacher.batch_size")
    cfg = config.teacher
    resumed = backup.restore()
    lr_a = scaled_learning_rate(cfg.warmup_learning_rate, cfg.batch_size, cfg.reference_batch_size)
    lr_b = scaled_learning_rate(cfg.fine_tune_learning_rate, cfg.batch_size, cfg.reference_batch_size)
    log.info(
        "teacher: %d classes, %d train images, %d steps/epoch, %d replica(s), %s, XLA %s, learning rates %.3g / %.3g "
        "(batch %d, reference %d)%s",
        facts.num_classes,
        facts.num_train,
        steps,
        dev.strategy.num_replicas_in_sync,
        dev.policy,
        "on" if dev.jit_compile else "off",
        lr_a,
        lr_b,
        cfg.batch_size,
        cfg.reference_batch_size,
        ", resuming from a backup" if resumed else "",
    )
    train_ds, val_ds = train_and_val(
        dataset_dir,
        config,
        train_sizes=[cfg.image_size],
        val_size=cfg.image_size,
        batch_size=cfg.batch_size,
        num_classes=facts.num_classes,
    )
    # the best checkpoint lives in the backup (a retried pod starts with an empty output folder)
    work = backup.folder("best") or out
    checkpoint = work / CHECKPOINT

    with dev.strategy.scope():
        model = build_teacher(facts.num_classes, cfg.image_size, cfg.weights, cfg.dropout)
        set_batch_norm_momentum(model, cfg.batch_norm_momentum)
        trainer = Trainer(model, augment=TrainAugment([cfg.image_size], config.data.augment))

    fit_args: dict[str, Any] = dict(
        steps_per_epoch=steps,
        batch_size=cfg.batch_size,
        checkpoint=checkpoint,
        patience=cfg.early_stopping_patience,
        validation_steps=math.ceil(facts.num_val / cfg.batch_size),
        backup=backup,
    )

    def phase_a() -> FitResult:  # head warm-up on a frozen backbone
        set_phase(model, "warmup", cfg.fine_tune_fraction)
        total_a = cfg.warmup_epochs * steps
        dev.compile(
            trainer, cosine_schedule(lr_a, total_a, warmup_steps(cfg.lr_warmup_epochs, steps, total_a), decay=False)
        )
        return fit(
            trainer,
            train_ds,
            val_ds,
            name=TEACHER_WARM_UP,
            epochs=cfg.warmup_epochs,
            backup_dir=backup.folder("phase_a"),
            mark_done=False,  # fit_phase_once stores the result with the weights
            **fit_args,
        )

    result_a = fit_phase_once(model, backup, "phase_a_done", phase_a, TEACHER_WARM_UP)

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
    total_b = cfg.fine_tune_epochs * steps
    dev.compile(trainer, cosine_schedule(lr_b, total_b, warmup_steps(cfg.lr_warmup_epochs, steps, total_b)))
    result_b = fit(
        trainer,
        train_ds,
        val_ds,
        name="teacher phase B",
        epochs=cfg.fine_tune_epochs,
        backup_dir=backup.folder("phase_b"),
        best_so_far=result_a.best_val_map,  # phase B saves a checkpoint only when it beats phase A
        **fit_args,
    )

    final = out / CHECKPOINT
    # the backup stays: it is cleared by the bundle stage, once the outputs that replace it are stored
    _, val_map = best_model(model, checkpoint, val_ds, save_to=final)  # float32, whatever the policy
    metrics = {
        "val_map": round(val_map, 4),
        "train_images_per_second": round(result_b.train_images_per_second or result_a.train_images_per_second, 2),
        "epochs_phase_a": result_a.epochs_run,
        "epochs_phase_b": result_b.epochs_run,
        "replicas": dev.strategy.num_replicas_in_sync,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(
        out / METRICS,
        {
            "metrics": metrics,
            "architecture": cfg.architecture,
            "image_size": cfg.image_size,
            "classes": facts.classes,
            "precision_policy": dev.policy,
            "jit_compile": dev.jit_compile,
            "learning_rates": {"phase_a": lr_a, "phase_b": lr_b},
            "history": {"phase_a": result_a.history, "phase_b": result_b.history},
        },
    )
    log.info("teacher: validation mAP %.4f (%s)", val_map, final)
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

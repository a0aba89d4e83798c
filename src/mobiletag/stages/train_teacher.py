"""Stage: train the teacher (EfficientNet-B3). The head phase trains the head on a frozen
backbone; the fine-tuning phase trains the top of the backbone at a lower, cosine-decayed rate."""

from __future__ import annotations

import logging
from pathlib import Path

from mobiletag.artifacts import TeacherModel
from mobiletag.config import Config
from mobiletag.data.augment import TrainAugment
from mobiletag.models.teacher import build_teacher, set_phase
from mobiletag.models.weights import is_pretrained
from mobiletag.stages.common import StageResult
from mobiletag.training.attempts import records_failures
from mobiletag.training.fit import Trainer, set_batch_norm_momentum
from mobiletag.training.phases import TEACHER_FINE_TUNE, TEACHER_HEAD, Phase
from mobiletag.training.stage_runner import Context, Report, Trained, TrainingStage, run_training_stage, task_backup
from mobiletag.training.strategy import training_devices

log = logging.getLogger(__name__)

CHECKPOINT = TeacherModel.CHECKPOINT
METRICS = TeacherModel.METRICS
TASK = "train-teacher"


def stage(config: Config) -> TrainingStage:
    """The teacher stage, declared: the model, its two phases, its metrics file."""
    cfg = config.teacher

    def build(ctx: Context) -> Trainer:
        model = build_teacher(ctx.facts.num_classes, cfg.image_size, cfg.weights, cfg.dropout)
        set_batch_norm_momentum(model, cfg.batch_norm_momentum)
        return Trainer(
            model,
            augment=TrainAugment([cfg.image_size], config.data.augment),
            loss=cfg.loss,
            pos_weight=ctx.facts.positive_weights(cfg.loss),
        )

    def phases(ctx: Context, trainer: Trainer) -> list[Phase]:
        model = trainer.model
        pretrained = is_pretrained(cfg.weights)

        def fine_tune_layers() -> None:  # BatchNormalization stays in inference mode
            trainable = set_phase(model, "fine_tune", cfg.fine_tune_fraction, pretrained=pretrained)
            log.info(
                "teacher phase B: %d trainable layers (%s)",
                trainable,
                f"top {cfg.fine_tune_fraction:.0%} of the backbone + head"
                if pretrained
                else "no pretrained weights: the whole backbone",
            )

        return [
            Phase(
                TEACHER_HEAD,
                "phase_a",
                cfg.head_epochs,
                cfg.head_learning_rate,
                "hold",
                cfg.lr_warmup_epochs,
                prepare=lambda: set_phase(model, "head", cfg.fine_tune_fraction),
                once=True,
            ),
            Phase(
                TEACHER_FINE_TUNE,
                "phase_b",
                cfg.fine_tune_epochs,
                cfg.fine_tune_learning_rate,
                "cosine",
                cfg.lr_warmup_epochs,
                prepare=fine_tune_layers,
            ),
        ]

    def report(ctx: Context, trained: Trained) -> Report:
        head, fine_tune = trained.results[TEACHER_HEAD], trained.results[TEACHER_FINE_TUNE]
        return Report(
            metrics={
                "epochs_phase_a": head.epochs_run,
                "epochs_phase_b": fine_tune.epochs_run,
                "replicas": ctx.devices.strategy.num_replicas_in_sync,
            },
            body={
                "architecture": cfg.architecture,
                "image_size": cfg.image_size,
                "classes": ctx.facts.classes,
                "precision_policy": ctx.devices.policy,
                "jit_compile": ctx.devices.jit_compile,
                "learning_rates": {"phase_a": trained.rates[TEACHER_HEAD], "phase_b": trained.rates[TEACHER_FINE_TUNE]},
                "history": {"phase_a": head.history, "phase_b": fine_tune.history},
            },
        )

    return TrainingStage(
        "teacher",
        CHECKPOINT,
        METRICS,
        f"{cfg.architecture} at {cfg.image_size} px",
        [cfg.image_size],
        build,
        phases,
        report,
        cfg.architecture,
    )


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
    place = training_devices(config.multi_gpu, expected_gpus, devices)
    return run_training_stage(
        stage(config), config, (dataset_dir, model_dir), task_backup(backup_uri, run_id, TASK), place
    )

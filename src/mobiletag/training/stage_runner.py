"""The one driver of the training stages (teacher, students, QAT).

A stage declares a :class:`TrainingStage`: its model (``build``), its phases
(:class:`~mobiletag.training.phases.Phase`) and what its metrics file holds (``report``).
:func:`run_training_stage` does the rest, the same way for every stage:

    seeds and op determinism -> devices (strategy, precision, XLA; or one float32 device)
    -> dataset facts -> steps per epoch -> restore the backup -> the input
    -> build under the strategy's scope -> each phase: layers to train, learning rate scaled
       with the global batch, compile, fit (a phase that later ones build on: once per run)
    -> the best epoch's model, float32, in the output folder -> metrics file -> StageResult

The backup stays when the stage returns: the bundle stage clears it, once the outputs that
replace it are stored (a pod lost before KFP stores this stage's outputs is retried, and the
retry must find it). The best checkpoint lives in the backup too (a retried pod starts with an
empty output folder).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tf_keras as keras

from mobiletag.artifacts import write_json
from mobiletag.config import Config
from mobiletag.data.tf_input import train_and_val
from mobiletag.progress import report_result
from mobiletag.stages.common import (
    DatasetFacts,
    StageResult,
    dataset_facts,
    reproducibility,
    steps_per_epoch,
)
from mobiletag.training.backup import Backup, backup_prefix
from mobiletag.training.fit import (
    FitResult,
    Preprocess,
    Trainer,
    best_model,
    cosine_schedule,
    fit,
    fit_phase_once,
    identity,
    scaled_learning_rate,
    warmup_steps,
)
from mobiletag.training.optimizer import OptimizerRecipe, recipe_for
from mobiletag.training.phases import HEAD_PHASES, Phase
from mobiletag.training.strategy import Devices

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What a stage's hooks see: the config, the data, the devices, the backup, the input."""

    config: Config
    facts: DatasetFacts
    steps: int  # training steps per epoch
    devices: Devices
    backup: Backup
    resumed: bool  # a backup was restored
    batch_size: int
    reference_batch_size: int
    train_ds: Any = None
    val_ds: Any = None
    notes: dict[str, Any] = field(default_factory=dict)  # figures a stage's build hands to its report

    def scaled(self, learning_rate: float) -> float:
        """``learning_rate`` scaled with the global batch (the linear scaling rule)."""
        return scaled_learning_rate(learning_rate, self.batch_size, self.reference_batch_size)


@dataclass
class Trained:
    """The phases' results and rates (by phase name), and the best model with its validation mAP."""

    results: dict[str, FitResult]
    rates: dict[str, float]
    model: keras.Model
    val_map: float
    checkpoint: Path

    @property
    def train_images_per_second(self) -> float:
        """The last phase that trained's figure."""
        return next(
            (r.train_images_per_second for r in reversed(self.results.values()) if r.train_images_per_second), 0.0
        )


@dataclass
class Report:
    """What a stage adds: its metrics (beside val_map, speed and seconds) and its metrics file's content."""

    metrics: dict[str, Any]
    body: dict[str, Any]
    note: str = ""  # the result line's parenthesis; default: the checkpoint's path


@dataclass
class TrainingStage:
    """A training stage, declared.

    Attributes:
        name: the config section that holds the stage's ``batch_size``, ``reference_batch_size``
            and ``early_stopping_patience`` (none: 0, off), and the prefix of its log lines
            (``<name>: validation mAP X (...)``).
        checkpoint: the model's file name in the output folder (float32, the best epoch).
        metrics_file: the metrics file's name beside it.
        summary: what trains, for the stage's first log line.
        train_sizes: the training views' sizes (the teacher's first); the last is the validation size.
        build: the Trainer, called in the strategy's scope.
        phases: the phases, in order, once the Trainer is built.
        report: the stage's metrics and metrics file.
        preprocess: the model's input preprocessing (validation).
        load: reads the best checkpoint back (default: as float32).
        framework, architecture: the model artifact's metadata.
    """

    name: str
    checkpoint: str
    metrics_file: str
    summary: str
    train_sizes: list[int]
    build: Callable[[Context], Trainer]
    phases: Callable[[Context, Trainer], list[Phase]]
    report: Callable[[Context, Trained], Report]
    architecture: str
    preprocess: Preprocess = identity
    load: Callable[[Path], keras.Model] | None = None
    framework: str = f"tf_keras {keras.__version__}"


def run_training_stage(
    stage: TrainingStage,
    config: Config,
    paths: tuple[str | Path, str | Path],
    backup: Backup,
    place: AbstractContextManager[Devices],
) -> StageResult:
    """Train ``stage`` on the TFRecords in ``paths[0]`` into the folder ``paths[1]``, with ``backup``
    (:func:`task_backup`) on the devices that ``place`` gives (:func:`~mobiletag.training.strategy.training_devices`,
    or :func:`~mobiletag.training.strategy.one_device` for QAT), in the seeds' and op determinism's scope."""
    started = time.perf_counter()
    dataset_dir, out = paths[0], Path(paths[1])
    out.mkdir(parents=True, exist_ok=True)
    with reproducibility(config), place as dev:
        return _train(stage, config, dataset_dir, out, dev, backup, started)


def loss_record(trainer: Trainer, classes: list[str]) -> dict[str, Any]:
    """A metrics file's "loss": the hard-label loss the stage trained on and, for ``weighted_bce``,
    each class's positive weight (from the training split's counts)."""
    weights = None if trainer.pos_weight is None else dict(zip(classes, trainer.pos_weight, strict=True))
    return {"hard": trainer.hard_loss, "positive_weights": weights}


def task_backup(backup_uri: str | None, run_id: str, task: str) -> Backup:
    """The backup of ``task`` in run ``run_id``: ``<backup_uri>/<run_id>/<task>`` (off when ``backup_uri`` is empty)."""
    return Backup(backup_prefix(backup_uri, run_id, task))


def _train(
    stage: TrainingStage,
    config: Config,
    dataset_dir: str | Path,
    out: Path,
    dev: Devices,
    backup: Backup,
    started: float,
) -> StageResult:
    section = getattr(config, stage.name)
    facts = dataset_facts(dataset_dir)
    ctx = Context(
        config=config,
        facts=facts,
        steps=steps_per_epoch(facts.num_train, section.batch_size, f"{stage.name}.batch_size"),
        devices=dev,
        backup=backup,
        resumed=backup.restore(),
        batch_size=section.batch_size,
        reference_batch_size=section.reference_batch_size,
    )
    ctx.train_ds, ctx.val_ds = train_and_val(
        dataset_dir,
        config,
        train_sizes=stage.train_sizes,
        val_size=stage.train_sizes[-1],
        batch_size=ctx.batch_size,
        num_classes=facts.num_classes,
    )
    checkpoint = (backup.folder("best") or out) / stage.checkpoint
    with dev.strategy.scope():
        trainer = stage.build(ctx)
    phases = stage.phases(ctx, trainer)
    log.info(
        "%s: %s, %d classes, %d train images, %d steps/epoch, %d replica(s), %s, XLA %s, learning rate(s) %s "
        "(batch %d, reference %d)%s",
        stage.name,
        stage.summary,
        facts.num_classes,
        facts.num_train,
        ctx.steps,
        dev.strategy.num_replicas_in_sync,
        dev.policy,
        "on" if dev.jit_compile else "off",
        " / ".join(f"{ctx.scaled(phase.learning_rate):.3g}" for phase in phases),
        ctx.batch_size,
        ctx.reference_batch_size,
        ", resuming from a backup" if ctx.resumed else "",
    )

    results: dict[str, FitResult] = {}
    rates: dict[str, float] = {}
    best_so_far = -math.inf  # a phase saves a checkpoint only when it beats the phases before it
    for phase in phases:
        rates[phase.name] = ctx.scaled(phase.learning_rate)
        result = _fit_phase(
            ctx,
            trainer,
            phase,
            rates[phase.name],
            checkpoint,
            best_so_far,
            getattr(section, "early_stopping_patience", 0),
            recipe_for(section, ctx.steps, average=phase.name not in HEAD_PHASES),
        )
        results[phase.name] = result
        best_so_far = result.best_val_map

    final = out / stage.checkpoint
    best, val_map = best_model(
        trainer.model,
        checkpoint,
        ctx.val_ds,
        stage.preprocess,
        load=stage.load,
        save_to=final,
        val_map=epoch_figure_is_final(dev, results[phases[-1].name]) if phases else None,
    )  # float32, whatever the policy
    trained = Trained(results, rates, best, val_map, final)
    report = stage.report(ctx, trained)
    metrics = {
        "val_map": round(val_map, 4),
        "train_images_per_second": round(trained.train_images_per_second, 2),
        **report.metrics,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(
        out / stage.metrics_file, {"metrics": metrics, "loss": loss_record(trainer, facts.classes), **report.body}
    )
    report_result(log, "%s: validation mAP %.4f (%s)", stage.name, val_map, report.note or final)
    details = {
        "framework": stage.framework,
        "architecture": stage.architecture,
        "image_size": stage.train_sizes[-1],
        "size_bytes": final.stat().st_size,
        "val_map": metrics["val_map"],
    }
    return StageResult(
        metrics=metrics, files={"checkpoint": str(final), "metrics": str(out / stage.metrics_file)}, details=details
    )


def epoch_figure_is_final(dev: Devices, last: FitResult) -> float | None:
    """The best epoch's validation mAP when it is the figure a validation of the best checkpoint would
    give, else None (then the checkpoint is validated again).

    It is when the epochs were validated as the checkpoint is: in float32 (a mixed policy validates
    in 16 bits, the float32 model read back does not) on one replica (several score through
    ``trainer.predict``; one scores with ``predict_scores`` on the trained model, the function
    ``best_model`` validates with), and an epoch saved the checkpoint (the figure is above 0: an
    epoch whose mAP was NaN, no positive in the split, logs 0).
    """
    if dev.policy != "float32" or dev.strategy.num_replicas_in_sync != 1:
        return None
    return last.best_val_map if math.isfinite(last.best_val_map) and last.best_val_map > 0 else None


def _fit_phase(
    ctx: Context,
    trainer: Trainer,
    phase: Phase,
    rate: float,
    checkpoint: Path,
    best_so_far: float,
    patience: int,
    recipe: OptimizerRecipe,
) -> FitResult:
    """One phase: its layers, its learning rate and optimizer, compile, fit; a ``once`` phase through
    ``fit_phase_once``."""

    def train() -> FitResult:
        if phase.prepare is not None:
            phase.prepare()
        ctx.devices.compile(trainer, learning_rate(phase, rate, ctx.steps), recipe)
        return fit(
            trainer,
            ctx.train_ds,
            ctx.val_ds,
            name=phase.name,
            epochs=phase.epochs,
            steps_per_epoch=ctx.steps,
            batch_size=ctx.batch_size,
            checkpoint=checkpoint,
            backup_dir=ctx.backup.folder(phase.folder),
            patience=patience,
            patience_from_epoch=early_stopping_start(phase),
            best_so_far=best_so_far,
            validation_steps=math.ceil(ctx.facts.num_val / ctx.batch_size),
            backup=ctx.backup,
            mark_done=not phase.once,  # fit_phase_once stores the result with the weights
        )

    if phase.once:
        return fit_phase_once(trainer.model, ctx.backup, f"{phase.folder}_done", train, phase.name)
    return train()


def early_stopping_start(phase: Phase) -> int:
    """The first epoch (0-based) early stopping counts: once a ``cosine`` phase's rate has decayed to
    about half its peak (the middle of the decay after the ramp), once a ``hold`` phase's ramp has ended;
    from the first epoch at a ``constant`` rate. A run stopped at a high rate has not settled: on the
    development suite's digits a student whose validation mAP sat near the constant predictor's for its
    first epochs was stopped there (docs/recipe.md)."""
    ramp = min(phase.lr_warmup_epochs, phase.epochs)
    if phase.schedule == "cosine":
        return math.ceil(ramp + (phase.epochs - ramp) / 2)
    return math.ceil(ramp) if phase.schedule == "hold" else 0


def learning_rate(phase: Phase, rate: float, steps_per_epoch: int) -> Any:
    """The optimizer's learning rate for ``phase`` at the scaled ``rate``: a number or a schedule."""
    if phase.schedule == "constant":
        return rate
    total = phase.epochs * steps_per_epoch
    ramp = warmup_steps(phase.lr_warmup_epochs, steps_per_epoch, total)
    return cosine_schedule(rate, total, ramp, decay=phase.schedule == "cosine")

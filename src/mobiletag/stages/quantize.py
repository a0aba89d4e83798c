"""Stage: quantization-aware training of the shipped float student (one device, float32)."""

from __future__ import annotations

import logging
from pathlib import Path

from mobiletag.artifacts import QatModel, StudentModel, read_json
from mobiletag.config import Config
from mobiletag.data.augment import TrainAugment
from mobiletag.models.student import preprocess
from mobiletag.quantization.qat import calibrate_ranges, load_qat_model, quantize
from mobiletag.stages.common import StageResult
from mobiletag.stages.train_student import METRICS as STUDENT_METRICS
from mobiletag.stages.train_student import load_teacher
from mobiletag.training.attempts import records_failures
from mobiletag.training.fit import Trainer, validation_map
from mobiletag.training.phases import QAT, Phase
from mobiletag.training.precision import load_float32
from mobiletag.training.stage_runner import Context, Report, Trained, TrainingStage, run_training_stage, task_backup
from mobiletag.training.strategy import one_device

log = logging.getLogger(__name__)

CHECKPOINT = QatModel.CHECKPOINT
METRICS = QatModel.METRICS
TASK = "quantize"


def shipped_student_alpha(student_dir: str | Path, default: float) -> float:
    """The alpha the student in ``student_dir`` was trained with (its student_metrics.json), else ``default``."""
    path = Path(student_dir) / STUDENT_METRICS
    return float(read_json(path).get("alpha", default)) if path.is_file() else default


def stage(config: Config, teacher_dir: str | Path, student_dir: str | Path) -> TrainingStage:
    """The QAT stage, declared: the quantized student with calibrated ranges, one phase, its metrics file."""
    cfg = config.qat
    size = config.student.image_size
    # the student's own alpha: a baseline student (alpha 1, shipped by select-student because it
    # beat the distilled one) is not distilled from the teacher here either
    alpha = shipped_student_alpha(student_dir, config.student.alpha)
    distill = cfg.distill and alpha < 1.0
    sizes = [config.teacher.image_size, size] if distill else [size]

    def build(ctx: Context) -> Trainer:
        augment = TrainAugment(sizes, config.data.augment)
        student = load_float32(Path(student_dir) / StudentModel.CHECKPOINT)
        # the float student's figure on this val split, as its stage measured it (not measured again)
        float_map = read_json(Path(student_dir) / STUDENT_METRICS)["metrics"]["val_map"]
        qat_model = quantize(student)
        # the student's view of augmented training batches
        calibrate_ranges(qat_model, ctx.train_ds.map(lambda inputs, labels: augment(*inputs)[-1]), preprocess)
        # traced once for the QAT model: each epoch's validation runs the same function
        calibrated_map = validation_map(qat_model, ctx.val_ds, preprocess)
        log.info(
            "qat: validation mAP %.4f after range calibration, before training (float %.4f)", calibrated_map, float_map
        )
        ctx.notes.update(float_map=float_map, calibrated_map=calibrated_map)
        teacher = load_teacher(teacher_dir) if distill else None
        return Trainer(
            qat_model,
            teacher,
            alpha=alpha if distill else 1.0,
            temperature=config.student.temperature,
            preprocess=preprocess,
            augment=augment,
            loss=config.student.loss,  # QAT goes on with the student's loss
            pos_weight=ctx.facts.positive_weights(config.student.loss),
        )

    def report(ctx: Context, trained: Trained) -> Report:
        result = trained.results[QAT]
        float_map = ctx.notes["float_map"]
        return Report(
            metrics={
                "val_map_float_student": round(float_map, 4),
                "val_map_calibrated": round(ctx.notes["calibrated_map"], 4),
                "epochs": result.epochs_run,
            },
            body={
                "distill": distill,
                "learning_rate": trained.rates[QAT],
                "history": result.history,
                "image_size": size,
                "classes": ctx.facts.classes,
            },
            note=f"float student {float_map:.4f}",
        )

    def phases(ctx: Context, trainer: Trainer) -> list[Phase]:
        return [Phase(QAT, "fit", cfg.epochs, cfg.learning_rate, "constant")]

    teacher = "distilled from the teacher" if distill else "on the labels alone"
    return TrainingStage(
        "qat",
        CHECKPOINT,
        METRICS,
        f"{config.student.architecture} at {size} px, quantization-aware, {teacher}",
        sizes,
        build,
        phases,
        report,
        config.student.architecture,
        preprocess=preprocess,
        load=load_qat_model,
        framework="tf_keras + tensorflow-model-optimization (QAT)",
    )


@records_failures(TASK)
def run(
    config: Config,
    dataset_dir: str | Path,
    teacher_dir: str | Path,
    student_dir: str | Path,
    model_dir: str | Path,
    *,
    backup_uri: str | None = None,
    run_id: str = "",
    expected_gpus: int = 0,
) -> StageResult:
    """QAT in float32 on one device (tfmot supports neither mixed precision nor tf.distribute);
    backups (if ``backup_uri``) go to ``<backup_uri>/<run_id>/quantize``."""
    qat = stage(config, teacher_dir, student_dir)
    place = one_device(config.multi_gpu, expected_gpus)
    return run_training_stage(qat, config, (dataset_dir, model_dir), task_backup(backup_uri, run_id, TASK), place)

"""Stage: quantization-aware training of the distilled student (one device)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import tf_keras as keras

from mobiletag.config import Config
from mobiletag.data.augment import TrainAugment
from mobiletag.data.pipeline import train_and_val
from mobiletag.models.student import preprocess
from mobiletag.quantization.qat import calibrate_ranges, load_qat_model, quantize
from mobiletag.stages.common import (
    QAT_CHECKPOINT,
    STUDENT_CHECKPOINT,
    StageResult,
    dataset_facts,
    read_json,
    reproducibility,
    steps_per_epoch,
    write_json,
)
from mobiletag.stages.train_student import METRICS as STUDENT_METRICS
from mobiletag.stages.train_student import load_teacher
from mobiletag.training.attempts import records_failures
from mobiletag.training.backup import Backup, backup_prefix
from mobiletag.training.fit import Trainer, best_model, fit, scaled_learning_rate, validation_map
from mobiletag.training.precision import load_float32, set_precision
from mobiletag.training.strategy import prepare_gpus

log = logging.getLogger(__name__)

CHECKPOINT = QAT_CHECKPOINT
METRICS = "qat_metrics.json"
TASK = "quantize"


def shipped_student_alpha(student_dir: str | Path, default: float) -> float:
    """The alpha the student in ``student_dir`` was trained with (its student_metrics.json), else ``default``."""
    path = Path(student_dir) / STUDENT_METRICS
    return float(read_json(path).get("alpha", default)) if path.is_file() else default


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
    started = time.perf_counter()
    cfg = config.qat
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    prepare_gpus(expected_gpus, config.multi_gpu)
    set_precision("float32")
    facts = dataset_facts(dataset_dir)
    steps = steps_per_epoch(facts.num_train, cfg.batch_size, "qat.batch_size")
    with reproducibility(config):
        backup = Backup(backup_prefix(backup_uri, run_id, TASK))
        if backup.restore():
            log.info("qat: resuming from a backup")
        size = config.student.image_size
        # the student's own alpha: a baseline student (alpha 1, shipped by select-student because
        # it beat the distilled one) is not distilled from the teacher here either
        alpha = shipped_student_alpha(student_dir, config.student.alpha)
        distill = cfg.distill and alpha < 1.0
        sizes = [config.teacher.image_size, size] if distill else [size]
        augment = TrainAugment(sizes, config.data.augment)
        train_ds, val_ds = train_and_val(
            dataset_dir,
            config,
            train_sizes=sizes,
            val_size=size,
            batch_size=cfg.batch_size,
            num_classes=facts.num_classes,
        )
        student = load_float32(Path(student_dir) / STUDENT_CHECKPOINT)
        # the float student's figure on this val split, as its stage measured it (not measured again)
        float_map = read_json(Path(student_dir) / STUDENT_METRICS)["metrics"]["val_map"]
        qat_model = quantize(student)
        # the student's view of augmented training batches
        calibration = train_ds.map(lambda inputs, labels: augment(*inputs)[-1])
        calibrate_ranges(qat_model, calibration, preprocess)
        calibrated_map = validation_map(qat_model, val_ds, preprocess)
        log.info(
            "qat: validation mAP %.4f after range calibration, before training (float %.4f)", calibrated_map, float_map
        )
        teacher = load_teacher(teacher_dir) if distill else None
        trainer = Trainer(
            qat_model,
            teacher,
            alpha=alpha if distill else 1.0,
            temperature=config.student.temperature,
            preprocess=preprocess,
            augment=augment,
        )
        lr = scaled_learning_rate(cfg.learning_rate, cfg.batch_size, cfg.reference_batch_size)
        trainer.compile(optimizer=keras.optimizers.Adam(lr), steps_per_execution=config.multi_gpu.steps_per_execution)
        work = backup.folder("best") or out
        checkpoint = work / CHECKPOINT
        result = fit(
            trainer,
            train_ds,
            val_ds,
            name="qat",
            epochs=cfg.epochs,
            steps_per_epoch=steps,
            batch_size=cfg.batch_size,
            checkpoint=checkpoint,
            backup_dir=backup.folder("fit"),
            backup=backup,
            validation_steps=math.ceil(facts.num_val / cfg.batch_size),
            patience=0,
        )
        final = out / CHECKPOINT
        # the backup stays: it is cleared by the bundle stage, once the outputs that replace it are stored
        _, val_map = best_model(qat_model, checkpoint, val_ds, preprocess, load=load_qat_model, save_to=final)
        metrics = {
            "val_map": round(val_map, 4),
            "val_map_float_student": round(float_map, 4),
            "val_map_calibrated": round(calibrated_map, 4),
            "train_images_per_second": round(result.train_images_per_second, 2),
            "epochs": result.epochs_run,
            "seconds": round(time.perf_counter() - started, 1),
        }
        write_json(
            out / METRICS,
            {
                "metrics": metrics,
                "distill": distill,
                "learning_rate": lr,
                "history": result.history,
                "image_size": size,
                "classes": facts.classes,
            },
        )
        log.info("qat: validation mAP %.4f (float student %.4f)", val_map, float_map)
        details = {
            "framework": "tf_keras + tensorflow-model-optimization (QAT)",
            "architecture": config.student.architecture,
            "image_size": size,
            "size_bytes": final.stat().st_size,
            "val_map": metrics["val_map"],
        }
        return StageResult(metrics=metrics, files={"checkpoint": str(final)}, details=details)

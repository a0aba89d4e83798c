"""The artifact contract: every file name a stage writes or reads, JSON read/write, and the one
atomic-directory writer.

One class per artifact, named for what it holds, lists that artifact's files. A stage names another
stage's files through these classes, never by spelling a name out (tests/unit/test_artifacts.py
fails on a file-name literal anywhere else in the package, components/ or pipeline.py). The module
imports only the standard library: importing it never loads TensorFlow.

    SourceDataset   the dataset a user hands in (data_uri)              read by resolve_config, prepare_dataset
    Dataset         TFRecord shards, labels, stats, originals manifest  prepare_dataset
    TeacherModel    checkpoint, training metrics                        train_teacher
    StudentModel    checkpoint, training metrics (+ selection)          train_student(_baseline), select_student
    QatModel        checkpoint, training metrics                        quantize
    ExportedModel   the INT8 model and labels (+ MediaPipe's results)   export_tflite, mediapipe_package
    Thresholds      the recommendation and the validation arrays        optimize_thresholds
    Evaluation      metrics, reports, the test arrays                   evaluate
    OutputFolder    the contract with the app team                      bundle
    Published       a published version's extra files                   publish, promote
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

_LABELS = "labels.txt"  # class names, one a line, in the model's output order
_METRICS = "metrics.json"


class SourceDataset:
    """The dataset folder a run starts from: ``images/``, one labels CSV per split, an optional
    ``config.yaml`` with config overrides."""

    IMAGES_DIR = "images"
    CONFIG = "config.yaml"
    LABELS_CSV_SUFFIX = "_labels.csv"

    @staticmethod
    def labels_csv(split: str) -> str:
        """``train_labels.csv``, ``val_labels.csv``, ``test_labels.csv``: ``filepath,labels`` rows."""
        return f"{split}{SourceDataset.LABELS_CSV_SUFFIX}"


class Dataset:
    """prepare_dataset's output: pre-resized JPEG TFRecord shards per split and small metadata."""

    LABELS = _LABELS
    STATS = "stats.json"  # counts per split and class, format version, shard names, warnings
    ORIGINALS = "originals.json"  # per val/test record, where its original image lives (size, CRC32C, version)
    SHARD_SUFFIX = ".tfrecord"

    @staticmethod
    def shard(split: str, index: int, count: int) -> str:
        """``train-00000-of-00004.tfrecord``."""
        return f"{split}-{index:05d}-of-{count:05d}{Dataset.SHARD_SUFFIX}"

    @staticmethod
    def shard_glob(split: str) -> str:
        """The glob pattern that matches every shard of ``split``."""
        return f"{split}-*-of-*{Dataset.SHARD_SUFFIX}"


class TeacherModel:
    """train_teacher's output."""

    CHECKPOINT = "teacher_best.h5"  # the best validation epoch, float32
    METRICS = "teacher_metrics.json"  # val_map, the history of each phase


class StudentModel:
    """train_student's and train_student_baseline's output; select_student's output is the same
    two files of the student that ships, plus SELECTION."""

    CHECKPOINT = "student_best.h5"
    METRICS = "student_metrics.json"  # val_map, alpha, the history of each phase
    SELECTION = "selection.json"  # select_student: shipped (distilled or baseline), reason, both val_map, margin, alpha
    BASELINE_SKIPPED = "baseline_skipped.json"  # train_student_baseline when the run trains no baseline


class QatModel:
    """quantize's output: the quantization-aware model, ranges calibrated, trained."""

    CHECKPOINT = "student_qat.h5"
    METRICS = "qat_metrics.json"


class ExportedModel:
    """export_tflite's output; mediapipe_package writes the same MODEL and LABELS (the model with
    TFLite metadata, tensors unchanged) and MediaPipe ImageClassifier's results on the test split."""

    MODEL = "model_qat_int8.tflite"
    LABELS = _LABELS
    EXPORT_REPORT = "export_report.json"  # export_tflite: size, ops, input/output, parity with the QAT model
    PARITY_QAT_PROBABILITIES = "parity_qat_probabilities.npy"  # [n, C] float32, QAT model on the first n val images
    MEDIAPIPE_SUMMARY = "mediapipe.json"  # metadata, calibration thresholds, checks, timings
    MEDIAPIPE_TEST_SCORES = "mediapipe_test_scores.npy"  # [N, C] float32, calibrated scores
    MEDIAPIPE_TEST_LABEL_SETS = "mediapipe_test_label_sets.json"  # per image, the label indices returned
    MEDIAPIPE_TEST_PATHS = "mediapipe_test_paths.json"  # the N test paths, as evaluate names them


class Thresholds:
    """optimize_thresholds' output: per-class thresholds on the INT8 model's validation outputs."""

    RECOMMENDATION = "threshold_recommendation.json"  # per class: threshold and the validation figures
    VAL_SCORES = "val_scores.npy"  # [N, C] float32, the INT8 model's validation probabilities
    VAL_TRUE_LABELS = "val_labels.npy"  # [N, C] uint8 (0/1), the validation images' true labels


class Evaluation:
    """evaluate's output: the test figures, the reports, and the arrays behind them."""

    METRICS = _METRICS  # test metrics per class and averaged, comparisons, distillation and MediaPipe blocks
    REPORT_MD = "report.md"
    REPORT_HTML = "report.html"  # plots and error gallery
    TEST_SCORES = "test_scores.npy"  # [N, C] float32, the INT8 model's probabilities in test-record order
    TEST_TRUE_LABELS = "test_labels.npy"  # [N, C] uint8 (0/1), the test images' true labels
    TEST_PATHS = "test_paths.json"  # the N original file paths, a JSON list


class OutputFolder:
    """bundle's output, the folder the app team receives (``mobiletag train --out-dir`` writes it too).

    SOURCES says which of bundle's input folders each copied file comes from; bundle writes
    INFERENCE_CONFIG itself. FILES is the whole folder.
    """

    MODEL = ExportedModel.MODEL  # with MediaPipe metadata
    LABELS = ExportedModel.LABELS
    METRICS = Evaluation.METRICS
    THRESHOLDS = Thresholds.RECOMMENDATION
    INFERENCE_CONFIG = "inference_config.json"  # input, preprocessing, output dequantization, labels, thresholds
    REPORT_MD = Evaluation.REPORT_MD
    REPORT_HTML = Evaluation.REPORT_HTML
    TEACHER_CHECKPOINT = TeacherModel.CHECKPOINT
    STUDENT_CHECKPOINT = StudentModel.CHECKPOINT
    QAT_CHECKPOINT = QatModel.CHECKPOINT

    SOURCES: ClassVar[Mapping[str, tuple[str, ...]]] = MappingProxyType(
        {
            "tflite_dir": (MODEL, LABELS),
            "eval_dir": (METRICS, REPORT_MD, REPORT_HTML),
            "thresholds_dir": (THRESHOLDS,),
            "teacher_dir": (TEACHER_CHECKPOINT,),
            "student_dir": (STUDENT_CHECKPOINT,),
            "qat_dir": (QAT_CHECKPOINT,),
        }
    )
    FILES: ClassVar[frozenset[str]] = frozenset(
        {INFERENCE_CONFIG, *(name for names in SOURCES.values() for name in names)}
    )


class Published:
    """What publish adds under ``<output_uri>``: GATE in each version's folder, LATEST beside them."""

    GATE = "gate.json"  # the quality gate's decision and reasons
    LATEST = "LATEST"  # the name of the promoted version's folder, one line
    METRICS = OutputFolder.METRICS  # what the gate reads in a version's folder


def write_json(path: str | Path, data: Any) -> None:
    """``data`` as indented UTF-8 JSON with a final newline; creates the parent folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@contextlib.contextmanager
def atomic_dir(final_path: str | Path) -> Iterator[Path]:
    """A folder that appears at ``final_path`` complete or not at all.

    Yields an empty temporary sibling (``.<name>.partial-<pid>``) to write into. When the block
    ends without an exception, the sibling is renamed to ``final_path``, replacing a folder that is
    there; on any exception (KeyboardInterrupt included) the sibling is removed and a folder already
    at ``final_path`` is left as it was.
    """
    final = Path(final_path)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            try:
                tmp.rename(final)
            except BaseException:
                old.rename(final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

"""What every stage shares: its result, JSON files, dataset facts."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobiletag.config import Config
from mobiletag.data.tfrecords import read_labels, read_stats
from mobiletag.errors import ConfigError

log = logging.getLogger(__name__)

# What the stages write into their output artifacts (here, so that a stage can name another
# stage's files without importing its module and, with it, TensorFlow).
TEACHER_CHECKPOINT = "teacher_best.h5"
STUDENT_CHECKPOINT = "student_best.h5"
QAT_CHECKPOINT = "student_qat.h5"
THRESHOLDS_FILE = "threshold_recommendation.json"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"


@dataclass
class StageResult:
    """Figures for the KFP UI (``metrics``) and the files written (``files``)."""

    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def write_json(path: str | Path, data: Any) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class DatasetFacts:
    classes: list[str]
    num_train: int
    num_val: int
    num_test: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def dataset_facts(dataset_dir: str | Path) -> DatasetFacts:
    stats = read_stats(dataset_dir)
    splits = stats["splits"]
    return DatasetFacts(
        classes=read_labels(dataset_dir),
        num_train=splits["train"]["num_images"],
        num_val=splits["val"]["num_images"],
        num_test=splits["test"]["num_images"],
    )


def steps_per_epoch(num_images: int, batch_size: int, key: str) -> int:
    """Full batches per epoch (training drops the remainder); an error when there are none."""
    if num_images < batch_size:
        raise ConfigError(
            f"config key '{key}' is {batch_size} but the training split has only {num_images} images; "
            f"set {key} to at most {num_images}"
        )
    return num_images // batch_size


def seed_everything(config: Config) -> None:
    import tf_keras as keras

    keras.utils.set_random_seed(config.seed)

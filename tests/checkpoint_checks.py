"""A training stage's checkpoint validated again for tests, on the input the stage validates on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mobiletag.config import Config


def checkpoint_val_map(
    checkpoint: Path,
    dataset_dir: Path,
    config: Config,
    *,
    batch_size: int | None = None,
    load: Callable | None = None,
) -> tuple[float, float]:
    """(macro mAP of the model in ``checkpoint``, macro mAP of a constant score) on the val split of
    the TFRecords in ``dataset_dir``: ``make_dataset`` in evaluation mode at the student's size and
    ``batch_size`` (default the student's), uint8 through the student's preprocess, as the student
    and QAT stages validate (``fit.validation_map``). ``load`` reads the file (default: as float32;
    QAT models: ``qat.load_qat_model``). A constant score ranks nothing: each class's AP is its
    prevalence in the split."""
    from mobiletag.data.tf_input import make_dataset
    from mobiletag.models.student import preprocess
    from mobiletag.stages.common import dataset_facts
    from mobiletag.training.fit import predict_scores
    from mobiletag.training.metrics import mean_average_precision
    from mobiletag.training.precision import load_float32

    dataset = make_dataset(
        dataset_dir,
        "val",
        image_sizes=[config.student.image_size],
        batch_size=batch_size or config.student.batch_size,
        training=False,
        num_classes=dataset_facts(dataset_dir).num_classes,
        config=config,
    )
    model = (load or load_float32)(checkpoint)
    scores, labels = predict_scores(model, dataset, preprocess)
    return mean_average_precision(labels, scores), mean_average_precision(labels, np.zeros_like(scores))

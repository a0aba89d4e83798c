"""metrics.json's "mediapipe" block: the test figures through MediaPipe Tasks' ImageClassifier
(mediapipe-package's scores and label sets) beside ours (the inference_config.json rule)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mobiletag.artifacts import ExportedModel, read_json
from mobiletag.errors import DataError
from mobiletag.evaluation.metrics import classification_metrics, ranking_metrics
from mobiletag.export.mediapipe import Classified, raw_probabilities


def has_mediapipe_results(folder: str | Path) -> bool:
    """Whether ``folder`` is mediapipe-package's output (its summary is there)."""
    return (Path(folder) / ExportedModel.MEDIAPIPE_SUMMARY).is_file()


def load_mediapipe_results(folder: str | Path) -> tuple[list[str], Classified, dict[str, Any]]:
    """mediapipe-package's test paths, ImageClassifier's results and its summary (mediapipe.json)."""
    folder = Path(folder)
    summary = read_json(folder / ExportedModel.MEDIAPIPE_SUMMARY)
    classified = Classified(
        scores=np.load(folder / ExportedModel.MEDIAPIPE_TEST_SCORES),
        label_sets=read_json(folder / ExportedModel.MEDIAPIPE_TEST_LABEL_SETS),
        timings=summary.get("timings_ms_per_image", {}),
    )
    return read_json(folder / ExportedModel.MEDIAPIPE_TEST_PATHS), classified, summary


def mediapipe_block(
    *,
    classes: Sequence[str],
    labels: np.ndarray,
    paths: Sequence[str],
    scores: np.ndarray,
    thresholds: dict[str, float],
    ours: dict[str, Any],
    mediapipe_paths: Sequence[str],
    classified: Classified,
    summary: dict[str, Any],
) -> dict[str, Any]:
    """The block: MediaPipe's macro/micro mAP and micro/macro F1 (its label sets with default
    options), the share of test images whose label set equals the rule ``p >= t_c`` on our scores,
    and the mAP difference.

    ``labels``, ``paths``, ``scores``: the test split as evaluate scored it (rows in record
    order); MediaPipe's rows are matched by path. Macro mAP comes from the calibrated scores
    (per class a monotonic function of ``p``: the same ranking MediaPipe gives); micro mAP from
    the probabilities recovered by inverting the calibration.
    """
    row_of = {path: i for i, path in enumerate(mediapipe_paths)}
    missing = [p for p in paths if p not in row_of]
    if missing:
        raise DataError(
            f"MediaPipe classified {len(mediapipe_paths)} test images but not {len(missing)} that evaluate scores "
            f"(first: {missing[0]}): mediapipe-package and evaluate must read the same dataset artifact"
        )
    order = [row_of[p] for p in paths]
    calibrated = classified.scores[order]
    decided = classified.decisions(len(classes))[order]
    calibration = [summary["calibration_thresholds"][c] for c in classes]
    probabilities = raw_probabilities(calibrated, calibration)
    t = np.array([thresholds[c] for c in classes], np.float32)
    rule = scores >= t[None, :]
    agreement = float(np.mean(np.all(decided.astype(bool) == rule, axis=1)))
    by_sets = classification_metrics(labels, decided.astype(np.float32), list(classes), dict.fromkeys(classes, 0.5))
    ranking = {
        "map_macro": ranking_metrics(labels, calibrated)["map_macro"],
        "map_micro": ranking_metrics(labels, probabilities)["map_micro"],
    }
    difference = (
        None
        if ranking["map_macro"] is None or ours.get("map_macro") is None
        else round(abs(ranking["map_macro"] - ours["map_macro"]), 4)
    )
    return {
        "client": f"MediaPipe Tasks ImageClassifier (mediapipe {summary.get('mediapipe_version')}), default options",
        # the (width, height) the tool pre-scaled each decoded image for, as the documented app path does
        "prescale_to": summary.get("prescale_to"),
        "num_images": len(paths),
        **ranking,
        "f1_macro": by_sets["f1_macro"],
        "f1_micro": by_sets["f1_micro"],
        "exact_match": by_sets["exact_match"],
        "label_set_agreement": round(agreement, 4),
        "label_sets_differing": int(round((1 - agreement) * len(paths))),
        "map_macro_difference": difference,
        "max_abs_probability_difference": round(float(np.max(np.abs(probabilities - scores))), 4)
        if len(paths)
        else 0.0,
        "calibration_thresholds": dict(summary["calibration_thresholds"]),
        "timings_ms_per_image": {k: round(float(v), 3) for k, v in classified.timings.items()},
    }


def markdown_line(block: dict[str, Any], ours: dict[str, Any]) -> str:
    return (
        f"Through MediaPipe Tasks' ImageClassifier ({block['num_images']} test images, the model's metadata, default "
        f"options): macro mAP {block['map_macro']} (ours {ours.get('map_macro')}, |difference| "
        f"{block['map_macro_difference']}), micro F1 {block['f1_micro']}, macro F1 {block['f1_macro']}; label sets "
        f"equal to the inference_config.json rule on {100 * block['label_set_agreement']:.1f}% of the images.\n"
    )

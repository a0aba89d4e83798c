"""Does the teacher pay for itself? The "distillation" block of metrics.json.

The pipeline trains the student twice: distilled from the teacher (``student.alpha``, 0.7 by
default) and without the teacher (alpha = 1, the baseline). The select_student stage ships the
one with the better validation macro mAP; this module describes both on validation and test,
and the test difference of macro mAP, ``distilled - baseline`` (positive: distillation helped),
with a bootstrap confidence interval over test images.

Pure numpy: the evaluate stage computes the scores and calls :func:`distillation_block`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mobiletag.config import ThresholdsConfig
from mobiletag.evaluation.metrics import classification_metrics
from mobiletag.evaluation.thresholds import optimize_thresholds

DISTILLED = "distilled"
BASELINE = "baseline"
RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.95
# resamples are scored this many at a time (memory: CHUNK x images float64 per class)
CHUNK = 100


def weighted_average_precision(y_true: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AP of one class for many resamples at once, each resample given as per-image counts.

    An image drawn ``k`` times counts ``k`` times: the result equals
    :func:`mobiletag.training.metrics.average_precision` on the resampled images (tied scores are
    taken together, one point per distinct score), without sorting each resample again.

    Args:
        y_true: (n,) 0/1 labels of the class.
        scores: (n,) scores of the class.
        weights: (r, n) how often each image is in each of r resamples.

    Returns:
        (r,) AP per resample; NaN where the resample has no positive of the class.
    """
    y = np.asarray(y_true, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s = s[order]
    w = np.asarray(weights, dtype=np.float64)[:, order]
    tp = np.cumsum(w * y[order][None, :], axis=1)
    predicted = np.cumsum(w, axis=1)
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp, predicted = tp[:, last_of_tie], predicted[:, last_of_tie]
    positives = tp[:, -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = tp / positives[:, None]
        steps = np.diff(np.concatenate([np.zeros((len(w), 1)), recall], axis=1), axis=1)
        ap = np.sum(steps * precision, axis=1)
    return np.where(positives > 0, ap, np.nan)


def bootstrap_weights(num_images: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(resamples, num_images) counts: each row draws ``num_images`` images with replacement.

    The draws are ``np.random.default_rng(seed).integers(0, num_images, (resamples, num_images))``,
    so a direct computation can resample the same images.
    """
    draws = np.random.default_rng(seed).integers(0, num_images, size=(resamples, num_images))
    return np.stack([np.bincount(row, minlength=num_images) for row in draws])


def _macro_map_per_resample(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Macro mAP per resample over the classes with a positive in that resample (as ranking_metrics)."""
    aps = np.stack([weighted_average_precision(labels[:, c], scores[:, c], weights) for c in range(labels.shape[1])])
    valid = ~np.isnan(aps)
    counted = valid.sum(axis=0)
    with np.errstate(invalid="ignore"):
        return np.where(counted > 0, np.where(valid, aps, 0.0).sum(axis=0) / np.maximum(counted, 1), np.nan)


def bootstrap_map_difference(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    *,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Macro mAP of ``a`` minus that of ``b`` on the test images, with a percentile bootstrap interval.

    Both models are scored on the same resamples (paired). A class with no positive in a resample
    is left out of both averages of that resample, as :func:`mean_average_precision` does; a
    resample with no positive at all is dropped (counted in ``resamples_used``).
    """
    labels = np.asarray(labels)
    a = np.asarray(scores_a, dtype=np.float64)
    b = np.asarray(scores_b, dtype=np.float64)
    full = np.ones((1, len(labels)))
    point = float(_macro_map_per_resample(labels, a, full)[0] - _macro_map_per_resample(labels, b, full)[0])
    weights = bootstrap_weights(len(labels), resamples, seed)
    diffs = np.concatenate(
        [
            _macro_map_per_resample(labels, a, chunk) - _macro_map_per_resample(labels, b, chunk)
            for chunk in np.array_split(weights, max(1, int(np.ceil(resamples / CHUNK))))
        ]
    )
    diffs = diffs[~np.isnan(diffs)]
    tail = (1.0 - confidence) / 2 * 100
    low, high = (float(v) for v in np.percentile(diffs, [tail, 100 - tail])) if len(diffs) else (np.nan, np.nan)
    return {"value": point, "ci": [low, high], "resamples_used": int(len(diffs)), "samples": diffs}


def _figures(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("map_macro", "map_micro", "f1_macro", "f1_micro")
    return {k: metrics[k] for k in keys} | {"num_images": metrics["num_images"]}


def student_figures(
    val_labels: np.ndarray,
    val_scores: np.ndarray,
    test_labels: np.ndarray,
    test_scores: np.ndarray,
    classes: list[str],
    thresholds: ThresholdsConfig,
) -> dict[str, Any]:
    """Macro/micro mAP and F1 of one float student on validation and test.

    F1 uses the student's own per-class thresholds, tuned on its validation scores as the
    optimize_thresholds stage tunes the shipped model's (a fixed 0.5 would favour whichever
    student is better calibrated, not the better ranker).
    """
    tuned = optimize_thresholds(val_labels, val_scores, classes, thresholds)
    chosen = {name: entry["threshold"] for name, entry in tuned["classes"].items()}
    return {
        "val": _figures(classification_metrics(val_labels, val_scores, classes, chosen)),
        "test": _figures(classification_metrics(test_labels, test_scores, classes, chosen)),
    }


# what the bootstrap interval is an interval of: the two trained students are fixed, the test images vary
INTERVAL_COVERS = (
    "the sampling of test images, for these two trained students; not the spread between training runs "
    "(another seed or a non-reproducible run moves each student by about as much: make bench-quality "
    "measures that spread)"
)


def _verdict(low: float, high: float) -> str:
    if low > 0:
        return "distilled better on test"
    if high < 0:
        return "baseline better on test"
    return "no clear difference on test (the interval contains 0)"


def distillation_block(
    *,
    classes: list[str],
    val_labels: np.ndarray,
    test_labels: np.ndarray,
    distilled: tuple[np.ndarray, np.ndarray],
    baseline: tuple[np.ndarray, np.ndarray] | None,
    selection: dict[str, Any],
    thresholds: ThresholdsConfig | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """metrics.json["distillation"]: both float students, the test difference, which one shipped and why.

    Args:
        classes: Class names in output order.
        val_labels: (n_val, C) 0/1 validation labels.
        test_labels: (n_test, C) 0/1 test labels.
        distilled: The distilled student's sigmoid scores, (validation, test).
        baseline: The baseline student's (alpha = 1) scores, (validation, test); None when the run
            trained no baseline (pipeline parameter baseline_student false).
        selection: select_student's selection.json (``shipped``, ``reason``, ``val_map``): the
            decision, taken on validation mAP before any test figure existed.
        thresholds: How F1 thresholds are tuned on validation (the run's ``thresholds`` config).
        resamples: Bootstrap resamples of the test images.
        seed: Seed of the resampling (the same seed gives the same interval).
        confidence: Coverage of the interval.

    Returns:
        ``shipped``, ``reason``, ``selection_val_map``, ``students`` (``distilled``/``baseline``:
        ``val`` and ``test`` macro/micro mAP and F1) and ``test_difference`` (macro mAP,
        distilled minus baseline, with its interval); ``baseline`` and ``test_difference`` are None
        without a baseline.
    """
    cfg = thresholds or ThresholdsConfig()
    students: dict[str, Any] = {
        DISTILLED: student_figures(val_labels, distilled[0], test_labels, distilled[1], classes, cfg),
        BASELINE: None,
    }
    difference = None
    if baseline is not None:
        students[BASELINE] = student_figures(val_labels, baseline[0], test_labels, baseline[1], classes, cfg)
        boot = bootstrap_map_difference(
            test_labels, distilled[1], baseline[1], resamples=resamples, seed=seed, confidence=confidence
        )
        low, high = boot["ci"]
        difference = {
            "metric": "test macro mAP",
            "definition": "distilled - baseline (positive: distillation helped)",
            "value": round(boot["value"], 4),
            "ci": [round(low, 4), round(high, 4)],
            "confidence": confidence,
            "method": f"percentile bootstrap over the {len(test_labels)} test images scored, {resamples} resamples "
            f"with replacement, seed {seed}, paired (both students on the same resamples)",
            "resamples_used": boot["resamples_used"],
            "covers": INTERVAL_COVERS,
            "verdict": _verdict(low, high),
        }
    return {
        "shipped": selection["shipped"],
        "reason": selection["reason"],
        "selection_val_map": selection.get("val_map", {}),
        "students": students,
        "f1_thresholds": f"per class, tuned on each student's own validation scores (thresholds.strategy {cfg.strategy})",
        "test_difference": difference,
    }


def markdown_section(block: dict[str, Any]) -> str:
    """The block as a report section (for report.md)."""
    lines = [
        "## Distillation: distilled student vs. the same student without a teacher (alpha = 1)",
        "",
        f"Shipped: **{block['shipped']}**: {block['reason']}.",
        "",
        "| student | val macro mAP | val micro mAP | val macro F1 | val micro F1 "
        "| test macro mAP | test micro mAP | test macro F1 | test micro F1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, figures in block["students"].items():
        if figures is None:
            continue
        v, t = figures["val"], figures["test"]
        lines.append(
            f"| {name} | {v['map_macro']} | {v['map_micro']} | {v['f1_macro']} | {v['f1_micro']} "
            f"| {t['map_macro']} | {t['map_micro']} | {t['f1_macro']} | {t['f1_micro']} |"
        )
    diff = block["test_difference"]
    if diff is None:
        lines += ["", "No baseline student in this run (pipeline parameter baseline_student: false)."]
    else:
        ci = diff["ci"]
        lines += [
            "",
            f"Test macro mAP, {diff['definition']}: {diff['value']} "
            f"({round(diff['confidence'] * 100)}% interval {ci[0]} to {ci[1]}): "
            f"{diff['verdict']}. The interval covers {diff['covers']}.",
        ]
    return "\n".join(lines) + "\n"

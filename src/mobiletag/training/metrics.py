"""Multi-label ranking and threshold metrics in numpy (checked against scikit-learn in tests)."""

from __future__ import annotations

import numpy as np


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """AP of one class: sum over thresholds of (R_n - R_{n-1}) * P_n, as scikit-learn defines it.

    NaN when the class has no positive.
    """
    y = np.asarray(y_true, dtype=bool)
    positives = int(y.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s = np.asarray(scores, dtype=np.float64)[order]
    hits = y[order]
    tp = np.cumsum(hits)
    # one point per distinct score: ties are taken together
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = tp[last_of_tie]
    predicted = last_of_tie + 1
    precision = tp / predicted
    recall = tp / positives
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


def per_class_ap(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    return np.array([average_precision(y_true[:, c], scores[:, c]) for c in range(y_true.shape[1])])


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Macro mAP over the classes that have at least one positive."""
    aps = per_class_ap(y_true, scores)
    valid = ~np.isnan(aps)
    return float(aps[valid].mean()) if valid.any() else float("nan")


def micro_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    return average_precision(np.ravel(y_true), np.ravel(scores))

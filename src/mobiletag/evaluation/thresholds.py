"""Per-class decision thresholds chosen by grid search on validation scores.

Run on the exported INT8 model's outputs (1/256 steps), so the thresholds hold for the
model that ships.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from mobiletag.config import ThresholdsConfig

log = logging.getLogger(__name__)


def grid(cfg: ThresholdsConfig) -> np.ndarray:
    count = int(round((cfg.grid_max - cfg.grid_min) / cfg.grid_step)) + 1
    return np.round(np.linspace(cfg.grid_min, cfg.grid_min + (count - 1) * cfg.grid_step, count), 6)


class SortedScores:
    """Each class's scores sorted once, with cumulative positive counts: tp, fp, fn at any
    threshold then cost a binary search (O(N log N) to build, O(log N) per threshold and class)
    instead of a pass over every image.

    Predicted positive: score >= threshold, compared in float64 as numpy compares the float32
    scores with the float64 grid, so the counts equal those of the direct comparison.
    """

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        scores = np.asarray(scores).astype(np.float64)
        scores[np.isnan(scores)] = -np.inf  # a NaN score is never >= a threshold, nor is -inf
        order = np.argsort(scores, axis=0, kind="stable")
        self.sorted = np.take_along_axis(scores, order, axis=0)  # [N, C] ascending per class
        positive = np.take_along_axis(np.asarray(labels).astype(bool), order, axis=0)
        # below[i, c]: positives among the i lowest scores of class c
        self.below = np.concatenate([np.zeros((1, scores.shape[1]), np.int64), np.cumsum(positive, axis=0)])
        self.num_images = scores.shape[0]

    def counts(self, c: int, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """tp, fp, fn for class ``c`` at every threshold."""
        first = np.searchsorted(self.sorted[:, c], np.asarray(thresholds, dtype=np.float64), side="left")
        positives = self.below[-1, c]
        tp = positives - self.below[first, c]
        fp = (self.num_images - first) - tp
        fn = positives - tp
        return tp, fp, fn


def prf(tp: Any, fp: Any, fn: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 (0 where undefined), elementwise."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return precision, recall, f1


def _plateau_middle(best: np.ndarray, thresholds: np.ndarray) -> int:
    """Index of the threshold in the middle of the widest run of consecutive grid points in
    ``best`` (a boolean mask, at least one True).

    Every threshold of a run gives the same validation figures; its middle is the farthest
    from the validation scores on either side, so a small shift of a score (a new image, one
    INT8 output level) moves the decision least. Runs of equal width: the one whose middle is
    nearest 0.5; a run of even length: of its two middle points, the one nearer 0.5.
    """
    index = np.flatnonzero(best)
    runs = np.split(index, np.flatnonzero(np.diff(index) > 1) + 1)
    widest = max(len(run) for run in runs)

    def middle(run: np.ndarray) -> int:
        lo, hi = run[(len(run) - 1) // 2], run[len(run) // 2]
        return int(min((lo, hi), key=lambda i: (abs(thresholds[i] - 0.5), i)))

    middles = [middle(run) for run in runs if len(run) == widest]
    return min(middles, key=lambda i: (abs(thresholds[i] - 0.5), i))


def _best(values: np.ndarray, among: np.ndarray | None = None) -> np.ndarray:
    """Mask of the entries equal to the largest value (of those in ``among``, if given)."""
    candidates = values if among is None else np.where(among, values, -np.inf)
    return candidates >= candidates.max() - 1e-12


def _pick(values: np.ndarray, thresholds: np.ndarray) -> int:
    """The middle of the widest plateau of the best value."""
    return _plateau_middle(_best(values), thresholds)


def margins(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Distance from ``threshold`` to the nearest validation score of a positive and of a
    negative of one class (None when the class has none of that kind)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    out: dict[str, float | None] = {}
    finite = np.isfinite(s)
    for key, mask in (("margin_positive", y & finite), ("margin_negative", ~y & finite)):
        out[key] = round(float(np.min(np.abs(s[mask] - threshold))), 4) if mask.any() else None
    return out


def optimize_thresholds(
    labels: np.ndarray, scores: np.ndarray, classes: list[str], cfg: ThresholdsConfig
) -> dict[str, Any]:
    """The threshold per class and the validation figures behind it.

    Among grid thresholds with the same best figure, the middle of the widest such run
    (:func:`_plateau_middle`); each class's entry gives the distance from its threshold to the
    nearest validation positive and negative (``margin_positive``, ``margin_negative``).
    """
    candidates = grid(cfg)
    result: dict[str, Any] = {
        "strategy": cfg.strategy,
        "grid": [cfg.grid_min, cfg.grid_max, cfg.grid_step],
        "min_precision": cfg.min_precision,
        "fallback": cfg.fallback,
        "num_images": int(len(labels)),
        "classes": {},
        "warnings": [],
    }
    ranked = SortedScores(labels, scores)
    per_class = [ranked.counts(c, candidates) for c in range(len(classes))]
    global_t = None
    supports = np.asarray(labels).astype(bool).sum(axis=0)
    if cfg.strategy == "global" and supports.any():
        # pooled over the classes with validation positives: the others get the fallback anyway
        pooled = [counts for c, counts in enumerate(per_class) if supports[c] > 0]
        tp, fp, fn = (np.sum([counts[k] for counts in pooled], axis=0) for k in range(3))
        _, _, f1 = prf(tp, fp, fn)
        global_t = float(candidates[_pick(f1, candidates)])
    for c, name in enumerate(classes):
        support = int(supports[c])
        tp, fp, fn = per_class[c]
        precision, recall, f1 = prf(tp, fp, fn)
        note = None
        if support == 0:
            threshold = cfg.fallback
            note = f"no validation positive: fallback threshold {cfg.fallback} (thresholds.fallback)"
        elif global_t is not None:
            threshold = global_t
        elif cfg.strategy == "precision":
            ok = precision >= cfg.min_precision
            if ok.any():
                # the highest recall; among equal recall, the highest precision
                best = _best(precision, among=_best(recall, among=ok) & ok)
                threshold = float(candidates[_plateau_middle(best, candidates)])
            else:
                threshold = float(candidates[_pick(f1, candidates)])
                note = f"no threshold reaches precision {cfg.min_precision} on validation; using the best-F1 threshold"
        else:
            threshold = float(candidates[_pick(f1, candidates)])
        a, b, d = ranked.counts(c, np.array([threshold]))
        p, r, f = prf(a, b, d)
        entry: dict[str, Any] = {
            "threshold": round(threshold, 6),
            "precision": round(float(p[0]), 4),
            "recall": round(float(r[0]), 4),
            "f1": round(float(f[0]), 4),
            "support": support,
            **margins(labels[:, c], scores[:, c], threshold),
        }
        if note:
            entry["note"] = note
            result["warnings"].append(f"{name}: {note}")
            log.warning("class %s: %s", name, note)
        result["classes"][name] = entry
    return result

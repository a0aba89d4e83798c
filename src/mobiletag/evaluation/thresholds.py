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


def counts_at(y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """tp, fp, fn for one class at every threshold (predicted positive: score >= threshold)."""
    predicted = scores[None, :] >= thresholds[:, None]
    positive = y[None, :].astype(bool)
    tp = np.sum(predicted & positive, axis=1)
    fp = np.sum(predicted & ~positive, axis=1)
    fn = np.sum(~predicted & positive, axis=1)
    return tp, fp, fn


def prf(tp: Any, fp: Any, fn: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 (0 where undefined), elementwise."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return precision, recall, f1


def _pick(values: np.ndarray, thresholds: np.ndarray) -> int:
    """Index of the best value; among ties, the threshold closest to 0.5 (the most robust)."""
    best = np.flatnonzero(values >= values.max() - 1e-12)
    return int(best[np.argmin(np.abs(thresholds[best] - 0.5))])


def optimize_thresholds(
    labels: np.ndarray, scores: np.ndarray, classes: list[str], cfg: ThresholdsConfig
) -> dict[str, Any]:
    """The threshold per class and the validation figures behind it."""
    candidates = grid(cfg)
    result: dict[str, Any] = {
        "strategy": cfg.strategy,
        "grid": [cfg.grid_min, cfg.grid_max, cfg.grid_step],
        "num_images": int(len(labels)),
        "classes": {},
        "warnings": [],
    }
    global_t = None
    if cfg.strategy == "global":
        tp: Any = 0
        fp: Any = 0
        fn: Any = 0
        for c in range(len(classes)):
            a, b, d = counts_at(labels[:, c], scores[:, c], candidates)
            tp, fp, fn = tp + a, fp + b, fn + d
        _, _, f1 = prf(tp, fp, fn)
        global_t = float(candidates[_pick(f1, candidates)])
    for c, name in enumerate(classes):
        y, s = labels[:, c], scores[:, c]
        support = int(y.sum())
        tp, fp, fn = counts_at(y, s, candidates)
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
                masked = np.where(ok, recall, -1.0)
                threshold = float(candidates[_pick(masked, candidates)])
            else:
                threshold = float(candidates[_pick(f1, candidates)])
                note = f"no threshold reaches precision {cfg.min_precision} on validation; using the best-F1 threshold"
        else:
            threshold = float(candidates[_pick(f1, candidates)])
        a, b, d = counts_at(y, s, np.array([threshold]))
        p, r, f = prf(a, b, d)
        entry: dict[str, Any] = {
            "threshold": round(threshold, 6),
            "precision": round(float(p[0]), 4),
            "recall": round(float(r[0]), 4),
            "f1": round(float(f[0]), 4),
            "support": support,
        }
        if note:
            entry["note"] = note
            result["warnings"].append(f"{name}: {note}")
            log.warning("class %s: %s", name, note)
        result["classes"][name] = entry
    return result

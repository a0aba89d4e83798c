"""Test-set metrics of a multi-label classifier: ranking (AP) and decision (thresholded) figures."""

from __future__ import annotations

from typing import Any

import numpy as np

from mobiletag.evaluation.thresholds import prf
from mobiletag.training.metrics import mean_average_precision, micro_average_precision, per_class_ap


def _r(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 4)


def ranking_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    return {
        "map_macro": _r(mean_average_precision(labels, scores)),
        "map_micro": _r(micro_average_precision(labels, scores)),
    }


def classification_metrics(
    labels: np.ndarray, scores: np.ndarray, classes: list[str], thresholds: dict[str, float]
) -> dict[str, Any]:
    t = np.array([thresholds[c] for c in classes])
    y = labels.astype(bool)
    predicted = scores >= t[None, :]
    tp = np.sum(predicted & y, axis=0)
    fp = np.sum(predicted & ~y, axis=0)
    fn = np.sum(~predicted & y, axis=0)
    precision, recall, f1 = prf(tp, fp, fn)
    p_micro, r_micro, f1_micro = prf(tp.sum(), fp.sum(), fn.sum())
    aps = per_class_ap(labels, scores)
    has_positive = y.sum(axis=0) > 0
    per_class = {
        name: {
            "ap": _r(aps[c]),
            "precision": round(float(precision[c]), 4),
            "recall": round(float(recall[c]), 4),
            "f1": round(float(f1[c]), 4),
            "threshold": float(t[c]),
            "support": int(y[:, c].sum()),
        }
        for c, name in enumerate(classes)
    }
    return {
        **ranking_metrics(labels, scores),
        # macro F1 over the classes with test positives (as macro mAP, which is undefined for the
        # others), and over every class as scikit-learn's f1_score(average="macro",
        # zero_division=0) gives it: a class with no positives scores 0 there, false alarms or not
        "f1_macro": round(float(f1[has_positive].mean()) if has_positive.any() else 0.0, 4),
        "f1_macro_all_classes": round(float(f1.mean()) if len(classes) else 0.0, 4),
        "no_test_positives": {
            name: {"false_positives": int(fp[c])} for c, name in enumerate(classes) if not has_positive[c]
        },
        "f1_micro": round(float(f1_micro), 4),
        "precision_micro": round(float(p_micro), 4),
        "recall_micro": round(float(r_micro), 4),
        "exact_match": round(float(np.mean(np.all(predicted == y, axis=1))), 4),
        "hamming_loss": round(float(np.mean(predicted != y)), 4),
        "num_images": int(len(labels)),
        "per_class": per_class,
    }


def markdown_report(metrics: dict[str, Any]) -> str:
    test = metrics["test"]
    lines = [
        f"# mobiletag evaluation: {metrics['model']}",
        "",
        f"Test images: {test['num_images']}. macro mAP **{test['map_macro']}**, micro mAP {test['map_micro']}, "
        f"micro F1 {test['f1_micro']}, macro F1 {test['f1_macro']} (classes with test positives; "
        f"{test.get('f1_macro_all_classes')} over all classes), exact match {test['exact_match']}, "
        f"Hamming loss {test['hamming_loss']}.",
        "",
        "| class | AP | precision | recall | F1 | threshold | support |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in test["per_class"].items():
        lines.append(
            f"| {name} | {m['ap']} | {m['precision']} | {m['recall']} | {m['f1']} | {m['threshold']} | {m['support']} |"
        )
    missing = test.get("no_test_positives") or {}
    if missing:
        lines += [
            "",
            "Classes with no test positives (left out of macro mAP and macro F1): "
            + ", ".join(f"{name} ({m['false_positives']} false positives)" for name, m in missing.items())
            + ".",
        ]
    compare = metrics.get("compare", {})
    if compare:
        lines += ["", "| model | macro mAP | micro mAP |", "|---|---|---|"]
        for name, m in compare.items():
            lines.append(f"| {name} | {m.get('map_macro')} | {m.get('map_micro')} |")
    lines += [
        "",
        f"Model size: {metrics.get('size_bytes')} bytes; CPU latency per image (LiteRT, XNNPACK): "
        + ", ".join(f"{k.replace('threads_', '')} thread(s) {v} ms" for k, v in metrics.get("latency_ms", {}).items()),
    ]
    return "\n".join(lines) + "\n"

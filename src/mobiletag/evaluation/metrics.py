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


# the done-when of the app path: the documented path's test macro mAP within this of the antialiased resize's
APP_PATH_GOAL = 0.01


def app_path_block(labels: np.ndarray, documented: np.ndarray, antialiased: np.ndarray, size: int) -> dict[str, Any]:
    """metrics.json's "app_path": the INT8 model's test macro mAP through the app's documented
    input path (``documented``: its scores, as in "test") and fed by an antialiased resize of the
    same decoded images straight to its ``size`` x ``size`` input (``antialiased``), on the same
    images (evaluate's comparison images), and the gap, antialiased minus documented: what the
    app path costs (negative: it gains)."""
    ours, reference = ranking_metrics(labels, documented), ranking_metrics(labels, antialiased)
    gap = (
        None
        if ours["map_macro"] is None or reference["map_macro"] is None
        else round(reference["map_macro"] - ours["map_macro"], 4)
    )
    return {
        "metric": "test macro mAP of the INT8 model",
        "documented": ours["map_macro"],
        "antialiased": reference["map_macro"],
        "gap": gap,
        "goal": f"gap <= {APP_PATH_GOAL}",
        "met": None if gap is None else gap <= APP_PATH_GOAL,
        "documented_micro": ours["map_micro"],
        "antialiased_micro": reference["map_micro"],
        "num_images": int(len(labels)),
        "documented_path": (
            "inference_config.json's input: decode, EXIF orientation, RGB, the app's pre-scale (the mean of "
            f"kx x ky blocks, kx = W // {size}, ky = H // {size}), MediaPipe Tasks' bilinear (no antialiasing)"
        ),
        "antialiased_path": (
            f"decode, EXIF orientation, RGB, PIL's Image.resize to {size}x{size} with Resampling.BILINEAR "
            "(a triangle filter widened by the scale factor: antialiased)"
        ),
    }


def app_path_line(block: dict[str, Any]) -> str:
    """One line for report.md: the app path's figure beside the antialiased resize's."""
    return (
        f"App input path ({block['num_images']} test images): macro mAP {block['documented']} through the documented "
        f"path (pre-scale, then MediaPipe's resize), {block['antialiased']} fed by an antialiased resize straight to "
        f"the input size; gap {block['gap']} ({block['goal']}).\n"
    )


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

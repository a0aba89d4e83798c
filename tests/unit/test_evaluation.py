"""Metrics against scikit-learn, thresholds on hand-made scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, hamming_loss, precision_score, recall_score

from mobiletag.config import ThresholdsConfig
from mobiletag.evaluation.metrics import classification_metrics
from mobiletag.evaluation.thresholds import optimize_thresholds
from mobiletag.training.metrics import average_precision, mean_average_precision, micro_average_precision


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=(200, 5)) > 0.7).astype(int)
    scores = np.round(rng.uniform(size=(200, 5)) * 0.5 + y * 0.3, 2)  # rounded: many ties, like INT8 outputs
    for c in range(5):
        assert average_precision(y[:, c], scores[:, c]) == pytest.approx(average_precision_score(y[:, c], scores[:, c]))
    assert mean_average_precision(y, scores) == pytest.approx(average_precision_score(y, scores, average="macro"))
    assert micro_average_precision(y, scores) == pytest.approx(average_precision_score(y, scores, average="micro"))


def test_class_without_positive_is_left_out_of_map():
    y = np.array([[1, 0], [0, 0], [1, 0]])
    s = np.array([[0.9, 0.2], [0.1, 0.3], [0.8, 0.1]])
    assert np.isnan(average_precision(y[:, 1], s[:, 1]))
    assert mean_average_precision(y, s) == pytest.approx(1.0)


def test_classification_metrics_match_sklearn():
    rng = np.random.default_rng(5)
    y = (rng.uniform(size=(150, 4)) > 0.6).astype(int)
    scores = np.clip(rng.uniform(size=(150, 4)) * 0.6 + y * 0.35, 0, 1)
    classes = ["a", "b", "c", "d"]
    thresholds = {"a": 0.5, "b": 0.4, "c": 0.6, "d": 0.55}
    m = classification_metrics(y, scores, classes, thresholds)
    pred = (scores >= np.array([0.5, 0.4, 0.6, 0.55])).astype(int)
    assert m["f1_micro"] == pytest.approx(f1_score(y, pred, average="micro"), abs=1e-4)
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-4)
    assert m["precision_micro"] == pytest.approx(precision_score(y, pred, average="micro"), abs=1e-4)
    assert m["recall_micro"] == pytest.approx(recall_score(y, pred, average="micro"), abs=1e-4)
    assert m["hamming_loss"] == pytest.approx(hamming_loss(y, pred), abs=1e-4)
    assert m["exact_match"] == pytest.approx(np.mean(np.all(pred == y, axis=1)), abs=1e-4)
    assert m["map_macro"] == pytest.approx(average_precision_score(y, scores, average="macro"), abs=1e-4)
    for c, name in enumerate(classes):
        assert m["per_class"][name]["f1"] == pytest.approx(f1_score(y[:, c], pred[:, c]), abs=1e-4)
        assert m["per_class"][name]["support"] == y[:, c].sum()


def test_best_f1_threshold_is_found():
    # class 0: positives score 0.6-0.7, negatives 0.1-0.45 -> any threshold in (0.45, 0.6] is perfect
    # class 1: one negative at 0.8 above the positives at 0.3-0.4 -> best F1 (recall 1, precision 2/3)
    # at every threshold in (0.1, 0.3]: 0.15 ... 0.3, whose middle nearer 0.5 is 0.25
    labels = np.array([[1, 1], [1, 1], [0, 0], [0, 0], [0, 0]])
    scores = np.array([[0.6, 0.3], [0.7, 0.4], [0.1, 0.8], [0.45, 0.05], [0.2, 0.1]])
    cfg = ThresholdsConfig(grid_min=0.05, grid_max=0.95, grid_step=0.05)
    result = optimize_thresholds(labels, scores, ["a", "b"], cfg)
    a, b = result["classes"]["a"], result["classes"]["b"]
    assert a["f1"] == 1.0 and 0.45 < a["threshold"] <= 0.6
    assert a["threshold"] == pytest.approx(0.55)  # the middle of the equal-F1 run 0.5, 0.55, 0.6
    assert b["threshold"] == pytest.approx(0.25) and b["f1"] == pytest.approx(0.8) and b["support"] == 2


def test_precision_strategy_and_global_and_fallback():
    labels = np.array([[1, 0], [1, 0], [1, 0], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.6, 0.2], [0.3, 0.3], [0.5, 0.4]])
    cfg = ThresholdsConfig(strategy="precision", min_precision=1.0, grid_min=0.05, grid_max=0.95, grid_step=0.05)
    result = optimize_thresholds(labels, scores, ["a", "b"], cfg)
    assert result["classes"]["a"]["precision"] == 1.0
    assert result["classes"]["a"]["threshold"] == pytest.approx(0.55)  # highest recall at precision 1
    assert result["classes"]["b"]["threshold"] == 0.5 and result["classes"]["b"]["support"] == 0
    assert "no validation positive" in result["classes"]["b"]["note"] and result["warnings"]
    two = np.array([[1, 1], [0, 1], [1, 0], [0, 0]])
    s2 = np.array([[0.8, 0.7], [0.2, 0.6], [0.7, 0.1], [0.3, 0.35]])
    glob = optimize_thresholds(two, s2, ["a", "b"], ThresholdsConfig(strategy="global", grid_step=0.05))
    assert glob["strategy"] == "global"
    ta, tb = glob["classes"]["a"]["threshold"], glob["classes"]["b"]["threshold"]
    assert ta == tb and 0.35 < ta <= 0.6 and glob["classes"]["a"]["f1"] == 1.0 == glob["classes"]["b"]["f1"]


def test_threshold_sits_in_the_middle_of_the_best_f1_plateau():
    # negatives up to 0.598, positives from 0.906. Every grid
    # threshold from 0.60 to 0.90 gives F1 1; 0.60 is one INT8 output level above a negative
    labels = np.array([[1], [1], [1], [0], [0], [0]])
    scores = np.array([[0.906], [0.95], [0.99], [0.598], [0.3], [0.1]])
    result = optimize_thresholds(labels, scores, ["a"], ThresholdsConfig())
    a = result["classes"]["a"]
    assert a["f1"] == 1.0
    assert a["threshold"] == pytest.approx(0.75)  # (0.60 + 0.90) / 2
    assert a["margin_negative"] == pytest.approx(0.75 - 0.598, abs=1e-4)
    assert a["margin_positive"] == pytest.approx(0.906 - 0.75, abs=1e-4)


def test_precision_strategy_breaks_recall_ties_by_precision():
    # recall 2/3 is the best reachable at precision >= 0.6, both at (0.2, 0.6] (precision 2/3)
    # and at (0.6, 0.85] (precision 1): the tie goes to precision 1
    labels = np.array([[1], [1], [1], [0], [0], [0]])
    scores = np.array([[0.9], [0.85], [0.05], [0.6], [0.2], [0.1]])
    cfg = ThresholdsConfig(strategy="precision", min_precision=0.6)
    a = optimize_thresholds(labels, scores, ["a"], cfg)["classes"]["a"]
    assert (a["precision"], a["recall"]) == (1.0, pytest.approx(0.6667, abs=1e-4))
    assert a["threshold"] == pytest.approx(0.73)  # the middle of 0.61 ... 0.85


def test_global_strategy_pools_only_classes_with_validation_positives():
    # b has no validation positive (it gets the fallback): its negative at 0.25 must not push
    # a's shared threshold above 0.25; without b, every threshold in (0.1, 0.3] is perfect for a
    labels = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    scores = np.array([[0.3, 0.25], [0.35, 0.05], [0.1, 0.05], [0.05, 0.05]])
    cfg = ThresholdsConfig(strategy="global", grid_min=0.05, grid_max=0.95, grid_step=0.05)
    result = optimize_thresholds(labels, scores, ["a", "b"], cfg)
    assert result["classes"]["a"]["threshold"] == pytest.approx(0.25)  # middle of 0.15 ... 0.3, nearer 0.5
    assert result["classes"]["b"]["threshold"] == cfg.fallback


def test_macro_f1_both_ways_and_classes_without_test_positives():
    # b has no test positive and two false alarms: our macro F1 leaves it out (as macro mAP
    # does), scikit-learn's (zero_division=0) counts it as 0; both are reported, with b's alarms
    y = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    scores = np.array([[0.9, 0.8], [0.8, 0.1], [0.1, 0.7], [0.2, 0.1]])
    m = classification_metrics(y, scores, ["a", "b"], {"a": 0.5, "b": 0.5})
    pred = (scores >= 0.5).astype(int)
    assert m["f1_macro"] == 1.0
    assert m["f1_macro_all_classes"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0)) == 0.5
    assert m["no_test_positives"] == {"b": {"false_positives": 2}}

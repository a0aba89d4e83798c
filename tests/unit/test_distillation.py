"""The distillation block (both students, bootstrap difference) and the choice of the student that ships."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mobiletag.config import Config, StudentConfig, ThresholdsConfig
from mobiletag.evaluation.distillation import (
    bootstrap_map_difference,
    bootstrap_weights,
    distillation_block,
    markdown_section,
    weighted_average_precision,
)
from mobiletag.evaluation.metrics import classification_metrics
from mobiletag.evaluation.thresholds import optimize_thresholds
from mobiletag.training.metrics import average_precision, mean_average_precision

CLASSES = ["a", "b", "c", "d"]


def _data(seed: int, n: int, strength: float, num_classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, num_classes)) < 0.3).astype(int)
    scores = np.clip(strength * labels + rng.normal(0.3, 0.25, labels.shape), 0, 1)
    return labels, np.round(scores, 2)  # rounded: many tied scores, as INT8 outputs have


# === Bootstrap ===


def test_weighted_ap_equals_ap_on_the_resampled_images():
    labels, scores = _data(1, 60, 0.4)
    draws = np.random.default_rng(5).integers(0, 60, size=(20, 60))
    weights = np.stack([np.bincount(row, minlength=60) for row in draws])
    got = weighted_average_precision(labels[:, 0], scores[:, 0], weights)
    for r, row in enumerate(draws):
        expected = average_precision(labels[row, 0], scores[row, 0])
        assert got[r] == pytest.approx(expected, abs=1e-12)


def test_weighted_ap_is_nan_without_a_positive():
    y = np.array([0, 1, 0, 0])
    got = weighted_average_precision(y, np.array([0.9, 0.8, 0.2, 0.1]), np.array([[1, 0, 2, 1], [1, 1, 1, 1]]))
    assert np.isnan(got[0]) and got[1] == pytest.approx(0.5)


def test_bootstrap_difference_matches_a_direct_computation():
    """The same draws, one resample at a time through mean_average_precision (ranking_metrics' mAP)."""
    labels, distilled = _data(2, 40, 0.5)
    _, baseline = _data(3, 40, 0.3)
    boot = bootstrap_map_difference(labels, distilled, baseline, resamples=200, seed=11)
    draws = np.random.default_rng(11).integers(0, 40, size=(200, 40))
    direct = np.array(
        [
            mean_average_precision(labels[i], distilled[i]) - mean_average_precision(labels[i], baseline[i])
            for i in draws
        ]
    )
    np.testing.assert_allclose(boot["samples"], direct, atol=1e-12)
    assert boot["value"] == pytest.approx(
        mean_average_precision(labels, distilled) - mean_average_precision(labels, baseline), abs=1e-12
    )
    assert boot["ci"] == pytest.approx(list(np.percentile(direct, [2.5, 97.5])), abs=1e-12)
    assert boot["ci"][0] <= boot["value"] <= boot["ci"][1]
    assert boot["resamples_used"] == 200


def test_a_class_missing_from_a_resample_is_left_out_of_both_averages():
    """One positive of class 1 in 12 images: many resamples miss it, and their mAP is over class 0 only."""
    labels = np.zeros((12, 2), dtype=int)
    labels[:6, 0] = 1
    labels[0, 1] = 1
    rng = np.random.default_rng(0)
    a, b = rng.random((12, 2)), rng.random((12, 2))
    boot = bootstrap_map_difference(labels, a, b, resamples=300, seed=4)
    draws = np.random.default_rng(4).integers(0, 12, size=(300, 12))
    assert any(0 not in row for row in draws)  # some resamples lack the one positive of class 1
    direct = np.array(
        [mean_average_precision(labels[i], a[i]) - mean_average_precision(labels[i], b[i]) for i in draws]
    )
    assert np.isnan(direct).sum() == 300 - boot["resamples_used"] == 1  # one resample has no positive at all: dropped
    np.testing.assert_allclose(boot["samples"], direct[~np.isnan(direct)], atol=1e-12)


def test_bootstrap_is_reproducible_with_its_seed():
    labels, distilled = _data(4, 50, 0.5)
    _, baseline = _data(6, 50, 0.2)
    first = bootstrap_map_difference(labels, distilled, baseline, resamples=300, seed=3)
    again = bootstrap_map_difference(labels, distilled, baseline, resamples=300, seed=3)
    other = bootstrap_map_difference(labels, distilled, baseline, resamples=300, seed=4)
    assert first["ci"] == again["ci"] and first["ci"] != other["ci"]
    assert bootstrap_weights(5, 3, 1).sum(axis=1).tolist() == [5, 5, 5]


def test_hand_made_case():
    """4 images, 1 class. Distilled ranks both positives first (AP 1); baseline ranks a negative
    first: precision 1/2 at recall 1/2, 2/3 at recall 1, AP = 0.5*0.5 + 0.5*2/3 = 7/12."""
    labels = np.array([[1], [1], [0], [0]])
    distilled = np.array([[0.9], [0.8], [0.3], [0.1]])
    baseline = np.array([[0.6], [0.4], [0.7], [0.1]])
    boot = bootstrap_map_difference(labels, distilled, baseline, resamples=500, seed=0)
    assert boot["value"] == pytest.approx(1 - 7 / 12)
    assert boot["ci"][1] <= 1 and boot["ci"][0] >= 0  # the distilled AP is 1 on every resample with a positive
    assert boot["resamples_used"] == 500 - sum(
        not ({0, 1} & set(row)) for row in np.random.default_rng(0).integers(0, 4, (500, 4))
    )


# === The block ===


def test_block_figures_against_a_direct_computation():
    val_labels, val_d = _data(7, 80, 0.5)
    _, val_b = _data(8, 80, 0.3)
    test_labels, test_d = _data(9, 70, 0.5)
    _, test_b = _data(10, 70, 0.3)
    selection = {"shipped": "distilled", "reason": "better", "val_map": {"distilled": 0.9, "baseline": 0.8}}

    def block_of(distilled, baseline, **options):
        return distillation_block(
            classes=CLASSES,
            val_labels=val_labels,
            test_labels=test_labels,
            distilled=distilled,
            baseline=baseline,
            selection=selection,
            **options,
        )

    block = block_of((val_d, test_d), (val_b, test_b), resamples=200, seed=1)
    assert block["shipped"] == "distilled" and block["reason"] == "better"
    assert block["selection_val_map"] == {"distilled": 0.9, "baseline": 0.8}
    for name, (val, test) in {"distilled": (val_d, test_d), "baseline": (val_b, test_b)}.items():
        tuned = optimize_thresholds(val_labels, val, CLASSES, ThresholdsConfig())
        t = {c: e["threshold"] for c, e in tuned["classes"].items()}
        for split, labels, scores in (("val", val_labels, val), ("test", test_labels, test)):
            expected = classification_metrics(labels, scores, CLASSES, t)
            got = block["students"][name][split]
            assert got == {k: expected[k] for k in ("map_macro", "map_micro", "f1_macro", "f1_micro", "num_images")}
    diff = block["test_difference"]
    expected_value = mean_average_precision(test_labels, test_d) - mean_average_precision(test_labels, test_b)
    assert diff["value"] == round(expected_value, 4) and diff["value"] > 0
    assert diff["ci"][0] <= diff["value"] <= diff["ci"][1] and diff["confidence"] == 0.95
    assert diff["definition"].startswith("distilled - baseline")
    assert diff["ci"][0] > 0 and diff["verdict"] == "distilled better on test"  # a clear gap: 0.5 vs 0.3 signal
    assert diff["covers"].startswith("the sampling of test images") and "bench-quality" in diff["covers"]
    swapped = block_of((val_b, test_b), (val_d, test_d), resamples=200, seed=1)["test_difference"]
    assert swapped["value"] == -diff["value"] and swapped["verdict"] == "baseline better on test"
    same = block_of((val_d, test_d), (val_d, test_d), resamples=50)["test_difference"]
    assert same["value"] == 0 and same["ci"] == [0, 0] and same["verdict"].startswith("no clear difference")
    json.dumps(block)  # metrics.json
    section = markdown_section(block)
    assert "Shipped: **distilled**" in section and f"{diff['value']}" in section


def test_block_without_a_baseline():
    labels, scores = _data(7, 30, 0.5)
    selection = {"shipped": "distilled", "reason": "no baseline", "val_map": {"distilled": 0.9, "baseline": None}}
    block = distillation_block(
        classes=CLASSES,
        val_labels=labels,
        test_labels=labels,
        distilled=(scores, scores),
        baseline=None,
        selection=selection,
    )
    assert block["students"]["baseline"] is None and block["test_difference"] is None
    assert block["students"]["distilled"]["test"]["map_macro"] == round(mean_average_precision(labels, scores), 4)
    assert "No baseline student" in markdown_section(block)


# === select_student ===


def _student(folder: Path, val_map: float, alpha: float, content: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "student_best.h5").write_bytes(content)
    (folder / "student_metrics.json").write_text(json.dumps({"metrics": {"val_map": val_map}, "alpha": alpha}))
    return folder


def _margin(margin: float = 0.0) -> Config:
    return Config(student=StudentConfig(selection_margin=margin))


@pytest.mark.parametrize(
    ("distilled_map", "baseline_map", "margin", "shipped"),
    [
        (0.80, 0.85, 0.0, "baseline"),
        (0.85, 0.80, 0.0, "distilled"),
        (0.80, 0.80, 0.0, "distilled"),
        (0.80, 0.82, 0.03, "distilled"),
        (0.80, 0.85, 0.03, "baseline"),
    ],
    ids=["baseline-better", "distilled-better", "tie", "within-margin", "beyond-margin"],
)
def test_select_student_ships_the_better_validation_map(tmp_path, distilled_map, baseline_map, margin, shipped):
    from mobiletag.stages import select_student

    distilled = _student(tmp_path / "d", distilled_map, 0.7, b"distilled")
    baseline = _student(tmp_path / "b", baseline_map, 1.0, b"baseline")
    # the test split is nowhere in its inputs: a test figure cannot change the choice
    result = select_student.run(_margin(margin), distilled, baseline, tmp_path / "out")
    assert (tmp_path / "out" / "student_best.h5").read_bytes() == shipped.encode()
    selection = json.loads((tmp_path / "out" / "selection.json").read_text())
    assert selection["shipped"] == shipped and result.details["shipped"] == shipped
    assert selection["val_map"] == {"distilled": distilled_map, "baseline": baseline_map}
    assert selection["alpha"] == (1.0 if shipped == "baseline" else 0.7)
    assert json.loads((tmp_path / "out" / "student_metrics.json").read_text())["alpha"] == selection["alpha"]
    assert result.metrics["baseline_shipped"] == (1.0 if shipped == "baseline" else 0.0)
    assert f"{distilled_map:.4f}" in selection["reason"] and f"{baseline_map:.4f}" in selection["reason"]
    assert selection["margin"] == margin
    if distilled_map == baseline_map:
        assert selection["reason"].startswith("tie")
    if 0 < baseline_map - distilled_map <= margin:
        assert "within the margin 0.03 (student.selection_margin)" in selection["reason"]


def test_select_student_without_a_baseline(tmp_path):
    from mobiletag.stages import select_student, train_student_baseline

    distilled = _student(tmp_path / "d", 0.8, 0.7, b"distilled")
    skipped = tmp_path / "b"
    result = train_student_baseline.run(None, "", skipped, enabled=False)  # type: ignore[arg-type]
    assert result.details == {"trained": False}
    select_student.run(_margin(), distilled, skipped, tmp_path / "out")
    selection = json.loads((tmp_path / "out" / "selection.json").read_text())
    assert selection["shipped"] == "distilled" and selection["val_map"]["baseline"] is None
    assert "baseline_student is false" in selection["reason"]


def test_select_student_explains_a_wrong_folder(tmp_path):
    from mobiletag.errors import ConfigError
    from mobiletag.stages import select_student

    distilled = _student(tmp_path / "d", 0.8, 0.7, b"distilled")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"neither student_best.h5 nor baseline_skipped.json"):
        select_student.run(_margin(), distilled, tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ConfigError, match=r"student_metrics.json: missing; the distilled student's folder"):
        select_student.run(_margin(), tmp_path / "empty", None, tmp_path / "out")


def test_baseline_config_and_resources(tiny_config):
    from mobiletag.stages import train_student_baseline

    config = train_student_baseline.baseline_config(tiny_config)
    assert config.student.alpha == 1.0 and tiny_config.student.alpha == 0.7
    assert config.student.temperature == tiny_config.student.temperature and config.teacher == tiny_config.teacher
    selector = {"cloud.google.com/gke-nodepool": "gpu-pool"}
    assert train_student_baseline.baseline_resources(True, 4, selector, "14", "48Gi") == {
        "gpu_limit": "4",
        "node_selector": selector,
        "cpu": "14",
        "memory": "48Gi",
    }
    assert train_student_baseline.baseline_resources(False, 4, selector, "14", "48Gi") == {
        "gpu_limit": "0",
        "node_selector": {},
        "cpu": "1",
        "memory": "1Gi",
    }

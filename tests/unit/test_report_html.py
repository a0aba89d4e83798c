"""report.html from made-up arrays: what it says when input is missing, the gallery's choice,
thumbnails. (The report of a real run: tests/components/test_components.py.)"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from mobiletag.evaluation.report_html import ReportData, build_report, read_training, thumbnail, worst_errors

from ..report_checks import kinds, parse_report

CLASSES = ["a", "b", "c"]


def _jpeg(width: int, height: int, orientation: int | None = None) -> bytes:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif.tobytes())
    return out.getvalue()


def _metrics() -> dict:
    per_class = {c: {"ap": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5, "threshold": 0.5} for c in CLASSES}
    return {
        "model": "model_qat_int8.tflite",
        "classes": CLASSES,
        "test": {"map_macro": 0.61, "map_micro": 0.7, "f1_macro": 0.5, "f1_micro": 0.55, "num_images": 8},
        "compare": {"teacher": {"map_macro": 0.7, "map_micro": 0.8}, "student_int8": {"map_macro": 0.61}},
        "size_bytes": 123,
        "latency_ms": {"threads_1": 7.0, "threads_2": 4.0},
        "per_class": per_class,
    }


def test_worst_errors_are_the_highest_negatives_and_lowest_positives():
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    scores = np.array([0.9, 0.2, 0.6, 0.6, 0.95, 0.1, 0.4, 0.45, 0.05, 0.7, 0.4])
    fp, fn = worst_errors(labels, scores, threshold=0.5, count=2)
    assert fp == [4, 0]  # 0.95, 0.9 (not 2, 3 at 0.6)
    fp, fn = worst_errors(labels, scores, threshold=0.5, count=4)
    assert fp == [4, 0, 2, 3] and fn == [8, 5, 6, 10]  # ties: the earlier row first


def test_thumbnail_is_a_small_upright_jpeg():
    uri = thumbnail(_jpeg(300, 100, orientation=6))  # stored landscape, shown rotated 90 degrees
    assert uri.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
        assert image.format == "JPEG" and image.size == (37, 112)


def test_missing_input_is_said_in_place_and_never_fails():
    """No test positive of "b", no distillation or MediaPipe block, no validation scores, no QAT
    history, one original that cannot be read: the report says each where it belongs."""
    labels = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 0], [0, 0, 0], [1, 0, 1], [0, 0, 0], [1, 0, 0], [0, 0, 1]])
    scores = np.array(
        [[0.9, 0.6, 0.8], [0.7, 0.1, 0.3], [0.2, 0.2, 0.6], [0.1, 0.7, 0.2],
         [0.8, 0.3, 0.9], [0.6, 0.2, 0.1], [0.3, 0.1, 0.4], [0.2, 0.9, 0.7]],
        dtype=np.float32,
    )  # fmt: skip
    picture = _jpeg(64, 48)

    def read_original(row: int) -> bytes:
        if row == 3:
            return b"not an image"
        return picture

    html = build_report(
        ReportData(
            metrics=_metrics(),
            classes=CLASSES,
            thresholds={"a": 0.5, "b": 0.5, "c": 0.5},
            test_scores=scores,
            test_labels=labels,
            test_paths=[f"img_{i}.jpg" for i in range(8)],
            val_missing="optimize_thresholds saved no val_scores.npy in /x",
            training={
                "teacher": [("head", {"loss": [1.0, 0.5], "val_map": [0.2, 0.4]}), ("fine-tune", {"loss": [0.4]})],
                "QAT": read_training(None, "qat_metrics.json", {"QAT": "history"}, "QAT"),
            },
            read_original=read_original,
        )
    )
    page = parse_report(html)
    assert kinds(page, "pr-curve") == ["a", "c"] and page.missing_pr == ["b"]
    assert kinds(page, "histogram") == CLASSES
    assert kinds(page, "training") == [""] and "QAT: not given to the evaluate step" in page.notes
    assert page.notes[:3] == [
        "Shipped student: the one student of this run (no distillation block: no selection between two).",
        "MediaPipe: no MediaPipe block in metrics.json (the model evaluated has no MediaPipe results).",
        "Validation scores: optimize_thresholds saved no val_scores.npy in /x; the histograms show test only.",
    ]
    assert "Distilled vs baseline: no distillation block (this run had no student selection)." in page.notes
    assert "no positive test image" in page.notes  # class b's false negatives
    # a: FP rows 1, 5 (0.7, 0.6), FN 2, 6 (0.2, 0.3); b: FP 7, 3, 0 (0.9, 0.7, 0.6); c: FP 2, FN 1
    got = [(e["data-kind"], e["data-class"], e["data-row"]) for e in page.errors]
    assert got == [
        ("fp", "a", "1"), ("fp", "a", "5"), ("fn", "a", "2"), ("fn", "a", "6"),
        ("fp", "b", "7"), ("fp", "b", "3"), ("fp", "b", "0"),
        ("fp", "c", "2"), ("fn", "c", "1"),
    ]  # fmt: skip
    thumbs = [img["alt"] for img in page.images if img["data-kind"] == "thumb"]
    assert "img_3.jpg" not in thumbs and len(thumbs) == len(got) - 1
    assert html.count("original not readable") == 1
    assert page.keys["test.map_macro"] == "0.61" and page.keys["size_bytes"] == "123"


@pytest.mark.parametrize(
    ("saved", "expected"),
    [
        ({"history": {"phase_a": {"loss": [1, 2]}, "phase_b": {}}}, [("head", {"loss": [1.0, 2.0]})]),
        ({"history": {}}, "teacher: teacher_metrics.json records no epoch"),
    ],
)
def test_read_training(tmp_path, saved, expected):
    import json

    (tmp_path / "teacher_metrics.json").write_text(json.dumps(saved))
    phases = {"head": "history.phase_a", "fine-tune": "history.phase_b"}
    assert read_training(tmp_path, "teacher_metrics.json", phases, "teacher") == expected
    missing = read_training(tmp_path / "none", "teacher_metrics.json", phases, "teacher")
    assert missing == "teacher: no teacher_metrics.json in its folder (not trained in this run)"

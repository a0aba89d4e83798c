"""MediaPipe Tasks: the metadata tool, the interpreter look-up, ImageClassifier on a real INT8 model."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from mobiletag.errors import MobiletagError
from mobiletag.export import mediapipe
from mobiletag.export.litert import TensorSpec

UINT8_OUT = TensorSpec(shape=[1, 4], dtype="uint8", scale=1 / 256, zero_point=0)
LABELS = ["circle", "cross", "ring", "star"]


def test_a_missing_interpreter_says_how_to_get_one(monkeypatch, tmp_path):
    monkeypatch.setattr(mediapipe, "interpreter_candidates", lambda: [tmp_path / "none" / "bin" / "python"])
    with pytest.raises(MobiletagError, match=r"no MediaPipe interpreter .*none/bin/python.*`make install` creates"):
        mediapipe.find_interpreter()
    with pytest.raises(MobiletagError, match="the MediaPipe interpreter /nowhere/python does not exist"):
        mediapipe.find_interpreter("/nowhere/python")


def test_interpreter_candidates_are_the_image_then_beside_the_venv():
    found = mediapipe.interpreter_candidates()
    assert found[0] == mediapipe.IMAGE_INTERPRETER
    from pathlib import Path

    assert found[1] == Path(sys.prefix).parent / ".venv-mediapipe" / "bin" / "python"


def test_the_tool_without_mediapipe_fails_clearly():
    """Run by the TensorFlow interpreter (no mediapipe): exit status 2 and how to fix it, no traceback;
    mobiletag's own mediapipe.py beside the tool must not be imported in its place."""
    done = subprocess.run(
        [sys.executable, "-I", str(mediapipe.TOOL), "read-metadata", "--model", "x.tflite"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "cannot import mediapipe" in done.stderr and "make install" in done.stderr
    assert "Traceback" not in done.stderr


def test_calibration_thresholds_keep_every_decision_and_stay_off_the_output_levels():
    thresholds = [0.42, 0.5, 0.25, 0.02, 0.0, 1.0, 0.999]
    moved = mediapipe.calibration_thresholds(thresholds, UINT8_OUT)
    levels = np.arange(256) / 256
    for t, m in zip(thresholds[:4], moved[:4]):
        assert np.array_equal(levels >= t, levels >= m), t
        assert np.min(np.abs(levels - m)) == pytest.approx(0.5 / 256)  # half a step from every output
    assert moved[4] == pytest.approx(0.5 / 256)  # t = 0: all but an output of exactly 0
    assert moved[5] == moved[6] == pytest.approx(255.5 / 256)  # above the highest output: never
    assert moved[0] == pytest.approx(107.5 / 256) and moved[1] == pytest.approx(127.5 / 256)


def test_raw_probabilities_invert_the_calibration():
    p = np.array([[0.1, 0.42, 0.9, 0.5]], np.float32)
    t = [0.3, 0.42, 0.6, 0.5]
    logit = np.log(p / (1 - p)) - np.log(np.array(t) / (1 - np.array(t)))
    score = 1 / (1 + np.exp(-logit))
    assert np.allclose(mediapipe.raw_probabilities(score, t), p, atol=1e-6)
    assert score[0, 1] == pytest.approx(0.5)  # p at its threshold reads 0.5


# === With mediapipe (the interpreter `make install` creates) ===


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A real full-integer model as export makes it (uint8 in and out, 32 px, 4 classes)."""
    import tf_keras as keras

    from mobiletag.export.tflite import convert_int8

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(LABELS), kernel_initializer=keras.initializers.RandomNormal(stddev=3.0))(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    representative = rng.uniform(0, 255, size=(16, 32, 32, 3)).astype(np.float32)
    folder = tmp_path_factory.mktemp("tiny_tflite")
    (folder / "model_qat_int8.tflite").write_bytes(convert_int8(model, representative))
    (folder / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return folder


def _images(folder, count: int, size: int = 32):
    """Smooth random images at the model's input size (no resize: MediaPipe and LiteRT see the same pixels)."""
    from PIL import Image

    rng = np.random.default_rng(7)
    paths, pixels = [], []
    for i in range(count):
        low = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
        image = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
        path = folder / f"{i:03d}.png"
        image.save(path)
        paths.append(path)
        pixels.append(np.asarray(image, np.float32))
    return paths, np.stack(pixels)


@pytest.mark.slow
def test_metadata_round_trip_and_same_outputs(tiny_model, tmp_path):
    from mobiletag.stages.mediapipe_package import check_same_outputs

    model = tiny_model / "model_qat_int8.tflite"
    out = tmp_path / "model_qat_int8.tflite"
    thresholds = [0.42, 0.5, 0.25, 0.7]
    summary = mediapipe.write_metadata(model, out, LABELS, thresholds, version="9.9", output=UINT8_OUT)
    check_same_outputs(model, out)  # raises unless bit-for-bit

    read = mediapipe.read_metadata(out)
    meta = read["metadata"]
    assert meta["name"] == "mobiletag" and meta["version"] == "9.9"
    assert "circle 0.42" in meta["description"] and "sigmoid(logit(p) - logit(t_c))" in meta["description"]
    assert read["associated_files"]["labels.txt"].splitlines() == LABELS
    calibration = read["associated_files"]["score_calibration.txt"]
    lines = calibration.split("\n")
    assert len(lines) == len(LABELS)  # no trailing newline: MediaPipe would count one sigmoid more
    offsets = [float(line.split(",")[2]) for line in lines]
    expected = [-math.log(t / (1 - t)) for t in summary["calibration_thresholds"]]
    assert offsets == pytest.approx(expected, abs=1e-12)
    output = meta["subgraph_metadata"][0]["output_tensor_metadata"][0]
    units = {u["options_type"]: u["options"] for u in output["process_units"]}
    assert units["ScoreCalibrationOptions"]["score_transformation"] == "INVERSE_LOGISTIC"
    assert units["ScoreThresholdingOptions"]["global_score_threshold"] == 0.5


@pytest.mark.slow
def test_image_classifier_gives_the_threshold_rule_and_our_map(tiny_model, tmp_path):
    from mobiletag.evaluation.metrics import ranking_metrics
    from mobiletag.export.litert import TFLiteModel
    from mobiletag.training.metrics import per_class_ap

    model = tiny_model / "model_qat_int8.tflite"
    paths, pixels = _images(tmp_path, 80)
    ours = TFLiteModel(model).predict(pixels)
    thresholds = [float(np.quantile(ours[:, c], 0.5)) for c in range(len(LABELS))]  # on output levels: the hard case
    out = tmp_path / "with_metadata.tflite"
    summary = mediapipe.write_metadata(model, out, LABELS, thresholds, version="1", output=UINT8_OUT)
    result = mediapipe.classify(out, paths)

    assert result.scores.shape == (80, len(LABELS)) and result.timings["classify_ms_per_image"] > 0
    # the calibration sigmoid(logit(p) - logit(t_c)) is monotone per class and reaches 0.5 at t_c:
    # the same label set on every image, the same ranking (per-class AP) in every class
    rule = ours >= np.array(thresholds)[None, :]
    assert np.array_equal(result.decisions(len(LABELS)).astype(bool), rule)
    recovered = mediapipe.raw_probabilities(result.scores, summary["calibration_thresholds"])
    assert np.max(np.abs(recovered - ours)) < 1e-4
    labels = (ours + np.random.default_rng(3).normal(0, 0.15, ours.shape) > 0.5).astype(np.float32)
    assert labels.sum(axis=0).min() > 0
    ours_ap = per_class_ap(labels, ours)
    np.testing.assert_allclose(per_class_ap(labels, result.scores), ours_ap, rtol=0, atol=1e-6)
    assert ranking_metrics(labels, result.scores)["map_macro"] == ranking_metrics(labels, ours)["map_macro"]


@pytest.mark.slow
def test_image_classifier_with_the_prescale_gets_the_app_path(tiny_model, tmp_path):
    """Images 12x the input through the documented app path: the tool pre-scales each decoded image
    for the 32-px input (app_input.prescale) and MediaPipe resizes the result: our label set on
    every image and our per-class AP, from the INT8 model on app_pixels. Without the pre-scale,
    MediaPipe's resize of the whole image gives the INT8 model on mediapipe_resize's pixels."""
    from PIL import Image

    from mobiletag.export.app_input import app_image, app_pixels, mediapipe_resize
    from mobiletag.export.litert import TFLiteModel
    from mobiletag.training.metrics import per_class_ap

    rng = np.random.default_rng(11)
    paths = []
    for i in range(40):
        smooth = Image.fromarray(rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)).resize((384, 288))
        grain = rng.integers(-60, 61, size=(288, 384, 3))  # what MediaPipe's resize alone aliases
        paths.append(tmp_path / f"{i:02d}.png")
        Image.fromarray(np.clip(np.asarray(smooth, np.int16) + grain, 0, 255).astype(np.uint8)).save(paths[-1])
    model = tiny_model / "model_qat_int8.tflite"
    int8 = TFLiteModel(model)
    config = {"input": {"shape": [1, 32, 32, 3]}}
    ours = int8.predict(np.stack([app_pixels(p.read_bytes(), config) for p in paths]).astype(np.float32))
    plain = int8.predict(
        np.stack([mediapipe_resize(app_image(p.read_bytes()), 32, 32) for p in paths]).astype(np.float32)
    )
    assert np.abs(ours - plain).max() > 0  # the two paths give the model other pixels
    thresholds = [float(np.quantile(ours[:, c], 0.5)) for c in range(len(LABELS))]
    out = tmp_path / "with_metadata.tflite"
    summary = mediapipe.write_metadata(model, out, LABELS, thresholds, version="1", output=UINT8_OUT)
    calibration = summary["calibration_thresholds"]
    labels = (ours + rng.normal(0, 0.02, ours.shape) > np.median(ours, axis=0)).astype(np.float32)
    assert labels.sum(axis=0).min() > 0
    for prescale_to, want in (((32, 32), ours), (None, plain)):
        result = mediapipe.classify(out, paths, prescale_to=prescale_to)
        assert np.array_equal(result.decisions(len(LABELS)).astype(bool), want >= np.array(thresholds)[None, :])
        assert np.max(np.abs(mediapipe.raw_probabilities(result.scores, calibration) - want)) < 1e-4
        np.testing.assert_allclose(per_class_ap(labels, result.scores), per_class_ap(labels, want), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_the_tool_reports_unreadable_images(tiny_model, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(MobiletagError, match=r"cannot decode the image .*bad.jpg"):
        mediapipe.classify(tiny_model / "model_qat_int8.tflite", [bad])


def test_images_to_classify_are_the_test_originals_in_evaluation_order(tfrecord_dir, sample_dir):
    """The original test files (read where they live, byte for byte) and their paths, in record order,
    as evaluate sees them."""
    from mobiletag.data.originals import iter_originals
    from mobiletag.export.inference_config import iter_eval_batches
    from mobiletag.stages.mediapipe_package import images_to_classify

    originals = images_to_classify(tfrecord_dir)
    paths = [p for batch in iter_eval_batches(tfrecord_dir, "test", [8]) for p in batch.paths]
    assert [o.filepath for o in originals] == paths and len(paths) > 0
    stats = json.loads((tfrecord_dir / "stats.json").read_text())
    assert len(originals) == stats["splits"]["test"]["num_images"]
    read = list(iter_originals(originals, workers=3))
    assert [o for o, _ in read] == originals
    for original, data in read:
        assert data == (sample_dir / "images" / original.filepath).read_bytes()


def test_an_error_while_streaming_images_stops_the_tool_and_is_raised(tmp_path):
    """classify pipes the images to the tool as they are read: an error from the reader (a changed
    original) ends the tool and comes out as it is."""
    from mobiletag.errors import DataError

    def images():
        yield "first.png", b"not read before the error"
        raise DataError("the test image a.jpg changed since the run began")

    if not any(p.is_file() for p in mediapipe.interpreter_candidates()):
        pytest.skip("no MediaPipe interpreter")
    with pytest.raises(DataError, match=r"a\.jpg changed since the run began"):
        mediapipe.classify(tmp_path / "none.tflite", images())

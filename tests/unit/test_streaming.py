"""Streaming evaluation and the sorted-score threshold search give exactly the figures of the
full-array, one-image-per-invoke, brute-force implementations they replace (kept here as
references), on random scores and on the sample data."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from PIL import Image, ImageOps

from mobiletag.artifacts import Evaluation, ExportedModel, StudentModel, TeacherModel, Thresholds, read_json, write_json
from mobiletag.config import ThresholdsConfig
from mobiletag.evaluation import thresholds as thresholds_module
from mobiletag.evaluation.metrics import classification_metrics, ranking_metrics
from mobiletag.evaluation.thresholds import SortedScores, grid, optimize_thresholds
from mobiletag.export.app_input import mediapipe_resize, prescale
from mobiletag.export.inference_config import eval_pixels, iter_eval_batches
from mobiletag.export.litert import BATCH, TFLiteModel
from mobiletag.export.tflite import convert_int8, verify_export
from mobiletag.models.student import preprocess
from mobiletag.stages import evaluate
from mobiletag.stages import optimize_thresholds as thresholds_stage
from mobiletag.stages.export_tflite import PARITY_IMAGES

STUDENT_SIZE, TEACHER_SIZE = 32, 40


# === The implementations replaced, as references ===


def counts_at(y: np.ndarray, scores: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
    """The former brute-force count: tp, fp, fn for one class at every threshold."""
    predicted = scores[None, :] >= thresholds[:, None]
    positive = y[None, :].astype(bool)
    tp = np.sum(predicted & positive, axis=1)
    fp = np.sum(predicted & ~positive, axis=1)
    fn = np.sum(~predicted & positive, axis=1)
    return tp, fp, fn


class BruteCounts:
    """SortedScores' interface on top of the former brute-force count."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray) -> None:
        self.labels, self.scores = labels, scores

    def counts(self, c: int, thresholds: np.ndarray) -> tuple[np.ndarray, ...]:
        return counts_at(self.labels[:, c], self.scores[:, c], thresholds)


def brute_optimize(labels, scores, classes, cfg, monkeypatch) -> dict:
    with monkeypatch.context() as patch:
        patch.setattr(thresholds_module, "SortedScores", BruteCounts)
        return optimize_thresholds(labels, scores, classes, cfg)


def full_array_pixels(
    dataset_dir: Path, split: str, sizes: list[int], images_root: Path | None = None, antialiased: bool = False
) -> tuple[list[np.ndarray], np.ndarray, list]:
    """The former eval_pixels: the whole split decoded into float32 arrays, one record at a time.

    With ``images_root`` the pixels come from the source files there (the app's input path:
    PIL, EXIF orientation, RGB, the app's pre-scale, MediaPipe's resize), as evaluation now
    reads them; without it, from the records' stored JPEGs. ``antialiased``: PIL's antialiased
    bilinear resize straight to each size instead of the pre-scale and MediaPipe's resize.
    """
    from mobiletag.data.tf_input import list_shards

    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/labels": tf.io.VarLenFeature(tf.float32),
        "image/filepath": tf.io.FixedLenFeature([], tf.string),
    }
    images: list[list[np.ndarray]] = [[] for _ in sizes]
    labels, paths = [], []
    for raw in tf.data.TFRecordDataset(list_shards(dataset_dir, split)):
        ex = tf.io.parse_single_example(raw, features)
        path = ex["image/filepath"].numpy().decode("utf-8")
        data = (images_root / path).read_bytes() if images_root is not None else ex["image/encoded"].numpy()
        with Image.open(io.BytesIO(data)) as image:
            rgb = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
        for per_size, size in zip(images, sizes, strict=True):
            if antialiased:
                pixels = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))
            else:
                pixels = mediapipe_resize(prescale(rgb, size, size), size, size)
            per_size.append(pixels.astype(np.float32))
        labels.append(tf.sparse.to_dense(ex["image/labels"]).numpy())
        paths.append(path)
    return [np.stack(p) for p in images], np.stack(labels).astype(np.float32), paths


def traced_keras_scores(model: keras.Model, images: np.ndarray, normalise: bool) -> np.ndarray:
    """evaluate's traced scorer on the reference pixels: the float models' figures are checked on
    it. Its scores lie within 1e-5 of the eager ones (checked), but two test images whose eager
    teacher scores differ by one float32 step tie in the traced graph, which moves that class's
    AP (by 0.014 on the sample's test split at 40 px)."""
    return evaluate.keras_scorer(model, normalise)[1](images)


def full_array_keras_scores(model: keras.Model, images: np.ndarray, normalise: bool) -> np.ndarray:
    out = []
    for start in range(0, len(images), 64):
        batch = tf.constant(images[start : start + 64])
        out.append(tf.sigmoid(tf.cast(model(preprocess(batch) if normalise else batch, training=False), tf.float32)))
    return np.concatenate(out)


# === Threshold search ===


def random_scores(
    seed: int, dtype: type = np.float32, n: int = 300, classes: int = 5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and scores with ties (INT8-like 1/256 steps and 2-decimal values), scores exactly on
    grid points (float64) or next to them (float32), the ends 0 and 1, a class without positives."""
    cfg = ThresholdsConfig(grid_step=0.01)
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=(n, classes)) > 0.7).astype(np.float32)
    y[:, -1] = 0
    scores = np.round(rng.uniform(size=(n, classes)) * 0.6 + y * 0.3, 2)
    steps = rng.uniform(size=scores.shape) < 0.3
    scores[steps] = rng.integers(0, 256, size=int(steps.sum())) / 256
    on_grid = rng.uniform(size=scores.shape) < 0.3
    scores[on_grid] = rng.choice(grid(cfg), size=int(on_grid.sum()))
    scores[:3] = np.array([[0.0], [1.0], [0.5]])
    return y, scores.astype(dtype), grid(cfg)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sorted_counts_equal_brute_force(seed, dtype):
    y, scores, candidates = random_scores(seed, dtype)
    extra = np.concatenate([candidates, [0.0, 1.0, -1.0, 2.0, 0.5]])
    ranked = SortedScores(y, scores)
    for c in range(y.shape[1]):
        for got, want in zip(ranked.counts(c, extra), counts_at(y[:, c], scores[:, c], extra), strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(
    "cfg",
    [
        ThresholdsConfig(),
        ThresholdsConfig(strategy="precision", min_precision=0.8),
        ThresholdsConfig(strategy="precision", min_precision=1.0),
        ThresholdsConfig(strategy="global"),
        ThresholdsConfig(grid_min=0.05, grid_max=0.95, grid_step=0.05, fallback=0.37),
    ],
)
def test_threshold_search_equals_brute_force(seed, dtype, cfg, monkeypatch):
    y, scores, _ = random_scores(seed, dtype)
    classes = [f"c{i}" for i in range(y.shape[1])]
    got = optimize_thresholds(y, scores, classes, cfg)
    assert got == brute_optimize(y, scores, classes, cfg, monkeypatch)
    assert got["classes"]["c4"]["support"] == 0 and got["classes"]["c4"]["threshold"] == cfg.fallback


# === Streaming evaluation on the sample data ===


def _tiny_model(num_classes: int, size: int, seed: int) -> keras.Model:
    """A few of the student's layer kinds (conv, depthwise, BN, ReLU6, pooling, dense), small enough to convert fast."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(x))
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization()(x))
    x = keras.layers.Conv2D(16, 1)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x))


@pytest.fixture(scope="module")
def exported(tfrecord_dir, tmp_path_factory) -> dict[str, Path]:
    """Tiny teacher and student checkpoints and the student's INT8 export, in the stages' layout."""
    from mobiletag.data.tfrecords import read_labels

    num_classes = len(read_labels(tfrecord_dir))
    root = tmp_path_factory.mktemp("exported")
    dirs = {name: root / name for name in ("teacher", "student", "tflite", "thresholds", "evaluate")}
    for folder in dirs.values():
        folder.mkdir()
    _tiny_model(num_classes, TEACHER_SIZE, 1).save(dirs["teacher"] / TeacherModel.CHECKPOINT)
    student = _tiny_model(num_classes, STUDENT_SIZE, 2)
    student.save(dirs["student"] / StudentModel.CHECKPOINT)
    representative = np.random.default_rng(0).uniform(0, 255, (16, STUDENT_SIZE, STUDENT_SIZE, 3)).astype(np.float32)
    flatbuffer = convert_int8(student, representative)
    (dirs["tflite"] / ExportedModel.MODEL).write_bytes(flatbuffer)
    # export's parity record: the float student stands for the QAT model
    (images,), _, paths = eval_pixels(tfrecord_dir, "val", [STUDENT_SIZE], PARITY_IMAGES)
    parity = verify_export(
        TFLiteModel(flatbuffer), student, images, input_dtype="uint8", output_dtype="uint8", max_mean_abs_diff=1.0
    )
    np.save(dirs["tflite"] / ExportedModel.PARITY_QAT_PROBABILITIES, parity.qat_probabilities)
    write_json(dirs["tflite"] / ExportedModel.EXPORT_REPORT, {"parity": {**parity.summary(), "paths": paths}})
    return dirs


def test_stream_yields_the_full_array_pixels_in_order(tfrecord_dir, sample_dir):
    (small, large), labels, paths = full_array_pixels(
        tfrecord_dir, "test", [STUDENT_SIZE, TEACHER_SIZE], sample_dir / "images"
    )
    batches = list(iter_eval_batches(tfrecord_dir, "test", [STUDENT_SIZE, TEACHER_SIZE], batch_size=7, workers=3))
    assert [len(b.paths) for b in batches[:-1]] == [7] * (len(batches) - 1) and 0 < len(batches[-1].paths) <= 7
    assert all(b.pixels[0].dtype == np.uint8 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b.pixels[0] for b in batches]), small)
    np.testing.assert_array_equal(np.concatenate([b.pixels[1] for b in batches]), large)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), labels)
    assert [p for b in batches for p in b.paths] == paths
    limited = list(iter_eval_batches(tfrecord_dir, "test", [STUDENT_SIZE], batch_size=4, limit=5))
    assert [b.paths for b in limited] == [paths[:4], paths[4:5]]
    (first,), first_labels, first_paths = eval_pixels(tfrecord_dir, "test", [STUDENT_SIZE], limit=5)
    assert first.dtype == np.float32 and first_paths == paths[:5]
    np.testing.assert_array_equal(first, small[:5])
    np.testing.assert_array_equal(first_labels, labels[:5])
    (stored,), _, stored_paths = full_array_pixels(tfrecord_dir, "test", [STUDENT_SIZE])  # the records' JPEGs
    from_records = list(iter_eval_batches(tfrecord_dir, "test", [STUDENT_SIZE], source="records"))
    np.testing.assert_array_equal(np.concatenate([b.pixels[0] for b in from_records]), stored)
    assert stored_paths == paths


def test_batched_int8_equals_one_image_per_invoke(exported, tfrecord_dir, sample_dir):
    model = TFLiteModel(exported["tflite"] / ExportedModel.MODEL)
    (images,), _, _ = full_array_pixels(tfrecord_dir, "val", [STUDENT_SIZE], sample_dir / "images")
    noise = np.random.default_rng(5).integers(0, 256, size=(BATCH + 3, STUDENT_SIZE, STUDENT_SIZE, 3), dtype=np.uint8)
    for pixels in (images.astype(np.uint8), noise):
        one_by_one = model.predict(pixels)
        batched = model.predict_batch(pixels)
        assert model._batched is not None  # XNNPACK runs it batched, with identical outputs
        assert batched.dtype == one_by_one.dtype and batched.shape == one_by_one.shape
        np.testing.assert_array_equal(batched, one_by_one)
    assert model.predict_batch(noise[:0]).shape == (0, one_by_one.shape[1])


def _assert_close(got, want, where: str = "") -> None:
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            _assert_close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=1e-6), where
    else:
        assert got == want, where


def test_stages_equal_the_full_array_results(exported, tfrecord_dir, sample_dir, fast_config, monkeypatch):
    """optimize_thresholds and evaluate, streaming, against the former full-array computation."""
    model = TFLiteModel(exported["tflite"] / ExportedModel.MODEL)
    classes = read_json(tfrecord_dir / "stats.json")["classes"]

    thresholds_stage.run(fast_config, tfrecord_dir, exported["tflite"], exported["thresholds"])
    recommendation = read_json(exported["thresholds"] / Thresholds.RECOMMENDATION)
    (val_images,), val_labels, _ = full_array_pixels(tfrecord_dir, "val", [STUDENT_SIZE], sample_dir / "images")
    want = brute_optimize(val_labels, model.predict(val_images), classes, fast_config.thresholds, monkeypatch)
    parity_qat = np.load(exported["tflite"] / ExportedModel.PARITY_QAT_PROBABILITIES)
    t = np.array([want["classes"][c]["threshold"] for c in classes])
    parity_int8 = model.predict(val_images[: len(parity_qat)])
    agreement = float(np.mean((parity_int8 >= t) == (parity_qat >= t)))
    assert recommendation == {
        **want,
        "model": ExportedModel.MODEL,
        "split": "val",
        "parity_agreement_at_thresholds": agreement,
    }

    evaluate.run(
        fast_config, tfrecord_dir, exported["teacher"], exported["student"], exported["tflite"],
        exported["thresholds"], exported["evaluate"],
    )  # fmt: skip
    metrics = read_json(exported["evaluate"] / Evaluation.METRICS)
    (images, teacher_images), labels, paths = full_array_pixels(
        tfrecord_dir, "test", [STUDENT_SIZE, TEACHER_SIZE], sample_dir / "images"
    )
    scores = model.predict(images)
    teacher = keras.models.load_model(exported["teacher"] / TeacherModel.CHECKPOINT, compile=False)
    student = keras.models.load_model(exported["student"] / StudentModel.CHECKPOINT, compile=False)
    thresholds = {name: entry["threshold"] for name, entry in recommendation["classes"].items()}
    _assert_close(metrics["test"], classification_metrics(labels, scores, classes, thresholds), "test")
    # the app path's block: the same INT8 model fed by PIL's antialiased resize of the same originals
    (smooth,), _, _ = full_array_pixels(tfrecord_dir, "test", [STUDENT_SIZE], sample_dir / "images", antialiased=True)
    smooth_scores = model.predict(smooth)
    documented, antialiased = (ranking_metrics(labels, s)["map_macro"] for s in (scores, smooth_scores))
    block = metrics["app_path"]
    assert (block["documented"], block["antialiased"]) == (documented, antialiased)
    assert documented == metrics["test"]["map_macro"]
    assert block["gap"] == round(antialiased - documented, 4) and block["num_images"] == len(labels)
    assert f"gap {block['gap']}" in (exported["evaluate"] / Evaluation.REPORT_MD).read_text()
    assert f'data-key="app_path.gap">{block["gap"]}<' in (exported["evaluate"] / Evaluation.REPORT_HTML).read_text()
    want_scores = {
        "teacher": full_array_keras_scores(teacher, teacher_images, normalise=False),
        "student": full_array_keras_scores(student, images, normalise=True),
        "student_int8": scores,
    }
    traced = {
        "teacher": traced_keras_scores(teacher, teacher_images, normalise=False),
        "student": traced_keras_scores(student, images, normalise=True),
        "student_int8": scores,
    }
    _assert_close(metrics["compare"], {k: ranking_metrics(labels, v) for k, v in traced.items()}, "compare")
    streamed, _, _ = evaluate.score_test_split(tfrecord_dir, model, teacher, {"student": student})
    np.testing.assert_array_equal(streamed["student_int8"], scores)
    np.testing.assert_array_equal(streamed[evaluate.INT8_ANTIALIASED], smooth_scores)
    for name in ("teacher", "student"):  # traced float models: within 1e-5 of eager calls
        np.testing.assert_allclose(streamed[name], want_scores[name], rtol=0, atol=1e-5)
        np.testing.assert_allclose(traced[name], want_scores[name], rtol=0, atol=1e-5)
    saved = np.load(exported["evaluate"] / Evaluation.TEST_SCORES)
    assert saved.dtype == np.float32
    np.testing.assert_array_equal(saved, scores)
    np.testing.assert_array_equal(np.load(exported["evaluate"] / Evaluation.TEST_TRUE_LABELS), labels.astype(np.uint8))
    assert read_json(exported["evaluate"] / Evaluation.TEST_PATHS) == paths


def test_evaluate_scores_the_float_models_on_a_seeded_sample(
    exported, tfrecord_dir, sample_dir, fast_config, tmp_path, monkeypatch
):
    """thresholds.compare_images below the split sizes: the INT8 model on every test image, the float
    models on that many sampled test images and the students on that many validation images, each
    image decoded once (a validation image outside the sample not at all); metrics.json, report.md
    and report.html say how many images the comparison covers."""
    import dataclasses

    from mobiletag.export import inference_config
    from mobiletag.stages import select_student

    thresholds_stage.run(fast_config, tfrecord_dir, exported["tflite"], exported["thresholds"])
    classes = read_json(tfrecord_dir / "stats.json")["classes"]
    splits = read_json(tfrecord_dir / "stats.json")["splits"]
    num_test, num_val = splits["test"]["num_images"], splits["val"]["num_images"]
    k = min(num_test, num_val) - 3
    students = {"distilled": exported["student"], "baseline": tmp_path / "baseline"}
    students["baseline"].mkdir()
    _tiny_model(len(classes), STUDENT_SIZE, 4).save(students["baseline"] / StudentModel.CHECKPOINT)
    for name, val_map in (("distilled", 0.6), ("baseline", 0.5)):
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        if name == "distilled":
            (folder / StudentModel.CHECKPOINT).write_bytes((students[name] / StudentModel.CHECKPOINT).read_bytes())
        (folder / StudentModel.METRICS).write_text(f'{{"metrics": {{"val_map": {val_map}}}, "alpha": 0.7}}')
    select_student.run(fast_config, tmp_path / "distilled", tmp_path / "baseline", tmp_path / "selected")
    decoded: dict[int, int] = {}  # resizes per size: one per image and size it is scored at
    resize, smooth = inference_config.app_resize, inference_config.antialiased_resize

    def counting(rgb, width, height):
        decoded[width] = decoded.get(width, 0) + 1
        return resize(rgb, width, height)

    opened, smoothed = [], []
    app_image = inference_config.app_image
    monkeypatch.setattr(inference_config, "app_resize", counting)
    monkeypatch.setattr(
        inference_config, "antialiased_resize", lambda rgb, w, h: smoothed.append(w) or smooth(rgb, w, h)
    )
    monkeypatch.setattr(inference_config, "app_image", lambda data: opened.append(1) or app_image(data))
    config = dataclasses.replace(fast_config, thresholds=dataclasses.replace(fast_config.thresholds, compare_images=k))
    out = tmp_path / "evaluate"
    evaluate.run(
        config, tfrecord_dir, exported["teacher"], tmp_path / "selected", exported["tflite"], exported["thresholds"],
        out, distilled_dir=tmp_path / "distilled", baseline_dir=tmp_path / "baseline",
    )  # fmt: skip
    # test: every image at the INT8 size, the sample also at the teacher's; validation: the sample only
    assert decoded == {STUDENT_SIZE: num_test + k, TEACHER_SIZE: k} and len(opened) == num_test + k
    assert smoothed == [STUDENT_SIZE] * k  # the INT8 model's antialiased view of the sample, from the same decode
    rows = evaluate.comparison_rows(num_test, k)
    assert len(rows) == len(set(rows)) == k and list(rows) == sorted(rows) and rows[-1] < num_test
    np.testing.assert_array_equal(rows, evaluate.comparison_rows(num_test, k))  # seeded: the same images
    assert list(evaluate.comparison_rows(num_test, 0)) == list(evaluate.comparison_rows(num_test, num_test + 1))
    assert list(evaluate.comparison_rows(num_test, 0)) == list(range(num_test))

    metrics = read_json(out / Evaluation.METRICS)
    model = TFLiteModel(exported["tflite"] / ExportedModel.MODEL)
    (images, teacher_images), labels, _ = full_array_pixels(
        tfrecord_dir, "test", [STUDENT_SIZE, TEACHER_SIZE], sample_dir / "images"
    )
    scores = model.predict(images)
    recommendation = read_json(exported["thresholds"] / Thresholds.RECOMMENDATION)
    thresholds = {name: entry["threshold"] for name, entry in recommendation["classes"].items()}
    _assert_close(metrics["test"], classification_metrics(labels, scores, classes, thresholds), "test")
    assert metrics["test"]["num_images"] == num_test
    np.testing.assert_array_equal(np.load(out / Evaluation.TEST_SCORES), scores)
    teacher = keras.models.load_model(exported["teacher"] / TeacherModel.CHECKPOINT, compile=False)
    student = keras.models.load_model(exported["student"] / StudentModel.CHECKPOINT, compile=False)
    want_scores = {
        "teacher": full_array_keras_scores(teacher, teacher_images[rows], normalise=False),
        "student": full_array_keras_scores(student, images[rows], normalise=True),
        "student_int8": scores[rows],
    }
    traced = {
        "teacher": traced_keras_scores(teacher, teacher_images[rows], normalise=False),
        "student": traced_keras_scores(student, images[rows], normalise=True),
        "student_int8": scores[rows],
    }
    for name in ("teacher", "student"):
        np.testing.assert_allclose(traced[name], want_scores[name], rtol=0, atol=1e-5)
    _assert_close(metrics["compare"], {k: ranking_metrics(labels[rows], v) for k, v in traced.items()}, "compare")
    app_path = metrics["app_path"]  # on the sample: the documented path's figure is the INT8 model's in compare
    assert (app_path["documented"], app_path["num_images"]) == (metrics["compare"]["student_int8"]["map_macro"], k)
    block = metrics["distillation"]
    for name in ("distilled", "baseline"):
        assert block["students"][name]["test"]["num_images"] == block["students"][name]["val"]["num_images"] == k
    assert metrics["comparison_images"] == {
        "test": k,
        "test_split": num_test,
        "val": k,
        "val_split": num_val,
        "limit": k,
        "key": "thresholds.compare_images",
        "sample": f"seeded sample without replacement (seed {evaluate.SAMPLE_SEED})",
        "covers": metrics["comparison_images"]["covers"],
    }
    stated = f"{k:,} of {num_test:,} test images and {k:,} of {num_val:,} validation images"
    assert stated in (out / Evaluation.REPORT_MD).read_text()
    page = (out / Evaluation.REPORT_HTML).read_text()
    assert f'<span id="comparison-images">{k:,} of {num_test:,} test images, {k:,} of {num_val:,} validation' in page


def test_predict_uses_the_app_input_path(exported, tfrecord_dir, sample_dir, tmp_path):
    """`mobiletag predict` scores a file as evaluation does: app_pixels of the original, the INT8 model."""
    import json
    import shutil

    from mobiletag.data.tfrecords import read_labels
    from mobiletag.export.app_input import app_pixels
    from mobiletag.export.inference_config import build_inference_config
    from mobiletag.predict import Predictor

    model = TFLiteModel(exported["tflite"] / ExportedModel.MODEL)
    labels = read_labels(tfrecord_dir)
    config = build_inference_config(model, labels, {name: 0.5 for name in labels})
    shutil.copy(exported["tflite"] / ExportedModel.MODEL, tmp_path / ExportedModel.MODEL)
    (tmp_path / "inference_config.json").write_text(json.dumps(config))
    (first,), _, paths = eval_pixels(tfrecord_dir, "test", [STUDENT_SIZE], limit=1)
    original = sample_dir / "images" / paths[0]
    np.testing.assert_array_equal(app_pixels(original.read_bytes(), config), first[0].astype(np.uint8))
    result = Predictor(tmp_path).predict_file(original)
    want = model.predict(first)[0]
    assert list(result["scores"].values()) == [round(float(s), 6) for s in want]
    assert set(result["labels"]) == {name for name, s in zip(labels, want) if s >= 0.5}


def test_export_parity_gates_trip_just_past_the_measured_figures(exported, tfrecord_dir):
    """verify_export's mean |diff| gate and the decision check at the thresholds each raise an
    ExportError naming their config key as soon as the figure passes the allowed value."""
    from mobiletag.errors import ExportError
    from mobiletag.export.tflite import check_decision_agreement

    student = keras.models.load_model(exported["student"] / StudentModel.CHECKPOINT, compile=False)
    model = TFLiteModel(exported["tflite"] / ExportedModel.MODEL)
    (images,), _, _ = eval_pixels(tfrecord_dir, "val", [STUDENT_SIZE], PARITY_IMAGES)
    checks = {"input_dtype": "uint8", "output_dtype": "uint8"}
    report = verify_export(model, student, images, **checks, max_mean_abs_diff=1.0)
    assert report.mean_abs_diff > 0
    assert verify_export(model, student, images, **checks, max_mean_abs_diff=report.mean_abs_diff) == report
    with pytest.raises(ExportError, match=r"export\.parity_max_mean_abs_diff = "):
        verify_export(model, student, images, **checks, max_mean_abs_diff=report.mean_abs_diff * 0.99)

    got, qat = model.predict(images), report.qat_probabilities
    thresholds = np.quantile(got, 0.5, axis=0)  # on output levels, where INT8 and float decisions can part
    agreement = float(np.mean((got >= thresholds) == (qat >= thresholds)))
    assert check_decision_agreement(got, qat, thresholds, agreement) == agreement
    with pytest.raises(ExportError, match=r"export\.parity_min_agreement = "):
        check_decision_agreement(got, qat, thresholds, agreement + 1e-9)

"""Stage: the shipped INT8 model on every test image, with the validation thresholds, through the
app's documented input path; the float teacher and students, and the INT8 model fed by an
antialiased resize straight to its input size, on the same images (a seeded sample of at most
``thresholds.compare_images`` of them on a large split), so metrics.json shows what
distillation, quantization and the app's input path cost; model size and CPU latency."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
import tf_keras as keras
from sklearn.metrics import roc_curve

from mobiletag.artifacts import (
    Evaluation,
    ExportedModel,
    QatModel,
    StudentModel,
    TeacherModel,
    Thresholds,
    read_json,
    write_json,
)
from mobiletag.config import Config, ThresholdsConfig
from mobiletag.data.originals import read_original as read_checked_original
from mobiletag.data.tfrecords import originals_of
from mobiletag.errors import DataError
from mobiletag.evaluation.distillation import distillation_block, markdown_section
from mobiletag.evaluation.mediapipe import has_mediapipe_results, load_mediapipe_results, markdown_line, mediapipe_block
from mobiletag.evaluation.metrics import (
    app_path_block,
    app_path_line,
    classification_metrics,
    markdown_report,
    ranking_metrics,
)
from mobiletag.evaluation.report_html import ReadOriginal, ReportData, Training, read_training, write_report
from mobiletag.export.inference_config import ANTIALIASED, EVAL_BATCH, Scorer, stream_scores
from mobiletag.export.litert import TFLiteModel
from mobiletag.models.student import preprocess
from mobiletag.progress import report_result
from mobiletag.stages.common import StageResult, dataset_facts
from mobiletag.stages.select_student import BASELINE, DISTILLED

log = logging.getLogger(__name__)


# max |traced - eager| of a float model's probabilities (tests/unit/test_evaluate_scoring.py, make bench-scale):
# random-weight EfficientNet-Lite1 students at 64 px differ by up to 2.2e-5 over 12,000 scores; 1e-4 is 39x
# below the INT8 output's step (1/256) that thresholds are tuned on
TRACED_TOLERANCE = 1e-4
# the comparison sample's seed: a split of the same size gets the same images in every run
SAMPLE_SEED = 0
COMPARE_KEY = "thresholds.compare_images"
INT8_ANTIALIASED = "student_int8_antialiased"  # the INT8 model's scores fed by the antialiased resize


def eager_scorer(model: keras.Model, normalise: bool) -> tuple[int, Scorer]:
    """A float Keras model's input size and its scorer with one eager call per batch: the
    reference :func:`keras_scorer` is compared with (tests, ``make bench-scale``)."""

    def scores(pixels: np.ndarray) -> np.ndarray:
        batch = tf.constant(pixels.astype(np.float32))
        logits = model(preprocess(batch) if normalise else batch, training=False)
        return tf.sigmoid(tf.cast(logits, tf.float32)).numpy()

    return int(model.input_shape[1]), scores


def keras_scorer(model: keras.Model, normalise: bool, batch_size: int = EVAL_BATCH) -> tuple[int, Scorer]:
    """A float Keras model's input size and its scorer. ``normalise``: apply the student's
    preprocessing (the teacher takes raw pixels).

    The forward pass is traced once (tf.function over a fixed [batch_size, size, size, 3]
    float32 input; a shorter batch is padded with zeros and its padding rows dropped):
    :func:`eager_scorer`'s calls cost 2-3x more per image for EfficientNet-B3 at 80 px and
    Lite1 at 64 px (``make bench-scale``). The traced graph's fused kernels round differently
    from eager execution (probabilities within ``TRACED_TOLERANCE`` of the eager ones), which
    can swap tied scores: figures computed from them agree with eager ones to the 4th decimal,
    not bit for bit.
    """
    size = int(model.input_shape[1])

    @tf.function(input_signature=[tf.TensorSpec([batch_size, size, size, 3], tf.float32)])
    def forward(batch: tf.Tensor) -> tf.Tensor:
        logits = model(preprocess(batch) if normalise else batch, training=False)
        return tf.sigmoid(tf.cast(logits, tf.float32))

    def scores(pixels: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(pixels), batch_size):
            chunk = pixels[start : start + batch_size]
            batch = np.zeros((batch_size, size, size, 3), np.float32)
            batch[: len(chunk)] = chunk
            out.append(forward(tf.constant(batch)).numpy()[: len(chunk)])
        if not out:
            return np.zeros((0, int(model.output_shape[-1])), np.float32)
        return np.concatenate(out)

    return size, scores


def comparison_rows(num_images: int, limit: int, seed: int = SAMPLE_SEED) -> np.ndarray:
    """The record indices (ascending) the float models score in a split of ``num_images``: all of
    them when ``limit`` is 0 or at least ``num_images``, else ``limit`` drawn without replacement
    by ``np.random.default_rng(seed)``."""
    if limit == 0 or limit >= num_images:
        return np.arange(num_images)
    return np.sort(np.random.default_rng(seed).choice(num_images, size=limit, replace=False))


def score_test_split(
    dataset_dir: str | Path,
    tflite: TFLiteModel,
    teacher: keras.Model,
    students: dict[str, keras.Model],
    student_scorers: dict[str, tuple[int, Scorer]] | None = None,
    rows: np.ndarray | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """The test split's scores per model ("student_int8", "teacher" and each named float student)
    and of the INT8 model fed by the antialiased resize (``INT8_ANTIALIASED``), labels, paths: one
    pass over the split, each image decoded once. The INT8 model scores every image through the
    app's path; the float models and ``INT8_ANTIALIASED`` the record indices ``rows`` (every image
    when None), their scores in that order. ``student_scorers``: the students' scorers when the
    caller has them already (each traces its model once; validation reuses them)."""
    if student_scorers is None:
        student_scorers = {name: keras_scorer(model, normalise=True) for name, model in students.items()}
    floats = {"teacher": keras_scorer(teacher, normalise=False), **student_scorers}
    int8 = (tflite.image_size, tflite.predict_batch)
    scorers = {"student_int8": int8, INT8_ANTIALIASED: int8, **floats}
    sampled = [*floats, INT8_ANTIALIASED]
    return stream_scores(
        dataset_dir,
        "test",
        scorers,
        None if rows is None else dict.fromkeys(sampled, rows),
        resizes={INT8_ANTIALIASED: ANTIALIASED},
    )


def sample_block(
    limit: int, test_rows: np.ndarray, num_test: int, val_rows: np.ndarray | None, num_val: int
) -> dict[str, Any]:
    """metrics.json["comparison_images"]: how many images the float comparisons cover."""
    sampled = len(test_rows) < num_test or (val_rows is not None and len(val_rows) < num_val)
    return {
        "test": int(len(test_rows)),
        "test_split": int(num_test),
        "val": None if val_rows is None else int(len(val_rows)),
        "val_split": int(num_val),
        "limit": int(limit),
        "key": COMPARE_KEY,
        "sample": f"seeded sample without replacement (seed {SAMPLE_SEED})" if sampled else "every image",
        "covers": "compare (teacher, float student and INT8 model on the same images), app_path and the "
        "distillation block; test (the INT8 model at its thresholds) covers every test image",
    }


def sample_sentence(block: dict[str, Any]) -> str:
    """One line for report.md: the images the float comparisons cover."""
    test = f"{block['test']:,} of {block['test_split']:,} test images"
    val = "" if block["val"] is None else f" and {block['val']:,} of {block['val_split']:,} validation images"
    how = "all of them" if block["sample"] == "every image" else f"a {block['sample']}"
    return (
        f"The comparison of models, the app path's figures and the distillation block cover {test}{val} ({how}; config key "
        f"{block['key']}: {block['limit']}); the INT8 model's test figures cover every test image.\n"
    )


def _load_student(folder: str | Path) -> keras.Model:
    return keras.models.load_model(Path(folder) / StudentModel.CHECKPOINT, compile=False)


def float_students(
    student_dir: str | Path, distilled_dir: str | Path | None, baseline_dir: str | Path | None
) -> tuple[dict[str, keras.Model], dict[str, Any] | None]:
    """The float students to score and select-student's selection.json (None without one).

    With a selection: "distilled" and, when it was trained, "baseline" (the shipped student is one
    of them, scored once); without: the one "student".
    """
    selection_file = Path(student_dir) / StudentModel.SELECTION
    if distilled_dir is None or not selection_file.is_file():
        return {"student": _load_student(student_dir)}, None
    students = {DISTILLED: _load_student(distilled_dir)}
    if baseline_dir is not None and (Path(baseline_dir) / StudentModel.CHECKPOINT).is_file():
        students[BASELINE] = _load_student(baseline_dir)
    return students, read_json(selection_file)


def training_histories(
    teacher_dir: str | Path,
    student_dir: str | Path,
    distilled_dir: str | Path | None,
    baseline_dir: str | Path | None,
    qat_dir: str | Path | None,
    selection: dict[str, Any] | None,
) -> dict[str, Training]:
    """Each model's training, from the metrics files in the model folders evaluate reads (QAT's
    only when ``qat_dir`` is given)."""
    student_phases = {"warm-up": "warmup_history", "fine-tune": "history"}
    training: dict[str, Training] = {
        "teacher": read_training(
            teacher_dir, TeacherModel.METRICS, {"head": "history.phase_a", "fine-tune": "history.phase_b"}, "teacher"
        )
    }
    if selection is None:
        training["student"] = read_training(student_dir, StudentModel.METRICS, student_phases, "student")
    else:
        for name, folder in ((DISTILLED, distilled_dir), (BASELINE, baseline_dir)):
            training[f"{name} student"] = read_training(folder, StudentModel.METRICS, student_phases, f"{name} student")
    training["QAT"] = read_training(qat_dir, QatModel.METRICS, {"QAT": "history"}, "QAT")
    return training


def _val_scores(thresholds_dir: str | Path) -> tuple[np.ndarray | None, np.ndarray | None, str]:
    """optimize_thresholds' validation scores and labels of the INT8 model, or why there are none."""
    folder = Path(thresholds_dir)
    if not (folder / Thresholds.VAL_SCORES).is_file():
        return None, None, f"optimize_thresholds saved no {Thresholds.VAL_SCORES} in {folder}"
    try:
        return np.load(folder / Thresholds.VAL_SCORES), np.load(folder / Thresholds.VAL_TRUE_LABELS), ""
    except (OSError, ValueError) as exc:
        return None, None, f"{Thresholds.VAL_SCORES} or {Thresholds.VAL_TRUE_LABELS} in {folder} cannot be read ({exc})"


def build_html_report(
    out: Path,
    metrics: dict[str, Any],
    labels: np.ndarray,
    scores: np.ndarray,
    paths: list[str],
    thresholds: dict[str, float],
    dataset_dir: str | Path,
    thresholds_dir: str | Path,
    training: dict[str, Training],
) -> Path:
    """report.html in ``out``, from the arrays evaluate computed and the files beside them."""
    val_scores, val_labels, val_missing = _val_scores(thresholds_dir)
    if val_scores is not None and (val_labels is None or val_scores.shape != val_labels.shape):
        val_scores, val_labels, val_missing = None, None, "scores and labels of different shapes"
    read_original: ReadOriginal | None = None
    missing = ""
    try:
        originals = originals_of(dataset_dir, "test")
        read_original = lambda row: read_checked_original(originals[row])  # noqa: E731
    except DataError as exc:
        missing = str(exc)
    data = ReportData(
        metrics=metrics,
        classes=metrics["classes"],
        thresholds=thresholds,
        test_scores=scores,
        test_labels=labels,
        test_paths=paths,
        val_scores=val_scores,
        val_labels=val_labels,
        val_missing=val_missing,
        training=training,
        read_original=read_original,
        originals_missing=missing,
    )
    return write_report(data, out / Evaluation.REPORT_HTML)


def run(
    config: Config,
    dataset_dir: str | Path,
    teacher_dir: str | Path,
    student_dir: str | Path,
    tflite_dir: str | Path,
    thresholds_dir: str | Path,
    out_dir: str | Path,
    *,
    distilled_dir: str | Path | None = None,
    baseline_dir: str | Path | None = None,
    qat_dir: str | Path | None = None,
) -> StageResult:
    """Test metrics of the INT8 model, the float models beside it; with ``distilled_dir`` (and
    select-student's selection.json in ``student_dir``) the "distillation" block; when
    ``tflite_dir`` is mediapipe-package's folder (the model with metadata and MediaPipe's test
    results beside it) the "mediapipe" block: the same figures through MediaPipe Tasks'
    ImageClassifier. report.html shows it all with plots; training curves come from the model
    folders' metrics files (QAT's with ``qat_dir``).

    The INT8 model scores every test image through the app's documented input path ("test");
    the float models (teacher, students) and the INT8 model fed by an antialiased resize of the
    same decoded images ("app_path", beside the documented path's figure on those images) score
    a seeded sample of at most ``config.thresholds.compare_images`` test images, and the students
    as many validation images (for their own thresholds): ``comparison_images`` in metrics.json
    says how many (every image of a smaller split)."""
    started = time.perf_counter()
    limit = config.thresholds.compare_images
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts = dataset_facts(dataset_dir)
    model_path = Path(tflite_dir) / ExportedModel.MODEL
    tflite = TFLiteModel(model_path, num_threads=2)
    recommendation = read_json(Path(thresholds_dir) / Thresholds.RECOMMENDATION)
    thresholds = {name: entry["threshold"] for name, entry in recommendation["classes"].items()}

    teacher = keras.models.load_model(Path(teacher_dir) / TeacherModel.CHECKPOINT, compile=False)
    students, selection = float_students(student_dir, distilled_dir, baseline_dir)
    student_scorers = {name: keras_scorer(model, normalise=True) for name, model in students.items()}
    test_rows = comparison_rows(facts.num_test, limit)
    all_scores, labels, paths = score_test_split(
        dataset_dir, tflite, teacher, students, student_scorers, rows=test_rows
    )
    scores = all_scores["student_int8"]
    test = classification_metrics(labels, scores, facts.classes, thresholds)
    shipped = "student" if selection is None else selection["shipped"]
    compared = labels[test_rows]
    compare = {
        "teacher": ranking_metrics(compared, all_scores["teacher"]),
        "student": ranking_metrics(compared, all_scores[shipped]),
        "student_int8": ranking_metrics(compared, scores[test_rows]),
    }
    latency = {f"threads_{n}": round(TFLiteModel(model_path, num_threads=n).latency_ms(), 3) for n in (1, 2)}
    metrics: dict[str, Any] = {
        "model": ExportedModel.MODEL,
        "test": test,
        "compare": compare,
        "size_bytes": model_path.stat().st_size,
        "latency_ms": latency,
        "thresholds_strategy": recommendation["strategy"],
        "classes": facts.classes,
        "app_path": app_path_block(compared, scores[test_rows], all_scores[INT8_ANTIALIASED], tflite.image_size),
    }
    val_rows = comparison_rows(facts.num_val, limit)  # scored with a selection (both students) only
    metrics["comparison_images"] = sample_block(
        limit, test_rows, facts.num_test, None if selection is None else val_rows, facts.num_val
    )
    report = markdown_report(metrics) + "\n" + app_path_line(metrics["app_path"])
    report += "\n" + sample_sentence(metrics["comparison_images"])
    if selection is not None:
        # both float students on validation too (the block's figures at each one's own thresholds)
        val, val_labels, _ = stream_scores(
            dataset_dir, "val", student_scorers, rows=dict.fromkeys(student_scorers, val_rows)
        )
        lo, hi, step = recommendation["grid"]
        block = distillation_block(
            classes=facts.classes,
            val_labels=val_labels[val_rows],
            test_labels=compared,
            distilled=(val[DISTILLED], all_scores[DISTILLED]),
            baseline=(val[BASELINE], all_scores[BASELINE]) if BASELINE in val else None,
            selection=selection,
            thresholds=ThresholdsConfig(
                strategy=recommendation["strategy"],
                grid_min=lo,
                grid_max=hi,
                grid_step=step,
                min_precision=recommendation.get("min_precision", ThresholdsConfig.min_precision),
                fallback=recommendation.get("fallback", ThresholdsConfig.fallback),
            ),
        )
        metrics["distillation"] = block
        report += "\n" + markdown_section(block)
    if has_mediapipe_results(tflite_dir):
        mediapipe_paths, classified, summary = load_mediapipe_results(tflite_dir)
        metrics["mediapipe"] = mediapipe_block(
            classes=facts.classes,
            labels=labels,
            paths=paths,
            scores=scores,
            thresholds=thresholds,
            ours=test,
            mediapipe_paths=mediapipe_paths,
            classified=classified,
            summary=summary,
        )
        report += "\n" + markdown_line(metrics["mediapipe"], test)
    write_json(out / Evaluation.METRICS, metrics)
    (out / Evaluation.REPORT_MD).write_text(report, encoding="utf-8")
    np.save(out / Evaluation.TEST_SCORES, scores.astype(np.float32))
    np.save(out / Evaluation.TEST_TRUE_LABELS, labels.astype(np.uint8))
    write_json(out / Evaluation.TEST_PATHS, paths)
    report_started = time.perf_counter()
    training = training_histories(teacher_dir, student_dir, distilled_dir, baseline_dir, qat_dir, selection)
    html = build_html_report(out, metrics, labels, scores, paths, thresholds, dataset_dir, thresholds_dir, training)
    report_seconds = round(time.perf_counter() - report_started, 2)
    log.info("report: %s (%d bytes, %.1f s)", html, html.stat().st_size, report_seconds)
    report_result(
        log,
        "test: macro mAP %.4f (float student %.4f, teacher %.4f), micro F1 %.4f, %d bytes, %.2f ms/img",
        test["map_macro"] or 0,
        compare["student"]["map_macro"] or 0,
        compare["teacher"]["map_macro"] or 0,
        test["f1_micro"],
        metrics["size_bytes"],
        latency["threads_1"],
    )
    scalars = {
        "test_map_macro": test["map_macro"] or 0.0,
        "test_map_micro": test["map_micro"] or 0.0,
        "test_f1_macro": test["f1_macro"],
        "test_f1_micro": test["f1_micro"],
        "test_exact_match": test["exact_match"],
        "test_hamming_loss": test["hamming_loss"],
        "app_path_antialiased_map_macro": metrics["app_path"]["antialiased"] or 0.0,
        "app_path_gap": metrics["app_path"]["gap"] or 0.0,
        "teacher_map_macro": compare["teacher"]["map_macro"] or 0.0,
        "student_map_macro": compare["student"]["map_macro"] or 0.0,
        "size_bytes": float(metrics["size_bytes"]),
        "latency_ms_1_thread": latency["threads_1"],
        "latency_ms_2_threads": latency["threads_2"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    if selection is not None:
        scalars["baseline_shipped"] = float(selection["shipped"] == BASELINE)
        difference = metrics["distillation"]["test_difference"]
        if difference is not None:
            scalars["distillation_test_map_difference"] = difference["value"]
    if "mediapipe" in metrics:
        block = metrics["mediapipe"]
        scalars["mediapipe_map_macro"] = block["map_macro"] or 0.0
        scalars["mediapipe_f1_micro"] = block["f1_micro"]
        scalars["mediapipe_label_set_agreement"] = block["label_set_agreement"]
    fpr, tpr, cut = roc_curve(labels.ravel(), scores.ravel())
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).round().astype(int))
    roc = {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(), "thresholds": np.clip(cut[keep], 0.0, 1.0).tolist()}
    return StageResult(
        metrics=scalars,
        files={
            "metrics": str(out / Evaluation.METRICS),
            "report": str(out / Evaluation.REPORT_MD),
            "report_html": str(html),
        },
        details={
            "roc": roc,
            "report": (out / Evaluation.REPORT_MD).read_text(encoding="utf-8"),
            "report_html_seconds": report_seconds,
        },
    )

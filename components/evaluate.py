from kfp import dsl

from components.base import component


@component()
def evaluate(
    dataset: dsl.Input[dsl.Dataset],
    teacher: dsl.Input[dsl.Model],
    student: dsl.Input[dsl.Model],
    distilled_student: dsl.Input[dsl.Model],
    baseline_student: dsl.Input[dsl.Model],
    qat_model: dsl.Input[dsl.Model],
    tflite_model: dsl.Input[dsl.Model],
    thresholds: dsl.Input[dsl.Artifact],
    config_json: str,
    evaluation: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
    roc: dsl.Output[dsl.ClassificationMetrics],
    report: dsl.Output[dsl.Markdown],
    report_html: dsl.Output[dsl.HTML],
):
    """Evaluates the shipped INT8 model on the test split, beside the float teacher and student.

    Args:
        dataset: TFRecords (test split).
        teacher: The float teacher, for comparison.
        student: The float student that shipped (select-student: its checkpoint and selection.json), for comparison.
        distilled_student: The distilled student, for the "distillation" block.
        baseline_student: The student trained without the teacher (baseline_skipped.json only when it was off).
        qat_model: The QAT student (quantize), for its training curve in the report.
        tflite_model: The INT8 model with MediaPipe metadata (mediapipe-package), with MediaPipe's test scores and label sets.
        config_json: The thresholds config section (compare_images: how many images the float models score).
        evaluation: metrics.json, report.md and report.html (metrics.json with the "distillation" block: both students, the test difference; the "mediapipe" block: the figures through MediaPipe's ImageClassifier).
        metrics: Test figures (mAP, F1, exact match, Hamming loss), size and latency.
        roc: Micro-averaged ROC curve of the INT8 model on the test split.
        report: Per-class table of AP, precision, recall, F1 and threshold.
        report_html: report.html, one self-contained page: the headline figures, per class the precision-recall curve at the threshold and the score histograms, the worst test errors as thumbnails, training curves, the comparison of teacher, students and INT8 model.
    """
    import shutil

    from mobiletag.stages import evaluate as stage
    from mobiletag.stages.component_io import record
    from mobiletag.stages.resolve_config import config_from_json

    result = stage.run(
        config_from_json(config_json),
        dataset.path,
        teacher.path,
        student.path,
        tflite_model.path,
        thresholds.path,
        evaluation.path,
        distilled_dir=distilled_student.path,
        baseline_dir=baseline_student.path,
        qat_dir=qat_model.path,
    )
    record(result, metrics=metrics)
    curve = result.details["roc"]
    roc.log_roc_curve(curve["fpr"], curve["tpr"], curve["thresholds"])
    with open(report.path, "w", encoding="utf-8") as fh:
        fh.write(result.details["report"])
    shutil.copyfile(result.files["report_html"], report_html.path)

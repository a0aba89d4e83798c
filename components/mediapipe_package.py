from kfp import dsl

from components.base import component
from components.image import MEDIAPIPE_IMAGE


@component(MEDIAPIPE_IMAGE)
def mediapipe_package(
    dataset: dsl.Input[dsl.Dataset],
    tflite_model: dsl.Input[dsl.Model],
    thresholds: dsl.Input[dsl.Artifact],
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
):
    """Writes TFLite metadata for MediaPipe Tasks into the INT8 model and runs MediaPipe's ImageClassifier on the test images.

    Args:
        dataset: The dataset (test split: the images MediaPipe classifies).
        tflite_model: The exported INT8 model and labels.
        thresholds: threshold_recommendation.json (the per-class score calibration).
        model: model_qat_int8.tflite with metadata (labels, calibration, score threshold 0.5; same outputs), labels.txt, and MediaPipe's test scores and label sets.
        metrics: Model size, test images classified, MediaPipe's milliseconds per image.
    """
    from mobiletag.stages import mediapipe_package as stage
    from mobiletag.stages.component_io import record

    result = stage.run(dataset.path, tflite_model.path, thresholds.path, model.path)
    record(result, model, metrics)

"""`make bench-scale` (bench/scale.py) from an empty work folder, on 30 generated images: its models
(bench/scale_data.py's make_models, select-student with its config), the dataset, the INT8 export it
makes per dataset and optimize_thresholds, which reads export's parity files. The stages run in this
process (the bench runs each in a child process of its own), on small stand-ins for the teacher and
student networks: the bench's flow is under test, not the architectures (test_models.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tf_keras as keras

from .conftest import bench_modules


def _small_network(num_classes: int, image_size: int, *args: object) -> keras.Model:
    """A stand-in for build_student / build_teacher: one conv block and the logits, in a second."""
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Conv2D(4, 3, strides=2, name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x))


def test_bench_scale_prepares_what_optimize_thresholds_reads(tmp_path, monkeypatch):
    from mobiletag.artifacts import ExportedModel, StudentModel, Thresholds
    from mobiletag.models import student as student_module
    from mobiletag.models import teacher as teacher_module

    monkeypatch.setattr(student_module, "build_student", _small_network)
    monkeypatch.setattr(teacher_module, "build_teacher", _small_network)
    with bench_modules("scale") as bench:
        scale = bench["scale"]
        # each stage as the bench's child process runs it, here in this process
        monkeypatch.setattr(scale, "measure", lambda stage, paths, src=None: scale.child(stage, paths) or {})
        paths = scale.prepared(tmp_path, 12, None)  # N = 12: 6 train, 12 val, 12 test images
        config = scale.load_bench_config()

    shipped = Path(paths["student"])
    selection = json.loads((shipped / StudentModel.SELECTION).read_text())
    assert selection["shipped"] == "distilled" and selection["margin"] == config.student.selection_margin
    distilled = Path(paths["distilled"]) / StudentModel.CHECKPOINT
    assert (shipped / StudentModel.CHECKPOINT).read_bytes() == distilled.read_bytes()

    tflite = Path(paths["tflite"])
    report = json.loads((tflite / ExportedModel.EXPORT_REPORT).read_text())
    val_paths = [row.split(",")[0] for row in (Path(paths["data"]) / "val_labels.csv").read_text().split()[1:]]
    assert [Path(p).name for p in report["parity"]["paths"]] == val_paths  # the dataset's 12 validation images
    assert np.load(tflite / ExportedModel.PARITY_QAT_PROBABILITIES).shape == (12, 6)
    # optimize_thresholds compared the INT8 decisions with those parity files
    thresholds = json.loads((Path(paths["thresholds"]) / Thresholds.RECOMMENDATION).read_text())
    assert thresholds["model"] == ExportedModel.MODEL and isinstance(
        thresholds["parity_agreement_at_thresholds"], float
    )

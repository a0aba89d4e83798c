"""The GPU path, rehearsed on CPU: mixed precision forced, the teacher from an ImageNet-format
weights file, two replicas, then QAT, export, thresholds and evaluation on what they handed on."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import h5py
import pytest
import tf_keras as keras

from ..conftest import REPO, TINY, _merge


def _layer_dtypes(h5_path) -> set[str]:
    """The dtype policy of every layer, as saved in an .h5 model file's config."""
    with h5py.File(h5_path, "r") as f:
        config = json.loads(f.attrs["model_config"])
    names = set()
    for layer in config["config"]["layers"]:
        dtype = layer["config"].get("dtype")
        if isinstance(dtype, dict):  # a Policy
            dtype = dtype["config"]["name"]
        if dtype is not None:
            names.add(dtype)
    return names


def _run_stage_in_its_own_process(stage: str, config_file, *args, **kwargs) -> None:
    """A training stage as on a cluster: a process of its own (here with two logical CPU
    devices standing in for two GPUs, and the replicas' MirroredStrategy over them)."""
    script = textwrap.dedent(
        f"""
        import json, logging, sys
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        from mobiletag.config import load_config
        from mobiletag.stages import {stage} as stage
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        stage.run(load_config({str(config_file)!r}), *{[str(a) for a in args]!r}, devices=devices, **{kwargs!r})
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


@pytest.mark.slow
def test_mixed_bfloat16_two_replicas_imagenet_format_teacher_end_to_end(tfrecord_dir, tmp_path):
    from mobiletag.config import load_config
    from mobiletag.stages import evaluate, export_tflite, optimize_thresholds, quantize
    from mobiletag.stages.common import read_json

    # The teacher's weights as the component image bakes them: Keras' EfficientNetB3 notop
    # layout (random values here: nothing can be downloaded).
    weights = tmp_path / "efficientnetb3_notop.h5"
    keras.applications.EfficientNetB3(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(
        str(weights)
    )
    keras.backend.clear_session()
    overrides = _merge(
        TINY,
        {
            "multi_gpu": {"mixed_precision": "bfloat16", "steps_per_execution": 2},
            "teacher": {"weights": str(weights), "reference_batch_size": 8, "lr_warmup_epochs": 0.5},
            "student": {"reference_batch_size": 8, "epochs": 1},
        },
    )
    config = load_config(REPO / "configs" / "fast.yaml", overrides)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config.to_yaml())
    d = {name: tmp_path / name for name in ("teacher", "student", "qat", "tflite", "thresholds", "evaluation")}

    backups = {"backup_uri": str(tmp_path / "backup"), "run_id": "r1"}
    _run_stage_in_its_own_process("train_teacher", config_file, tfrecord_dir, d["teacher"], **backups)
    teacher_metrics = read_json(d["teacher"] / "teacher_metrics.json")
    assert teacher_metrics["precision_policy"] == "mixed_bfloat16"
    assert teacher_metrics["metrics"]["replicas"] == 2
    # global batch 16 against the reference 8: twice the configured rates
    assert teacher_metrics["learning_rates"]["phase_a"] == pytest.approx(2 * config.teacher.warmup_learning_rate)
    assert teacher_metrics["learning_rates"]["phase_b"] == pytest.approx(2 * config.teacher.fine_tune_learning_rate)
    assert _layer_dtypes(d["teacher"] / "teacher_best.h5") == {"float32"}  # handed on in float32

    _run_stage_in_its_own_process("train_student", config_file, tfrecord_dir, d["teacher"], d["student"], **backups)
    student_metrics = read_json(d["student"] / "student_metrics.json")
    assert student_metrics["precision_policy"] == "mixed_bfloat16"
    assert student_metrics["learning_rate"] == pytest.approx(2 * config.student.learning_rate)
    assert _layer_dtypes(d["student"] / "student_best.h5") == {"float32"}

    qat = quantize.run(config, tfrecord_dir, d["teacher"], d["student"], d["qat"])
    assert 0.0 < qat.metrics["val_map"] <= 1.0
    export_tflite.run(config, tfrecord_dir, d["qat"], d["tflite"])
    optimize_thresholds.run(config, tfrecord_dir, d["tflite"], d["thresholds"])
    evaluate.run(tfrecord_dir, d["teacher"], d["student"], d["tflite"], d["thresholds"], d["evaluation"])
    metrics = read_json(d["evaluation"] / "metrics.json")
    for figure in (metrics["test"]["map_macro"], metrics["compare"]["teacher"]["map_macro"]):
        assert math.isfinite(figure) and 0.0 < figure <= 1.0
    assert not (tmp_path / "backup" / "r1" / "train-teacher").exists()  # the finished tasks' backups are removed
    assert not (tmp_path / "backup" / "r1" / "train-student").exists()
    assert keras.mixed_precision.global_policy().name == "float32"

"""The GPU path, rehearsed on CPU: mixed precision forced, the teacher from an ImageNet-format
weights file, two replicas, then QAT on what they handed on."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import tf_keras as keras

from ..conftest import REPO, TINY, _merge, train_positive_weights


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


def _run_stages_in_their_own_process(config_file, *calls: tuple[str, list, dict]) -> None:
    """Training stages as on a cluster: a process of their own (here with two logical CPU
    devices standing in for two GPUs, and the replicas' MirroredStrategy over them). One
    process for both stages: TensorFlow starts once (each stage still resets its own state)."""
    lines = [
        "import logging",
        "import tensorflow as tf",
        'cpu = tf.config.list_physical_devices("CPU")[0]',
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)",
        'logging.basicConfig(level=logging.INFO, format="%(message)s")',
        "from mobiletag.config import load_config",
        'devices = [d.name for d in tf.config.list_logical_devices("CPU")]',
    ]
    for stage, args, kwargs in calls:
        lines += [
            f"from mobiletag.stages import {stage}",
            f"{stage}.run(load_config({str(config_file)!r}), *{[str(a) for a in args]!r}, devices=devices, **{kwargs!r})",
        ]
    done = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]


@pytest.mark.slow
def test_mixed_bfloat16_two_replicas_imagenet_format_teacher_end_to_end(tfrecord_dir, tmp_path):
    from mobiletag.artifacts import QatModel, StudentModel, TeacherModel, read_json
    from mobiletag.config import load_config
    from mobiletag.models.student import preprocess
    from mobiletag.quantization.qat import load_qat_model
    from mobiletag.stages import quantize

    from ..checkpoint_checks import checkpoint_val_map

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
            # the class-weighted loss in 16 bits on two replicas, and QAT going on with the student's
            "teacher": {
                "weights": str(weights),
                "reference_batch_size": 8,
                "lr_warmup_epochs": 0.5,
                "loss": "weighted_bce",
            },
            "student": {"reference_batch_size": 8, "epochs": 1, "loss": "weighted_bce"},
        },
    )
    config = load_config(REPO / "configs" / "fast.yaml", overrides)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(config.to_yaml())
    d = {name: tmp_path / name for name in ("teacher", "student", "qat")}

    backups = {"backup_uri": str(tmp_path / "backup"), "run_id": "r1"}
    _run_stages_in_their_own_process(
        config_file,
        ("train_teacher", [tfrecord_dir, d["teacher"]], backups),
        ("train_student", [tfrecord_dir, d["teacher"], d["student"]], backups),
    )
    teacher_metrics = read_json(d["teacher"] / "teacher_metrics.json")
    assert teacher_metrics["precision_policy"] == "mixed_bfloat16"
    assert teacher_metrics["metrics"]["replicas"] == 2
    # global batch 16 against the reference 8: twice the configured rates
    assert teacher_metrics["learning_rates"]["phase_a"] == pytest.approx(2 * config.teacher.head_learning_rate)
    assert teacher_metrics["learning_rates"]["phase_b"] == pytest.approx(2 * config.teacher.fine_tune_learning_rate)
    assert _layer_dtypes(d["teacher"] / "teacher_best.h5") == {"float32"}  # handed on in float32

    student_metrics = read_json(d["student"] / "student_metrics.json")
    assert student_metrics["precision_policy"] == "mixed_bfloat16"
    assert student_metrics["learning_rate"] == pytest.approx(2 * config.student.learning_rate)
    assert _layer_dtypes(d["student"] / "student_best.h5") == {"float32"}
    # trained in 16 bits on two replicas, the student is validated again from its float32 checkpoint:
    # the figure is that checkpoint's on the stage's input
    student_map, _ = checkpoint_val_map(d["student"] / "student_best.h5", tfrecord_dir, config)
    assert student_metrics["metrics"]["val_map"] == round(student_map, 4)

    # What the later stages load: float32 models that give finite probabilities (evaluate runs the
    # teacher and the student as saved; QAT starts from the student). Export, thresholds and
    # evaluation after QAT do not depend on how the float models were trained: the component
    # tests run them.
    for name, checkpoint in (("teacher", "teacher_best.h5"), ("student", "student_best.h5")):
        model = keras.models.load_model(d[name] / checkpoint, compile=False)
        size = model.input_shape[1]
        images = np.random.default_rng(0).uniform(0, 255, (4, size, size, 3)).astype(np.float32)
        logits = model(images if name == "teacher" else preprocess(images), training=False).numpy()
        assert logits.dtype == np.float32 and np.isfinite(logits).all(), name
    qat = quantize.run(config, tfrecord_dir, d["teacher"], d["student"], d["qat"], **backups)
    # QAT trains in float32 on one device whatever the policy: its figure is its checkpoint's, validated
    # on the stage's own input (val TFRecords at the student's size, through the student's preprocess)
    direct, _ = checkpoint_val_map(
        d["qat"] / QatModel.CHECKPOINT, tfrecord_dir, config, batch_size=config.qat.batch_size, load=load_qat_model
    )
    assert qat.metrics["val_map"] == round(direct, 4)
    # the finished tasks keep their backups (a pod lost before its outputs were stored resumes from
    # them) until the run's bundle step deletes them
    assert sorted(p.name for p in (tmp_path / "backup" / "r1").iterdir()) == [
        "quantize",
        "train-student",
        "train-teacher",
    ]
    assert keras.mixed_precision.global_policy().name == "float32"

    # each stage trained on the weights of the training split's counts: sqrt(negatives / positives)
    expected = train_positive_weights(tfrecord_dir)
    assert len(set(expected.values())) > 1  # the classes are not all equally frequent
    files = {"teacher": TeacherModel.METRICS, "student": StudentModel.METRICS, "qat": QatModel.METRICS}
    for name, file in files.items():
        loss = read_json(d[name] / file)["loss"]
        assert loss["hard"] == "weighted_bce", name
        assert loss["positive_weights"].keys() == expected.keys(), name
        np.testing.assert_allclose(
            list(loss["positive_weights"].values()), list(expected.values()), rtol=1e-12, err_msg=name
        )

"""Losses, the distillation step, the multi-replica reduction, precision, XLA and the NaN guard (resuming after a kill: test_backup.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mobiletag.models.student import build_student
from mobiletag.training.fit import Trainer
from mobiletag.training.losses import distillation_loss, hard_loss, soft_loss

from ..conftest import cpu_strategy


def _bce(p, q):
    return -(p * math.log(q) + (1 - p) * math.log(1 - q))


def _sig(x):
    return 1 / (1 + math.exp(-x))


def test_losses_by_hand():
    labels = tf.constant([[1.0, 0.0]])
    student = tf.constant([[2.0, -1.0]])
    teacher = tf.constant([[1.0, 3.0]])
    hard = (_bce(1, _sig(2.0)) + _bce(0, _sig(-1.0))) / 2
    T = 2.0
    soft = (_bce(_sig(1.0 / T), _sig(2.0 / T)) + _bce(_sig(3.0 / T), _sig(-1.0 / T))) / 2
    assert hard_loss(labels, student).numpy()[0] == pytest.approx(hard, rel=1e-5)
    assert soft_loss(teacher, student, T).numpy()[0] == pytest.approx(soft, rel=1e-5)
    total = distillation_loss(labels, student, teacher, alpha=0.7, temperature=T).numpy()[0]
    assert total == pytest.approx(0.7 * hard + 0.3 * T**2 * soft, rel=1e-5)
    assert distillation_loss(labels, student, teacher, alpha=1.0, temperature=T).numpy()[0] == pytest.approx(hard)


def _tiny_pair(num_classes=3, dropout=None, teacher_size=32):
    keras.utils.set_random_seed(1)
    teacher = build_student(num_classes, teacher_size, "efficientnet_lite0", dropout=dropout)
    student = build_student(num_classes, 32, "efficientnet_lite0", dropout=dropout)
    return teacher, student


def _batch(n=8, num_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, size=(n, 32, 32, 3)).astype(np.float32)
    labels = (rng.uniform(size=(n, num_classes)) > 0.5).astype(np.float32)
    return images, labels


def test_distillation_step_updates_student_only():
    teacher, student = _tiny_pair()
    trainer = Trainer(student, teacher, alpha=0.7, temperature=2.0)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    images, labels = _batch()
    before_teacher = [w.copy() for w in teacher.get_weights()]
    before_student = [w.copy() for w in student.get_weights()]
    trainer.train_on_batch((images, images), labels)
    assert all(np.array_equal(a, b) for a, b in zip(before_teacher, teacher.get_weights()))
    changed = [not np.array_equal(a, b) for a, b in zip(before_student, student.get_weights())]
    assert sum(changed) > len(changed) // 2


def test_alpha_one_is_plain_training():
    teacher, student = _tiny_pair()
    images, labels = _batch()
    plain_student = keras.models.clone_model(student)
    plain_student.set_weights(student.get_weights())
    with_teacher = Trainer(student, teacher, alpha=1.0, temperature=2.0)
    plain = Trainer(plain_student)
    for t in (with_teacher, plain):
        t.compile(optimizer=keras.optimizers.SGD(0.1))
    loss_a = with_teacher.train_on_batch((images, images), labels)
    loss_b = plain.train_on_batch(images, labels)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for a, b in zip(student.get_weights(), plain_student.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)


def _step_under(replicas, weights_t, weights_s, images, labels, seeds=None, learning_rate=0.05):
    """One distillation step under a MirroredStrategy over ``replicas`` logical CPUs: (loss, student weights).

    With ``seeds`` the batch is ``((uint8 crops, seeds), labels)`` and the views are made in
    the step by the training augmentation, as in the stages.
    """
    from mobiletag.config import AugmentConfig
    from mobiletag.data.augment import TrainAugment

    strategy = cpu_strategy(replicas)
    with strategy.scope():
        # no per-replica randomness; with seeds the teacher sees 40-px views (the crop's size)
        teacher, student = _tiny_pair(dropout=0.0, teacher_size=40 if seeds is not None else 32)
        teacher.set_weights(weights_t)
        student.set_weights(weights_s)
        for layer in student.layers:  # per-replica batch statistics would differ; the reduction is under test
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        augment = TrainAugment([40, 32], AugmentConfig()) if seeds is not None else None
        trainer = Trainer(student, teacher, alpha=0.7, temperature=2.0, augment=augment)
        trainer.compile(optimizer=keras.optimizers.SGD(learning_rate))
    batch = ((images, seeds), labels) if seeds is not None else ((images, images), labels)
    history = trainer.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
    return history.history["loss"][0], student.get_weights()


def test_one_and_two_replicas_give_the_same_step():
    teacher, student = _tiny_pair(dropout=0.0)
    images, labels = _batch(n=8)
    loss1, weights1 = _step_under(1, teacher.get_weights(), student.get_weights(), images, labels)
    loss2, weights2 = _step_under(2, teacher.get_weights(), student.get_weights(), images, labels)
    assert loss1 == pytest.approx(loss2, rel=1e-4)
    for a, b in zip(weights1, weights2):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_two_replicas_with_in_step_augmentation_give_the_same_step():
    """uint8 crops + per-example seeds: each replica augments its half, the loss is the global mean."""
    teacher, student = _tiny_pair(dropout=0.0)
    rng = np.random.default_rng(5)
    crops = rng.integers(0, 256, size=(8, 40, 40, 3), dtype=np.uint8)
    seeds = rng.integers(0, 2**31, size=(8, 2), dtype=np.int64)
    labels = (rng.uniform(size=(8, 3)) > 0.5).astype(np.float32)
    args = (teacher.get_weights(), student.get_weights(), crops, labels, seeds)
    loss1, weights1 = _step_under(1, *args)
    loss2, weights2 = _step_under(2, *args)
    assert loss1 == pytest.approx(loss2, rel=1e-4)
    for a, b in zip(weights1, weights2):
        np.testing.assert_allclose(a, b, atol=2e-5)


def test_learning_rate_scales_with_the_global_batch_after_warmup():
    from mobiletag.training.fit import cosine_schedule, scaled_learning_rate, warmup_steps

    # 8 GPUs x 32 images = 256 against the reference batch 64: four times the configured rate
    assert scaled_learning_rate(1.0e-3, 256, 64) == pytest.approx(4.0e-3)
    assert scaled_learning_rate(1.0e-3, 32, 64) == pytest.approx(5.0e-4)
    steps_per_epoch, total = 50, 500
    warm = warmup_steps(1.0, steps_per_epoch, total)
    assert warm == 50
    schedule = cosine_schedule(4.0e-3, total, warm)
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(25)) == pytest.approx(2.0e-3, rel=1e-3)  # linear warmup
    assert float(schedule(50)) == pytest.approx(4.0e-3, rel=1e-3)  # the scaled peak
    assert float(schedule(499)) < 1.0e-4  # cosine decay to 1%
    constant = cosine_schedule(4.0e-3, total, warm, decay=False)
    assert float(constant(400)) == pytest.approx(4.0e-3, rel=1e-6)
    assert warmup_steps(5.0, steps_per_epoch, 100) == 99  # never the whole run


def test_a_phase_schedule_gives_the_optimizer_its_rate():
    """The driver's phases: constant (the student's head phase, QAT), a ramp then the rate held (the
    teacher's head phase), a ramp then cosine decay (the fine-tuning phases)."""
    from mobiletag.training.phases import Phase
    from mobiletag.training.stage_runner import learning_rate

    assert learning_rate(Phase("p", "f", 3, 1.0e-3, "constant", 1.0), 4.0e-3, 50) == 4.0e-3
    held = learning_rate(Phase("p", "f", 10, 1.0e-3, "hold", 1.0), 4.0e-3, 50)
    assert [float(held(step)) for step in (0, 50, 499)] == pytest.approx([0.0, 4.0e-3, 4.0e-3], rel=1e-6)
    decayed = learning_rate(Phase("p", "f", 10, 1.0e-3, "cosine", 1.0), 4.0e-3, 50)
    assert float(decayed(25)) == pytest.approx(2.0e-3, rel=1e-3)
    assert float(decayed(50)) == pytest.approx(4.0e-3, rel=1e-3)
    assert float(decayed(500)) == pytest.approx(4.0e-5, rel=1e-3)  # 1% of the peak at the end


def test_one_training_step_compiles_with_xla_on_cpu():
    """jit_compile=True (the GPU default): the step with its in-step augmentation (crop 40 px ->
    flip, colour jitter, resize to 32 px) compiles and runs. A compile check, not a speed test."""
    from mobiletag.config import AugmentConfig
    from mobiletag.data.augment import TrainAugment
    from mobiletag.models.student import preprocess

    _, student = _tiny_pair()
    trainer = Trainer(student, preprocess=preprocess, augment=TrainAugment([40, 32], AugmentConfig()))
    trainer.compile(optimizer=keras.optimizers.Adam(1.0e-3), jit_compile=True, steps_per_execution=2)
    rng = np.random.default_rng(2)
    crops = rng.integers(0, 256, size=(4, 40, 40, 3), dtype=np.uint8)
    seeds = rng.integers(0, 2**31, size=(4, 2), dtype=np.int64)
    labels = (rng.uniform(size=(4, 3)) > 0.5).astype(np.float32)
    before = [w.copy() for w in student.get_weights()]
    history = trainer.fit(tf.data.Dataset.from_tensors(((crops, seeds), labels)).repeat(2), epochs=1, verbose=0)
    assert math.isfinite(history.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, student.get_weights()))
    assert trainer._jit_compile


def test_nan_loss_stops_the_stage_at_epoch_end_without_a_per_step_check(tmp_path):
    from mobiletag.errors import TrainingError
    from mobiletag.training.fit import fit

    _, student = _tiny_pair()
    trainer = Trainer(student)
    trainer.compile(optimizer=keras.optimizers.SGD(1.0e30))  # diverges at once
    images, labels = _batch(n=8)
    train = tf.data.Dataset.from_tensors((images * 1.0e6, labels)).repeat()
    val = tf.data.Dataset.from_tensors((images, labels))
    with pytest.raises(TrainingError, match=r"NaN/inf in epoch 1"):
        fit(
            trainer,
            train,
            val,
            name="student",
            epochs=3,
            steps_per_epoch=4,
            batch_size=8,
            checkpoint=tmp_path / "best.h5",
            backup_dir=None,
            patience=0,
        )
    assert not (tmp_path / "best.h5").exists()  # nothing of the bad epoch was saved


@pytest.mark.slow
def test_student_stage_distils_and_writes_checkpoint(tfrecord_dir, teacher_dir, tiny_config, tmp_path):
    """The stage's validation mAP is its saved checkpoint's, validated on the stage's own input (the
    val TFRecords at the student's size, through its preprocess)."""
    from mobiletag.stages import train_student

    from ..checkpoint_checks import checkpoint_val_map

    backups = {"backup_uri": str(tmp_path / "backup"), "run_id": "r1"}
    result = train_student.run(tiny_config, tfrecord_dir, teacher_dir, tmp_path / "student", **backups)
    checkpoint = tmp_path / "student" / "student_best.h5"
    assert checkpoint.is_file()
    direct, constant = checkpoint_val_map(checkpoint, tfrecord_dir, tiny_config)
    assert result.metrics["val_map"] == round(direct, 4)
    # a constant score's AP per class is the class's prevalence: 0.310 on these 21 images, the
    # student 0.490 after its two epochs (the component test holds its students to the same bar)
    assert direct >= constant + 0.1
    assert result.metrics["epochs_warmup"] == 1 and result.metrics["epochs"] == 1
    assert result.metrics["train_images_per_second"] > 0
    model = keras.models.load_model(tmp_path / "student" / "student_best.h5", compile=False)
    assert model.output_shape == (None, 6)


def test_teacher_stage_output(teacher_dir):
    import json

    metrics = json.loads((teacher_dir / "teacher_metrics.json").read_text())
    assert (teacher_dir / "teacher_best.h5").is_file()
    assert metrics["metrics"]["epochs_phase_a"] == 1 and metrics["metrics"]["epochs_phase_b"] == 1
    # the figure is the best epoch's over both phases (each phase saves only what beats the ones
    # before it); test_best_model checks that validating teacher_best.h5 gives it
    history = metrics["history"]
    best_epoch = max(history["phase_a"]["val_map"] + history["phase_b"]["val_map"])
    assert metrics["metrics"]["val_map"] == round(best_epoch, 4)
    model = keras.models.load_model(teacher_dir / "teacher_best.h5", compile=False)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 6)


def test_a_gpu_step_without_a_visible_gpu_stops_at_once(tfrecord_dir, tiny_config, tmp_path):
    """The pipeline's GPU steps pass their GPU count: no silent days of training on the CPU."""
    from mobiletag.errors import TrainingError
    from mobiletag.stages import train_teacher
    from mobiletag.training.strategy import require_gpus

    assert not tf.config.list_physical_devices("GPU")  # this machine: CPU only
    with pytest.raises(TrainingError, match=r"given 4 GPU\(s\), but TensorFlow sees no GPU: .*(CPU-only build|driver)"):
        train_teacher.run(tiny_config, tfrecord_dir, tmp_path / "teacher", expected_gpus=4)
    assert not (tmp_path / "teacher" / "teacher_best.h5").exists()
    required = tiny_config.replace(multi_gpu=tiny_config.multi_gpu.__class__(require_gpu=True))
    with pytest.raises(TrainingError, match=r"'multi_gpu.require_gpu' is true, but TensorFlow sees no GPU"):
        require_gpus(0, required.multi_gpu)
    assert require_gpus(0, tiny_config.multi_gpu) == 0  # the CPU preset asks for none


def test_mixed_float16_step_scales_the_loss_and_updates_float32_weights():
    """Older GPUs (T4, V100) train in mixed_float16: Keras wraps the optimizer in a
    LossScaleOptimizer at compile, and the Trainer's minimize goes through it."""
    from mobiletag.training.precision import set_precision

    set_precision("float16")
    try:
        _, student = _tiny_pair()
        trainer = Trainer(student)
        trainer.compile(optimizer=keras.optimizers.Adam(1.0e-3))
        assert isinstance(trainer.optimizer, keras.mixed_precision.LossScaleOptimizer)
        images, labels = _batch(n=4)
        before = [w.copy() for w in student.get_weights()]
        loss = trainer.train_on_batch(images, labels)
        assert math.isfinite(loss)
        assert all(w.dtype == np.float32 for w in student.get_weights())
        assert any(not np.array_equal(a, b) for a, b in zip(before, student.get_weights()))
        assert student.get_layer("logits").compute_dtype == "float32"
    finally:
        set_precision("float32")


def test_early_stopping_after_a_restart_starts_from_the_restored_best(tmp_path):
    import json

    from mobiletag.training.fit import BestCheckpoint, ResumableEarlyStopping

    checkpoint = tmp_path / "student_best.h5"
    checkpoint.write_bytes(b"h5")
    checkpoint.with_suffix(".best.json").write_text(json.dumps({"val_map": 0.8, "epoch": 3, "phase": "student"}))
    restored = BestCheckpoint(None, checkpoint, resume=True, phase="student")
    stopping = ResumableEarlyStopping(restored, patience=2)
    stopping.set_model(keras.Sequential())
    stopping.on_train_begin()
    assert restored.restored and stopping.best == 0.8
    stopping.on_epoch_end(4, {"val_map": 0.7})  # worse than before the restart: no improvement
    assert stopping.wait == 1
    fresh = ResumableEarlyStopping(BestCheckpoint(None, tmp_path / "other.h5", best=0.9), patience=2)
    fresh.on_train_begin()
    assert fresh.best == -np.inf  # a new phase or run starts from scratch, as Keras' own


@pytest.mark.parametrize(
    "schedule, epochs, ramp, start",
    [
        ("cosine", 30, 0.0, 15),
        ("cosine", 50, 0.0, 25),
        ("cosine", 20, 1.0, 11),
        ("hold", 10, 2.0, 2),
        ("constant", 3, 0.0, 0),
    ],
)
def test_early_stopping_counts_from_half_the_peak_rate(schedule, epochs, ramp, start):
    """The first counted epoch is the first that starts in the lower half of the cosine decay (after the
    ramp): at or below the midpoint of the peak and the floor (1% of the peak)."""
    from mobiletag.training.phases import Phase
    from mobiletag.training.stage_runner import early_stopping_start, learning_rate

    phase = Phase("student", "student", epochs, 1.0, schedule, ramp)
    assert early_stopping_start(phase) == start
    if schedule == "cosine":
        steps = 13
        rate = learning_rate(phase, 1.0, steps)
        middle = (1.0 + 0.01) / 2
        assert float(rate(start * steps)) <= middle + 1e-6 < float(rate((start - 1) * steps))


def test_early_stopping_does_not_stop_before_its_first_counted_epoch(tmp_path):
    """A flat validation mAP (learning rate 0) with patience 1: stopped after epoch 2 when every epoch
    counts, after epoch 5 when counting starts at epoch 3 (its first counted epoch is a gain over none)."""
    from mobiletag.training.fit import fit

    images, labels = _batch(n=8)
    train = tf.data.Dataset.from_tensors((images, labels)).repeat()
    val = tf.data.Dataset.from_tensors((images, labels))

    def epochs_run(start: int) -> int:
        inputs = keras.Input(images.shape[1:])
        model = keras.Model(inputs, keras.layers.Dense(labels.shape[1])(keras.layers.GlobalAveragePooling2D()(inputs)))
        trainer = Trainer(model)
        trainer.compile(optimizer=keras.optimizers.SGD(0.0))
        result = fit(
            trainer,
            train,
            val,
            name=f"from {start}",
            epochs=8,
            steps_per_epoch=1,
            batch_size=8,
            checkpoint=tmp_path / f"best{start}.h5",
            backup_dir=None,
            patience=1,
            patience_from_epoch=start,
        )
        return result.epochs_run

    assert (epochs_run(0), epochs_run(3)) == (2, 5)


def test_a_sidecar_of_an_earlier_phase_is_not_taken_back(tmp_path):
    import json

    from mobiletag.training.fit import BestCheckpoint

    checkpoint = tmp_path / "teacher_best.h5"
    checkpoint.write_bytes(b"h5")
    checkpoint.with_suffix(".best.json").write_text(json.dumps({"val_map": 0.8, "epoch": 2, "phase": "warm-up"}))
    phase_b = BestCheckpoint(None, checkpoint, best=0.8, resume=True, phase="phase B")
    assert (phase_b.restored, phase_b.best, phase_b.best_epoch) == (False, 0.8, -1)
    warm_up = BestCheckpoint(None, checkpoint, resume=True, phase="warm-up")
    assert (warm_up.restored, warm_up.best, warm_up.best_epoch) == (True, 0.8, 2)


def test_a_fresh_phase_trains_the_same_with_backups_on_and_off(tmp_path):
    """Two phases sharing one best checkpoint, the second at learning rate 0 (its mAP never beats the
    first's). With backups on, the second phase once counted the folder just made for its backup as one
    to resume: it took the first phase's best epoch and started its patience from the first phase's mAP."""
    from mobiletag.training.backup import Backup
    from mobiletag.training.fit import fit

    images, labels = _batch(n=8)
    train = tf.data.Dataset.from_tensors((images, labels)).repeat()
    val = tf.data.Dataset.from_tensors((images, labels))

    def two_phases(root, backups: bool):
        keras.utils.set_random_seed(0)
        inputs = keras.Input(images.shape[1:])
        model = keras.Model(inputs, keras.layers.Dense(labels.shape[1])(keras.layers.GlobalAveragePooling2D()(inputs)))
        trainer = Trainer(model)
        backup = Backup(str(root / "backup") if backups else None)
        best = backup.folder("best") or root
        results = []
        for name, rate in (("phase A", 0.01), ("phase B", 0.0)):
            trainer.compile(optimizer=keras.optimizers.SGD(rate))
            results.append(
                fit(
                    trainer,
                    train,
                    val,
                    name=name,
                    epochs=3,
                    steps_per_epoch=2,
                    batch_size=8,
                    checkpoint=best / "best.h5",
                    backup_dir=backup.folder(name.replace(" ", "_")),
                    patience=1,
                    best_so_far=results[0].best_val_map if results else -math.inf,
                    backup=backup,
                )
            )
        return results

    off, on = two_phases(tmp_path / "off", False), two_phases(tmp_path / "on", True)
    assert off[0].best_epoch >= 0 and off[1].best_val_map == off[0].best_val_map
    assert (off[1].epochs_run, off[1].best_epoch) == (2, -1)  # early stopping after one epoch without gain
    for a, b in zip(off, on):
        assert (b.epochs_run, b.best_epoch, b.best_val_map, b.history) == (
            a.epochs_run,
            a.best_epoch,
            a.best_val_map,
            a.history,
        )

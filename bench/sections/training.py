"""Training steps: the student step fed by the pipeline against the same step in memory, the
distillation step against the student step plus the teacher's forward pass, the QAT step against
the float step."""

from __future__ import annotations

import operator
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import stats
import tensorflow as tf
import tf_keras as keras

from mobiletag.data.augment import TrainAugment
from mobiletag.data.tf_input import make_dataset
from mobiletag.models.student import build_student, preprocess
from mobiletag.models.teacher import build_teacher
from mobiletag.quantization.qat import quantize
from mobiletag.training.fit import Trainer
from sections import BLOCKS, PAUSE, ROUNDS, Blocked


def _step_fn(trainer: Trainer):
    """One compiled training step on a batch of the pipeline's structure: ((uint8 crops, seeds), labels)."""

    @tf.function
    def step(images, seeds, labels):
        return trainer.train_step(((images, seeds), labels))

    return step


def bench_training(
    tfrecords: Path, config, sizes: dict[str, int], batch: int, rounds: int = ROUNDS, steps: int = 4
) -> Blocked:
    """Training steps on batches as the input pipeline gives them: uint8 crops and per-example
    seeds, turned into float views by TrainAugment inside the step (in-memory batches too, so
    the in-memory baseline does the same work as the pipeline-fed step).

    Three ratios, each from ``rounds`` alternated rounds per block of ``steps`` steps per side:
    the student step fed by the pipeline against the same step in memory; the distillation step
    against the student step plus the teacher's forward pass (inference mode) on the same
    batch, the work distillation adds being that forward pass; the QAT step against the float
    student step.
    """
    out: dict = {
        "method": (
            f"{BLOCKS} blocks x {rounds} alternated rounds (A B A B ...) of {steps} steps per side; one ratio per round"
        ),
        "steps_per_sample": steps,
    }
    keras.utils.set_random_seed(0)
    s, t = sizes["student"], sizes["teacher"]
    aug = config.data.augment
    rng = np.random.default_rng(0)
    xs = tf.constant(rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8))
    xt = tf.constant(rng.integers(0, 256, (batch, t, t, 3), dtype=np.uint8))
    seeds = tf.constant(rng.integers(-(2**62), 2**62, (batch, 2)), tf.int64)
    y = tf.constant((rng.uniform(size=(batch, 6)) > 0.6).astype(np.float32))

    def in_memory(model: keras.Model, learning_rate: float) -> tuple[Callable, Callable[[], None]]:
        """A compiled training step of ``model``, and ``steps`` of its steps on the in-memory batch."""
        trainer = Trainer(model, preprocess=preprocess, augment=TrainAugment([s], aug))
        trainer.compile(optimizer=keras.optimizers.Adam(learning_rate))
        step = _step_fn(trainer)

        def run() -> None:
            for _ in range(steps):
                step(xs, seeds, y)

        return step, run

    student = build_student(6, s)
    step, student_steps = in_memory(student, 1e-4)

    # the same step fed by the real input pipeline: a fresh iterator per sample, timed after its first
    # batch, so that no sample is served from buffers filled while the machine was idle or while the
    # in-memory side ran, and no pipeline works on in the background of the next sample
    ds = make_dataset(
        tfrecords, "train", image_sizes=[s], batch_size=batch, training=True, repeat=True, num_classes=6, config=config
    )

    def fed() -> float:
        it = iter(ds)
        next(it)
        start = time.perf_counter()
        for _ in range(steps):
            (images, step_seeds), labels = next(it)
            step(images, step_seeds, labels)
        return time.perf_counter() - start

    # distillation: one crop at the teacher's size, views for the teacher (first) and student (last)
    teacher = build_teacher(6, t, weights="none")
    distill = Trainer(
        student, teacher, alpha=0.7, temperature=2.0, preprocess=preprocess, augment=TrainAugment([t, s], aug)
    )
    distill.compile(optimizer=keras.optimizers.Adam(1e-4))
    d_step = _step_fn(distill)
    xt_float = tf.cast(xt, tf.float32)
    teacher_fwd = tf.function(lambda x: teacher(x, training=False))

    def distill_steps():
        for _ in range(steps):
            d_step(xt, seeds, y)

    def teacher_forwards():
        for _ in range(steps):
            teacher_fwd(xt_float).numpy()  # numpy(): wait for it, as a training step's update does

    _, qat_steps = in_memory(quantize(build_student(6, s)), 1e-5)

    fed_s: dict[str, list[float]] = {}
    d: dict[str, list[float]] = {}
    q: dict[str, list[float]] = {}
    for block in range(BLOCKS):
        stats.extend(fed_s, stats.alternate({"in_memory": student_steps, "fed": fed}, rounds, pause=PAUSE))
        sides = {"distill": distill_steps, "student": student_steps, "teacher": teacher_forwards}
        stats.extend(d, stats.alternate(sides, rounds, pause=PAUSE))
        stats.extend(q, stats.alternate({"float": student_steps, "qat": qat_steps}, rounds, pause=PAUSE))
        if block < BLOCKS - 1:
            yield

    out["student_step_ms_in_memory"] = stats.milliseconds(fed_s["in_memory"], steps)
    out["student_step_ms_fed_by_pipeline"] = stats.milliseconds(fed_s["fed"], steps)
    out["pipeline_fed_vs_in_memory_step_rate"] = stats.summarize(
        stats.per_round(operator.truediv, fed_s["in_memory"], fed_s["fed"]), ">= 0.90"
    )
    out["distill_step_ms"] = stats.milliseconds(d["distill"], steps)
    out["student_step_ms_beside_distill"] = stats.milliseconds(d["student"], steps)
    out["teacher_forward_ms"] = stats.milliseconds(d["teacher"], steps)
    out["distill_vs_student_step_plus_teacher_forward"] = stats.summarize(
        stats.per_round(lambda a, b, c: a / (b + c), d["distill"], d["student"], d["teacher"]), "<= 1.10"
    )
    out["float_step_ms_beside_qat"] = stats.milliseconds(q["float"], steps)
    out["qat_step_ms"] = stats.milliseconds(q["qat"], steps)
    out["qat_vs_float_student_step"] = stats.summarize(
        stats.per_round(operator.truediv, q["qat"], q["float"]), "<= 1.40"
    )
    return out

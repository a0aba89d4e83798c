"""The student training step with op determinism on against off, and with TensorFlow's oneDNN CPU kernels
off against on, in child processes."""

from __future__ import annotations

import operator
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import stats
import tensorflow as tf
import tf_keras as keras

from mobiletag.config import load_config
from mobiletag.data.augment import TrainAugment
from mobiletag.data.tf_input import make_dataset
from mobiletag.models.student import build_student, preprocess
from mobiletag.training.fit import Trainer
from sections import BENCH, BLOCKS, DETERMINISM_MODES, PAUSE, REPO, ROUNDS, Blocked
from sections.training import _step_fn


def determinism_child(mode: str, tfrecords: Path) -> None:
    """A child of :func:`bench_determinism`: the student step in ``mode`` (:data:`DETERMINISM_MODES`).

    With ``on`` and ``onednn``: ``tf.config.experimental.enable_op_determinism()`` before anything
    runs, and the training dataset's ``tf.data.Options.deterministic`` set; ``onednn`` was started
    with ``TF_ENABLE_ONEDNN_OPTS=1`` (the others with 0, as ``import mobiletag`` sets it). Prints
    ``READY`` after its warm-up, then for each line ``KIND STEPS`` read from stdin (KIND: in_memory
    or fed) runs STEPS steps and prints ``SECONDS s``.
    """
    if mode != "off":
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)
    config = load_config(REPO / "configs" / "fast.yaml")
    s, batch = config.student.image_size, config.student.batch_size
    rng = np.random.default_rng(0)
    xs = tf.constant(rng.integers(0, 256, (batch, s, s, 3), dtype=np.uint8))
    seeds = tf.constant(rng.integers(-(2**62), 2**62, (batch, 2)), tf.int64)
    y = tf.constant((rng.uniform(size=(batch, 6)) > 0.6).astype(np.float32))
    trainer = Trainer(build_student(6, s), preprocess=preprocess, augment=TrainAugment([s], config.data.augment))
    trainer.compile(optimizer=keras.optimizers.Adam(1e-4))
    step = _step_fn(trainer)
    ds = make_dataset(
        tfrecords, "train", image_sizes=[s], batch_size=batch, training=True, repeat=True, num_classes=6, config=config
    )
    if mode != "off":
        options = tf.data.Options()
        options.deterministic = True
        ds = ds.with_options(options)

    def run(kind: str, steps: int) -> float:
        """Seconds of ``steps`` steps; fed: by a fresh iterator, timed after its first batch (as in
        training.bench_training)."""
        if kind == "fed":
            it = iter(ds)
            next(it)
        start = time.perf_counter()
        for _ in range(steps):
            if kind == "fed":
                (images, step_seeds), labels = next(it)
                step(images, step_seeds, labels)
            else:
                step(xs, seeds, y)
        return time.perf_counter() - start

    run("in_memory", 2)
    run("fed", 2)
    print("READY", flush=True)
    for line in iter(sys.stdin.readline, ""):
        kind, steps = line.split()
        print(f"SECONDS {run(kind, int(steps))}", flush=True)


def bench_determinism(tfrecords: Path, work: Path, rounds: int = ROUNDS, steps: int = 4) -> Blocked:
    """The student training step with op determinism on against off, and with oneDNN off against on.

    Op determinism is process-wide: TensorFlow has ``disable_op_determinism()`` (not exported;
    ``_pywrap_determinism.enable(False)``), but kernels and datasets read the flag when they
    are built and a traced step keeps them, so one process could not switch a step between
    the two, and TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it is imported. Child
    processes (``bench/run.py --determinism-child MODE``) therefore run :func:`determinism_child`,
    one per mode, all warmed up before timing; they are asked in turn (off, on, onednn, off, on,
    onednn ...) for ``steps`` steps in memory and then fed by the pipeline, ``rounds`` rounds per
    block; those not asked wait on their stdin (between the blocks too).
    """
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    children: dict[str, subprocess.Popen] = {}
    logs = {mode: work / f"determinism-{mode}.log" for mode in DETERMINISM_MODES}

    def fail(mode: str, what: str) -> SystemExit:
        tail = logs[mode].read_text(errors="replace")[-3000:] if logs[mode].is_file() else ""
        return SystemExit(f"determinism child ({mode}): {what}; its log {logs[mode]} ends:\n{tail}")

    def read(mode: str, prefix: str) -> str:
        stdout = children[mode].stdout
        assert stdout is not None
        for line in iter(stdout.readline, ""):
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        raise fail(mode, f"exited (code {children[mode].wait()}) before printing {prefix.strip()}")

    try:
        for mode in DETERMINISM_MODES:
            onednn = "1" if mode == "onednn" else "0"
            children[mode] = subprocess.Popen(
                [sys.executable, str(BENCH / "run.py"), "--determinism-child", mode, "--tfrecords", str(tfrecords)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=logs[mode].open("w"),
                text=True,
                env={**env, "TF_ENABLE_ONEDNN_OPTS": onednn},
            )
        for mode in DETERMINISM_MODES:
            read(mode, "READY")

        def ask(mode: str, kind: str) -> None:
            time.sleep(PAUSE)
            stdin = children[mode].stdin
            assert stdin is not None
            stdin.write(f"{kind} {steps}\n")
            stdin.flush()
            seconds[kind][mode].append(float(read(mode, "SECONDS ")))

        seconds: dict[str, dict[str, list[float]]] = {
            kind: {mode: [] for mode in DETERMINISM_MODES} for kind in ("in_memory", "fed")
        }
        for block in range(BLOCKS):
            for _ in range(rounds):
                for kind in seconds:
                    for mode in DETERMINISM_MODES:
                        ask(mode, kind)
            if block < BLOCKS - 1:
                yield
    finally:
        for child in children.values():
            if child.stdin:
                child.stdin.close()
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
    out: dict = {
        "method": (
            f"three child processes (op determinism off / on, the latter with tf.data deterministic, both with "
            f"oneDNN off; op determinism on with oneDNN on), "
            f"{BLOCKS} blocks x {rounds} rounds asked in turn, {steps} steps per sample; one ratio per round"
        ),
    }
    for kind, by_mode in seconds.items():
        for mode, values in by_mode.items():
            out[f"student_step_ms_{kind}_determinism_{mode}"] = stats.milliseconds(values, steps)
        out[f"{kind}_step_determinism_on_vs_off"] = stats.summarize(
            stats.per_round(operator.truediv, by_mode["on"], by_mode["off"])
        )
        out[f"{kind}_step_onednn_off_vs_on"] = stats.summarize(
            stats.per_round(operator.truediv, by_mode["on"], by_mode["onednn"])
        )
    return out

"""How a training attempt ends early: SIGTERM saves a backup at the next step and exits non-zero (the
pod ends Failed and is retried, resuming there); a deterministic failure leaves a marker so the retry
fails at once with the same message; the GPU check fails fast with the driver and CUDA versions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from mobiletag import storage
from mobiletag.config import MultiGpuConfig
from mobiletag.errors import ConfigError, DataError, Preempted, StorageError, TrainingError
from mobiletag.training import strategy
from mobiletag.training.attempts import MARKER_SUFFIX, records_failures
from mobiletag.training.backup import Backup, backup_prefix

from ..conftest import REPO
from .test_gcs import BUCKET
from .tiny_training import tiny_fit, tiny_model


class SigtermReachedDefault(Exception):
    """Raised by the test's own SIGTERM handler: no handler of the stage was installed."""


@pytest.fixture
def test_sigterm_handler():
    """A SIGTERM handler of the test's own (instead of the default action, which would end pytest)."""

    def handler(signum, frame):
        raise SigtermReachedDefault("SIGTERM reached the handler that was there before training")

    previous = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, previous)


# === SIGTERM during training ===


class SendSigterm(keras.callbacks.Callback):
    """Sends this process SIGTERM at the end of step ``step`` of epoch ``epoch`` (0-based); counts steps."""

    def __init__(self, epoch: int | None = None, step: int | None = None) -> None:
        super().__init__()
        self.at = (epoch, step)
        self.epoch = 0
        self.steps_run = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.steps_run += 1
        if (self.epoch, batch) == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def _tiny_fit(backup: Backup, initial: list[np.ndarray], sender: SendSigterm):
    """fit() of the tiny model from the weights ``initial``, Adam: 2 epochs of 4 steps."""
    model = tiny_model(initial)
    optimizer = keras.optimizers.Adam(0.01)
    return model, tiny_fit(model, optimizer, backup, name="tiny", epochs=2, steps_per_epoch=4, extra_callbacks=[sender])


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_sigterm_mid_epoch_saves_that_step_and_the_retry_ends_where_an_uninterrupted_run_does(
    where, tmp_path, test_sigterm_handler, request
):
    """SIGTERM after step 2 of epoch 2: Preempted, a backup of that step (on gs://: mirrored, and the
    retry restores it into a new pod's folder); the next attempt runs only steps 3-4 of epoch 2 and
    ends with the weights of a run never interrupted."""
    root = f"gs://{BUCKET}/backups" if where == "gcs" and request.getfixturevalue("gcs") else str(tmp_path / "backups")
    initial = tiny_model().get_weights()
    reference, _ = _tiny_fit(Backup(str(tmp_path / "ref")), initial, SendSigterm())

    backup = Backup(backup_prefix(root, "run-1", "train-student"), local_root=tmp_path / "pod-1")
    with pytest.raises(Preempted) as stopped:
        _tiny_fit(backup, initial, SendSigterm(epoch=1, step=1))
    assert signal.getsignal(signal.SIGTERM) is test_sigterm_handler  # the previous handler is back
    message = str(stopped.value)
    assert message.startswith("tiny: stopped by SIGTERM (node shutdown, e.g. a spot VM reclaimed) after step 2 of 4 "
                              "of epoch 2, "), message  # fmt: skip
    assert "backup of step 2 written in" in message and backup.prefix in message
    assert not (backup.local_dir / "fit.done.json").exists()  # the phase is not marked done
    backup.close()

    retry = SendSigterm()
    pod2 = Backup(backup.prefix, local_root=tmp_path / "pod-2")
    assert pod2.restore()
    model, result = _tiny_fit(pod2, initial, retry)
    assert retry.steps_run == 2  # steps 3 and 4 of epoch 2
    assert result.epochs_run == 1
    for got, want in zip(model.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


STUDENT_SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
import mobiletag
from mobiletag.config import load_config
from mobiletag.stages import train_student
from mobiletag.training import fit

class Telling(fit.EpochLog):  # says when the 2nd call of epoch 2 starts (steps 9-16 of 21: 8 a call)
    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.epoch == 1 and batch > 0 and not hasattr(self, "told"):
            self.told = print(f"EPOCH 2 STEP {batch + 1} STARTED", flush=True)

fit.EpochLog = Telling
config = load_config(sys.argv[1], {"student": {"alpha": 1.0, "weights": "none", "epochs": 2, "image_size": 64,
                                               "batch_size": 4},
                                   "multi_gpu": {"steps_per_execution": 8}})  # the cluster's grouping
train_student.run(config, sys.argv[2], sys.argv[3], sys.argv[4], backup_uri=sys.argv[5], run_id="run-1",
                  task="train-student-baseline")
print("STAGE DONE", flush=True)
"""


@pytest.mark.slow
def test_sigterm_to_a_training_pod_exits_non_zero_quickly_and_the_retry_resumes(tfrecord_dir, tmp_path):
    """The baseline student stage (alpha 1) as a pod runs it, SIGTERM from outside while steps 9-16 of its
    second epoch (of 21, steps_per_execution 8) run: exit status 1 (an exception, as KFP's executor turns
    it), the stage stopped within 10 s and the process gone within 25 s, a backup of the step it reached;
    the retry (same backup_uri and run id) resumes in epoch 2 at the next step."""
    script = tmp_path / "run.py"
    script.write_text(STUDENT_SCRIPT)
    backups = tmp_path / "backups"

    def command(pod: str) -> tuple[list[str], dict[str, str]]:
        tmp = tmp_path / pod / "tmp"
        tmp.mkdir(parents=True)
        args = [sys.executable, "-u", str(script), str(REPO / "configs" / "fast.yaml"), str(tfrecord_dir),
                str(tmp_path / "no-teacher"), str(tmp_path / pod / "student"), str(backups)]  # fmt: skip
        return args, {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp)}

    args, env = command("pod-1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen: list[str] = []
    signalled = None
    assert proc.stdout is not None
    for line in proc.stdout:
        seen.append(line)
        if signalled is None and "EPOCH 2 STEP 9 STARTED" in line:
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
    proc.wait()
    exit_seconds = time.monotonic() - signalled if signalled else None
    out = "".join(seen)
    assert signalled is not None, out[-3000:]
    assert proc.returncode == 1, out[-3000:]
    assert "mobiletag.errors.Preempted: student: stopped by SIGTERM" in out, out[-3000:]
    assert "backup of step" in out
    stopped = next(line for line in seen if "Preempted:" in line).strip()
    print(f"exit {exit_seconds:.1f} s after SIGTERM:", stopped)
    # the stage stops (step boundary + backup: 0.3-3.2 s here) and the process then exits after TensorFlow's
    # teardown (2-10 s on this shared 2-core machine, the longer under load)
    assert float(stopped.split(" s after the signal")[0].rsplit(", ", 1)[1]) < 10, stopped
    assert exit_seconds < 25, exit_seconds
    prefix = backups / "run-1" / "train-student-baseline"
    assert (prefix / "fit" / "chief" / "checkpoint").is_file()
    stopped_after = int(out.split("after step ")[1].split(" ")[0])

    args, env = command("pod-2")
    second = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    steps = int(out.split(f"after step {stopped_after} of ")[1].split(" ")[0])
    assert f"student: resuming epoch 2 at step {stopped_after + 1} of {steps}" in second.stdout, second.stdout[-3000:]
    epochs = [line.split(":")[0] for line in second.stdout.splitlines() if line.startswith("student epoch")]
    assert epochs == ["student epoch 2/2"], second.stdout[-3000:]  # steps 17-21 of epoch 2 only
    assert json.loads((tmp_path / "pod-2" / "student" / "student_metrics.json").read_text())["metrics"]["epochs"] == 1


# === Deterministic failures ===


def test_a_deterministic_failure_is_raised_again_without_running_and_others_are_not_recorded(tmp_path):
    calls, to_raise = [], []

    @records_failures("train-teacher")
    def stage(data_dir: str, *, backup_uri: str | None = None, run_id: str = "", epochs: int = 1) -> str:
        calls.append(data_dir)
        if to_raise:
            raise to_raise.pop()
        return "trained"

    root = str(tmp_path / "backups")
    marker = tmp_path / "backups" / "run-1" / f"train-teacher{MARKER_SUFFIX}"
    problem = DataError("labels.csv has problems", ["labels.csv:3: unknown class 'cat'"])
    to_raise.append(problem)
    with pytest.raises(DataError):
        stage("/pod-1/dataset", backup_uri=root, run_id="run-1")
    record = json.loads(marker.read_text())
    assert (record["kind"], record["message"]) == ("DataError", str(problem))

    with pytest.raises(DataError) as again:  # the retry (its own local folders): same kind and message, no run
        stage("/pod-2/dataset", backup_uri=root, run_id="run-1")
    assert calls == ["/pod-1/dataset"]
    first, *rest = str(again.value).split("\n(this task failed the same way on an earlier attempt, at ")
    assert first == str(problem)
    assert rest and rest[0].endswith(f"to retry this run as it is, e.g. after fixing the GPU node, delete {marker})")

    assert stage("d", backup_uri=root, run_id="run-2") == "trained"  # another run is not affected
    # the same run started again with another config (the local runner's same work dir): runs again
    to_raise.append(ConfigError("config key 'teacher.epochs' is -1"))
    with pytest.raises(ConfigError):
        stage("d", backup_uri=root, run_id="run-5", epochs=-1)
    assert stage("d", backup_uri=root, run_id="run-5", epochs=2) == "trained"
    assert not (tmp_path / "backups" / "run-5" / f"train-teacher{MARKER_SUFFIX}").exists()

    for transient in (StorageError("bucket unreachable"), Preempted("SIGTERM")):  # retries may succeed
        to_raise.append(transient)
        with pytest.raises(type(transient)):
            stage("d", backup_uri=root, run_id="run-3")
    to_raise.append(TrainingError("loss NaN"))
    with pytest.raises(TrainingError):
        stage("d", backup_uri="", run_id="run-4")  # backups off: nothing written
    assert sorted(p.name for p in (tmp_path / "backups").rglob("*") if p.is_file()) == [marker.name]


def test_the_marker_on_gcs_sits_beside_the_backup_and_survives_its_save_and_clear(gcs, tmp_path):
    @records_failures("quantize")
    def stage(*, backup_uri: str, run_id: str) -> None:
        raise ConfigError("config key 'qat.epochs' is -1; set it to 0 or more")

    root = f"gs://{BUCKET}/backups"
    with pytest.raises(ConfigError):
        stage(backup_uri=root, run_id="run-1")
    prefix = backup_prefix(root, "run-1", "quantize")
    backup = Backup(prefix, local_root=tmp_path)
    (backup.local_dir / "fit").mkdir(parents=True)
    (backup.local_dir / "fit" / "state").write_bytes(b"1")
    backup.save()
    backup.clear()
    names = {o.name for o in storage.list_prefix(f"{root}/run-1")}
    assert names == {f"quantize{MARKER_SUFFIX}"}
    with pytest.raises(ConfigError, match=r"^config key 'qat.epochs' is -1; set it to 0 or more\n\(this task failed"):
        stage(backup_uri=root, run_id="run-1")


ATTEMPT_SCRIPT = """
import json, sys, time
started = time.perf_counter()
sys.path.insert(0, sys.argv[1])
from kfp import dsl
from components.train_teacher import train_teacher
import mobiletag.stages.train_teacher  # TensorFlow: what every attempt imports, timed apart from the call
imported = time.perf_counter()
try:
    train_teacher.python_func(
        dataset=dsl.Dataset(name="dataset", uri=sys.argv[2], metadata={}),
        config_json=open(sys.argv[3]).read(),
        model=dsl.Model(name="teacher", uri=sys.argv[4], metadata={}),
        metrics=dsl.Metrics(name="metrics", uri=sys.argv[4] + "-metrics", metadata={}),
    )
    error = None
except Exception as exc:
    error = exc
failed = time.perf_counter()
print(json.dumps({"import_s": imported - started, "call_s": failed - imported, "kind": type(error).__name__,
                  "message": str(error)}))
"""


def test_a_config_error_makes_the_retry_fail_at_once_with_the_same_message(
    tfrecord_dir, tiny_config, tmp_path, monkeypatch
):
    """Attempt 1 (the component's python_func, in process) fails on teacher.batch_size; attempt 2, the same
    python_func in a new process as the pod runs it, fails with the same message before reading the
    dataset (it is not even there on attempt 2), in under 5 s from the call (the imports, TensorFlow's
    included, are timed apart: every attempt pays them)."""
    import dataclasses

    from kfp import dsl

    from mobiletag.stages.resolve_config import stage_config_json, training_steps

    monkeypatch.syspath_prepend(str(REPO))
    from components.train_teacher import train_teacher

    config = dataclasses.replace(tiny_config, teacher=dataclasses.replace(tiny_config.teacher, batch_size=100000))
    backups = str(tmp_path / "backups")
    config_json = stage_config_json(config, "train_teacher", training_steps(backups, 0, 0))
    monkeypatch.setenv("MOBILETAG_RUN_ID", "run-1")
    with pytest.raises(ConfigError) as first:
        train_teacher.python_func(
            dataset=dsl.Dataset(name="dataset", uri=str(tfrecord_dir), metadata={}),
            config_json=config_json,
            model=dsl.Model(name="teacher", uri=str(tmp_path / "pod-1" / "model"), metadata={}),
            metrics=dsl.Metrics(name="metrics", uri=str(tmp_path / "pod-1" / "metrics"), metadata={}),
        )
    assert "config key 'teacher.batch_size' is 100000" in str(first.value)

    (tmp_path / "config.json").write_text(config_json)
    (tmp_path / "run.py").write_text(ATTEMPT_SCRIPT)
    args = [sys.executable, str(tmp_path / "run.py"), str(REPO), str(tmp_path / "not-downloaded"),
            str(tmp_path / "config.json"), str(tmp_path / "pod-2" / "model")]  # fmt: skip
    started = time.perf_counter()
    second = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "MOBILETAG_RUN_ID": "run-1"})
    wall = time.perf_counter() - started
    assert second.returncode == 0, second.stderr[-3000:]
    attempt = json.loads(second.stdout.strip().splitlines()[-1])
    print(f"attempt 2: {wall:.1f} s in all, import {attempt['import_s']:.1f} s, call {attempt['call_s']:.2f} s")
    assert attempt["kind"] == "ConfigError"
    message, earlier = attempt["message"].split("\n", 1)
    assert message == str(first.value)
    assert earlier.startswith("(this task failed the same way on an earlier attempt")
    assert attempt["call_s"] < 5.0


# === The GPU check ===


def test_nvidia_driver_version_from_the_kernel_module(tmp_path):
    version = tmp_path / "version"
    version.write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
    )
    assert strategy.nvidia_driver_version(version, smi="no-such-nvidia-smi") == "535.104.05"
    assert strategy.nvidia_driver_version(tmp_path / "absent", smi="no-such-nvidia-smi") == "unknown"


def test_the_op_really_runs_on_each_device():
    assert strategy.check_gpus(["/device:CPU:0", "/device:CPU:1"]) == 2


def test_a_gpu_that_cannot_run_an_op_stops_the_step_with_driver_cuda_and_capability(monkeypatch):
    """An H100 (compute capability 9.0) on a driver too old for the build's compute_90 PTX: the step
    (training_devices, as the training stages enter it) fails before training, naming all of it."""
    build = tf.sysconfig.get_build_info()
    ran = []

    def fails(device: str) -> None:
        ran.append(device)
        raise tf.errors.InternalError(None, None, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the provided PTX was compiled "
                                      "with an unsupported toolchain.\nmore detail")  # fmt: skip

    monkeypatch.setattr(strategy, "require_gpus", lambda expected, cfg: 1)
    monkeypatch.setattr(strategy, "enable_memory_growth", lambda: None)
    monkeypatch.setattr(strategy, "visible_gpus", lambda: ["/device:GPU:0"])
    monkeypatch.setattr(strategy, "run_test_op", fails)
    h100 = {"device_name": "NVIDIA H100 80GB HBM3", "compute_capability": (9, 0)}
    monkeypatch.setattr(strategy, "gpu_details", lambda device: h100)
    monkeypatch.setattr(strategy, "nvidia_driver_version", lambda: "535.104.05")
    with pytest.raises(TrainingError) as failed, strategy.training_devices(MultiGpuConfig(), expected_gpus=1):
        pytest.fail("training started")
    assert ran == ["/device:GPU:0"]
    shipped = ", ".join(build["cuda_compute_capabilities"])
    assert str(failed.value) == (
        "GPU check failed on /device:GPU:0 (NVIDIA H100 80GB HBM3, compute capability 9.0): a 64x64 matmul could "
        "not run: InternalError: CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the provided PTX was compiled with an "
        f"unsupported toolchain. NVIDIA driver 535.104.05; TensorFlow {tf.__version__} built for CUDA "
        f"{build['cuda_version']}, cuDNN {build['cudnn_version']}, compute capabilities {shipped}. This TensorFlow "
        "ships machine code for sm_60, sm_70, sm_80, sm_89 only, so the driver must JIT-compile its compute_90 for "
        "compute capability 9.0: that needs a driver of branch R555 or newer (built with CUDA 12.5.1); upgrade the "
        "node's driver (on GKE: the node pool's GPU driver version 'latest', or a newer node image). Stopped "
        "before training."
    )

    l4 = {"device_name": "NVIDIA L4", "compute_capability": (8, 9)}  # native sm_89 code: a node problem
    monkeypatch.setattr(strategy, "gpu_details", lambda device: l4)
    with pytest.raises(
        TrainingError,
        match=r"Check the node: the driver must run CUDA 12\.5\.1 \(R555 or newer; R525\+ through CUDA 12 ",
    ):
        strategy.check_gpus()
    monkeypatch.setattr(strategy, "run_test_op", lambda device: None)
    assert strategy.check_gpus() == 1


def test_no_visible_gpu_names_the_driver_and_the_branch_the_build_needs(monkeypatch):
    monkeypatch.setattr(strategy, "nvidia_driver_version", lambda: "535.104.05")
    assert not tf.config.list_physical_devices("GPU")  # this machine: CPU only, a CUDA build of TensorFlow
    with pytest.raises(
        TrainingError,
        match=r"NVIDIA driver \(here: 535\.104\.05; it must be R555 or newer, or R525\+ through CUDA 12 minor",
    ):
        strategy.require_gpus(1, MultiGpuConfig())

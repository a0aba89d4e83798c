"""The console filter of `mobiletag train` and the log capture behind it."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

from mobiletag.progress import (
    EPOCH,
    RESULT,
    ConsoleFilter,
    Record,
    default_log_path,
    failure_report,
    parse_record,
    report_epoch,
    report_result,
    tail,
)

C, G, R, X = "\x1b[96m", "\x1b[92m", "\x1b[91m", "\x1b[0m"  # kfp.local's colours

# What kfp.local prints for one task (abridged from a real run): its own log lines, the
# component's executor logs indented by 4, the JSON dumps, TensorFlow's C++ log and warnings.
KFP_STREAM = f"""\
03:20:00.001 - INFO - Running pipeline: \x1b[95m'mobiletag'\x1b[0m
--------------------------------------------------------------------------------
03:20:00.100 - INFO - Executing task {C}'train-teacher'{X}
03:20:00.101 - INFO - Streamed logs:

    [KFP Executor 2026-11-26 03:20:01,000 INFO]: Looking for component `train_teacher` in --component_module_path
    [KFP Executor 2026-11-26 03:20:01,001 INFO]: Got executor_input:
    {{
        "inputs": {{
            "parameterValues": {{
                "config_json": "{{\\"teacher\\": {{}}}}"
            }}
        }}
    }}
    2026-11-26 03:20:05.000000: I tensorflow/core/platform/cpu_feature_guard.cc:210] This TensorFlow binary is optimized
    [KFP Executor 2026-11-26 03:20:06,000 INFO]: single device (CPU)
    [KFP Executor 2026-11-26 03:20:20,000 INFO]: teacher phase A epoch 1: loss=0.6931 val_map=0.4123 (12.3 s, 20.1 img/s) [epoch 1/1 head]
    [KFP Executor 2026-11-26 03:20:30,000 WARNING]: Compiled the loaded model, but the compiled metrics have yet to be built.
    [KFP Executor 2026-11-26 03:20:31,000 WARNING]: backup: saving epoch 2 failed, training goes on: disk full
    /work/x.py:3: UserWarning: You are saving your model as an HDF5 file via `model.save()`.
    [KFP Executor 2026-11-26 03:20:40,000 INFO]: teacher phase B epoch 1/10: loss=0.5000 val_map=0.6000 (9.0 s, 25.0 img/s) [epoch 1/10]
    [KFP Executor 2026-11-26 03:20:41,000 INFO]: teacher: validation mAP 0.6000 (phase B, epoch 1) [result]
    [KFP Executor 2026-11-26 03:20:41,500 INFO]: exported /tmp/mobiletag-kfp-3si42jkm/pipeline_root/mobiletag-2026-11-26-03-25-14-357564/export-tflite/model/model_qat_int8.tflite: 4896456 bytes, parity mean |diff| 0.0100, agreement 0.990 [result]
    [KFP Executor 2026-11-26 03:20:42,000 INFO]: Wrote executor output file to /tmp/x/executor_output.json


03:21:40.200 - INFO - Task {C}'train-teacher'{X} finished with status {G}SUCCESS{X}
03:21:40.201 - INFO - Task {C}'train-teacher'{X} outputs:
    metrics: Metrics( name='metrics',
                      uri='/tmp/pipeline_root/train-teacher/metrics',
                      metadata={{'val_map': 0.6}} )

--------------------------------------------------------------------------------
03:21:41.000 - INFO - Pipeline \x1b[95m'mobiletag'\x1b[0m finished with status {G}SUCCESS{X}
03:21:41.100 - INFO - Cleaned up workspace: /tmp/x
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def kept(stream: str, console: ConsoleFilter) -> list[str]:
    return [shown for line in stream.splitlines() if (shown := console(line)) is not None]


def test_kfp_stream_keeps_stages_epochs_results_and_our_warnings():
    clock = Clock()
    console = ConsoleFilter(clock=clock)
    lines = KFP_STREAM.splitlines()
    shown = []
    for line in lines:
        if "finished with status" in line and "Task" in line:
            clock.now += 100.4  # the task ran 100 s
        shown.append(console(line))
    stamps = [s[:9] for s in shown if s is not None and s[0].isdigit()]
    texts = [s[9:] if s[0].isdigit() else s for s in shown if s is not None]
    assert texts == [
        "Running pipeline: 'mobiletag'",
        "    teacher phase A epoch 1: loss=0.6931 val_map=0.4123 (12.3 s, 20.1 img/s)",
        "    WARNING: backup: saving epoch 2 failed, training goes on: disk full",
        "    teacher phase B epoch 1/10: loss=0.5000 val_map=0.6000 (9.0 s, 25.0 img/s)",
        "    teacher: validation mAP 0.6000 (phase B, epoch 1)",
        "    exported export-tflite/model/model_qat_int8.tflite: 4896456 bytes, parity mean |diff| 0.0100, agreement 0.990",
        "Task 'train-teacher' finished with status SUCCESS in 100 s",
        "Pipeline 'mobiletag' finished with status SUCCESS",
    ]
    assert all(len(s) == 9 and s[2] == ":" and s[5] == ":" for s in stamps)
    assert console.stage is None


def test_running_stage_is_tracked():
    clock = Clock()
    console = ConsoleFilter(clock=clock)
    console(f"03:20:00.100 - INFO - Executing task {C}'quantize'{X}")
    assert (console.stage, console.stage_started) == ("quantize", clock.now)
    clock.now += 5
    assert console(f"03:20:05.100 - INFO - Task {C}'quantize'{X} finished with status {R}FAILURE{X}").endswith(
        "Task 'quantize' finished with status FAILURE in 5 s"
    )
    assert console.stage is None


def test_executor_errors_are_kept_and_third_party_warnings_dropped():
    console = ConsoleFilter()
    prefix = "    [KFP Executor 2026-11-26 03:20:01,000 {}]: "
    assert console(prefix.format("ERROR") + "something broke") == "    ERROR: something broke"
    for noise in (
        "Found untraced functions such as _jit_compiled_convolution_op while saving",
        "No training configuration found in save file, so the model was *not* compiled.",
        "From /x/tensorflow/python/ops/foo.py:12: calling bar (from tensorflow) is deprecated",
    ):
        assert console(prefix.format("WARNING") + noise) is None, noise
    assert console(prefix.format("INFO") + "precision policy float32 (multi_gpu.mixed_precision: auto)") is None


def test_this_process_keeps_our_stage_lines_warnings_and_kfp_retries():
    console = ConsoleFilter()
    stream = """\
03:20:00 INFO mobiletag.runners.inprocess: === stage train_student ===
03:20:01 INFO mobiletag.stages.train_student: student: efficientnet-lite1 at 64 px distilled from the teacher
03:20:02 WARNING tensorflow: Compiled the loaded model, but the compiled metrics have yet to be built.
03:20:03 WARNING absl: Found untraced functions
03:20:10 INFO mobiletag.training.fit: student epoch 1/10: loss=0.3000 val_map=0.9000 (7.0 s, 90.0 img/s, about 63 s left) [epoch 1/10]
03:20:11 WARNING mobiletag.data.dataset: 2 image(s) are shared between splits; test figures will be optimistic
03:20:12 INFO mobiletag.stages.train_student: student: validation mAP 0.9000 (epoch 1) [result]
Traceback (most recent call last):
03:20:13 INFO root: Cleaned up workspace: /tmp/kfp-workspace-6u6kcodm
03:20:14 INFO root: Task train-student failed (attempt 1/4). Retrying in 60.0s...
03:20:20 INFO mobiletag.runners.inprocess: === stage train_student done in 20.4 s ===
03:20:21 INFO mobiletag.runners.inprocess: stage times: train_student 20 s [result]
"""
    texts = [s[9:] if s[0].isdigit() else s for s in kept(stream, console)]
    assert texts == [
        "stage train_student started",
        "    student epoch 1/10: loss=0.3000 val_map=0.9000 (7.0 s, 90.0 img/s, about 63 s left)",
        "    WARNING: 2 image(s) are shared between splits; test figures will be optimistic",
        "    student: validation mAP 0.9000 (epoch 1)",
        "Task train-student failed (attempt 1/4). Retrying in 60.0s...",
        "stage train_student done in 20 s",
        "    stage times: train_student 20 s",
    ]


def test_tail_and_failure_report(tmp_path):
    log = tmp_path / "out.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "DataError: val_labels.csv line 2: not an image\n")
    assert tail(log, 3) == ["line 98", "line 99", "DataError: val_labels.csv line 2: not an image"]
    assert tail(tmp_path / "absent.log") == []
    report = failure_report(log, 30).splitlines()
    assert report[0] == f"--- the last 30 lines of {log} ---"
    assert report[1] == "line 71" and report[-2].startswith("DataError: val_labels.csv line 2")
    assert report[-1] == f"--- full log: {log} ---" and len(report) == 32


KFP_FAILURE = f"""\
    [KFP Executor 2026-11-26 03:43:09,000 INFO]: Looking for component `prepare_dataset`
    Traceback (most recent call last):
      File "/work/main/src/mobiletag/data/dataset.py", line 147, in raise_if_any
    mobiletag.errors.DataError: dataset /tmp/data has unusable images: 1 problem(s) found; fix them and run again
      - val_labels.csv line 2 (set2/img_00006.jpg): not an image PIL can read (unknown or corrupt format)
{" " * 4}


03:43:10.696 - ERROR - Task 'prepare-dataset' finished with status FAILURE
--------------------------------------------------------------------------------
03:43:10 INFO root: Skipping task train-teacher: upstream task(s) ['prepare-dataset'] failed.
03:43:10 INFO root: Skipping task bundle: upstream task(s) ['evaluate'] failed.
03:43:10 INFO root: Cleaned up workspace: /tmp/kfp-workspace-q4rd70na
"""


def test_failure_report_ends_with_the_failed_task(tmp_path):
    log = tmp_path / "out.log"
    log.write_text(KFP_FAILURE)
    assert failure_report(log, 4).splitlines() == [
        f"--- the last 4 lines of {log}, up to the end of task 'prepare-dataset' ---",
        '      File "/work/main/src/mobiletag/data/dataset.py", line 147, in raise_if_any',
        "    mobiletag.errors.DataError: dataset /tmp/data has unusable images: 1 problem(s) found; fix them and run again",
        "      - val_labels.csv line 2 (set2/img_00006.jpg): not an image PIL can read (unknown or corrupt format)",
        "03:43:10.696 - ERROR - Task 'prepare-dataset' finished with status FAILURE",
        f"--- full log: {log} ---",
    ]
    assert ConsoleFilter()(KFP_FAILURE.splitlines()[-3]) is None  # skipped tasks: the log only


def test_default_log_path_is_beside_the_output_folder(tmp_path):
    assert default_log_path(tmp_path / "demo" / "output") == tmp_path / "demo" / "output.log"
    assert default_log_path(f"{tmp_path}/demo/output/") == tmp_path / "demo" / "output.log"


CAPTURE_SCRIPT = textwrap.dedent(
    """
    import logging, os, subprocess, sys
    from mobiletag.progress import ConsoleFilter, RunLog, report_epoch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    log = logging.getLogger("mobiletag.local_run")
    with RunLog(sys.argv[1], show=None if sys.argv[2] == "all" else ConsoleFilter()):
        log.info("=== stage prepare_dataset ===")
        print("a print in this process")
        os.write(2, b"2026-11-26 03:20:05.000000: I tensorflow/core/x.cc:1] written to fd 2 by C++\\n")
        subprocess.run([sys.executable, "-c", "print('a child process writes to the inherited stdout')"], check=True)
        report_epoch(logging.getLogger("mobiletag.training.fit"), 1, 1, "student epoch 1: loss=0.3 val_map=0.9 (7.0 s, 9.0 img/s)")
        if sys.argv[3] == "fail":
            print("ValueError: the reason, at the end of the log")
            raise SystemExit("failed")
        log.info("=== stage prepare_dataset done in 1.0 s ===")
    print("after the capture")
    """
)


def run_capture(tmp_path, show: str, outcome: str) -> tuple[subprocess.CompletedProcess[str], str]:
    log = tmp_path / "run.log"
    result = subprocess.run(
        [sys.executable, "-c", CAPTURE_SCRIPT, str(log), show, outcome], capture_output=True, text=True, timeout=120
    )
    return result, log.read_text()


def test_capture_sends_everything_to_the_file_and_the_kept_lines_to_the_console(tmp_path):
    result, logged = run_capture(tmp_path, "filtered", "ok")
    assert result.returncode == 0, result.stderr
    for text in ("a print in this process", "written to fd 2 by C++", "a child process writes", "student epoch 1"):
        assert text in logged, text
    console = [line[9:] if line[:1].isdigit() else line for line in result.stdout.splitlines()]
    assert console == [
        "stage prepare_dataset started",
        "    student epoch 1: loss=0.3 val_map=0.9 (7.0 s, 9.0 img/s)",
        "stage prepare_dataset done in 1 s",
        "after the capture",
    ]
    assert result.stderr == ""


def test_capture_shows_everything_when_asked(tmp_path):
    result, logged = run_capture(tmp_path, "all", "ok")
    assert result.returncode == 0, result.stderr
    assert "a child process writes" in result.stdout and "written to fd 2 by C++" in result.stdout
    assert len(result.stdout.splitlines()) == len(logged.splitlines()) + 1  # + "after the capture"


def test_failure_shows_the_end_of_the_log_and_its_path(tmp_path):
    result, logged = run_capture(tmp_path, "filtered", "fail")
    assert result.returncode == 1 and "ValueError: the reason" in logged
    err = result.stderr.splitlines()
    log = tmp_path / "run.log"
    assert err[0] == f"--- the last 6 lines of {log} ---"  # what the run wrote, before the traceback
    assert logged.rstrip().endswith("SystemExit: failed") and "Traceback" not in result.stderr
    assert "ValueError: the reason, at the end of the log" in err[-3:]
    assert f"--- full log: {log} ---" in err and err[-1] == "failed"
    assert "ValueError" not in result.stdout


def test_a_head_phase_shows_its_last_epoch_only():
    """A head phase's epochs train the head alone for a few short epochs: the console shows the last,
    which reads as the phase's result (two lines less per student in the demo); the log keeps all."""
    console = ConsoleFilter(clock=Clock())
    stream = [
        "    [KFP Executor 2026-11-26 03:20:20,000 INFO]: student warm-up epoch 1/2: loss=4.7589 val_map=0.5011 "
        "(25.1 s, 26.8 img/s, about 25 s left) [epoch 1/2 head]",
        "    [KFP Executor 2026-11-26 03:20:30,000 INFO]: student warm-up epoch 2/2: loss=3.4952 val_map=0.5705 "
        "(9.8 s, 68.8 img/s) [epoch 2/2 head]",
        "03:20:31 INFO mobiletag.training.fit: teacher phase A epoch 1/3: loss=0.6 val_map=0.3 (1.0 s, 9.0 img/s) "
        "[epoch 1/3 head]",
        "03:20:32 INFO mobiletag.training.fit: teacher phase A epoch 3/3: loss=0.5 val_map=0.4 (1.0 s, 9.0 img/s) "
        "[epoch 3/3 head]",
        "    [KFP Executor 2026-11-26 03:20:40,000 INFO]: "
        "student epoch 1/10: loss=1.9840 val_map=0.5360 (49.8 s, 13.5 img/s, about 448 s left) [epoch 1/10]",
        "03:20:41 INFO mobiletag.training.fit: qat epoch 1/2: loss=0.0399 val_map=1.0000 (50.2 s, 13.4 img/s, "
        "about 50 s left) [epoch 1/2]",
    ]
    assert [line.strip() for line in kept("\n".join(stream), console)] == [
        "student warm-up epoch 2/2: loss=3.4952 val_map=0.5705 (9.8 s, 68.8 img/s)",
        "teacher phase A epoch 3/3: loss=0.5 val_map=0.4 (1.0 s, 9.0 img/s)",
        "student epoch 1/10: loss=1.9840 val_map=0.5360 (49.8 s, 13.5 img/s, about 448 s left)",
        "qat epoch 1/2: loss=0.0399 val_map=1.0000 (50.2 s, 13.4 img/s, about 50 s left)",
    ]


# How a stage's log record reaches the console: through kfp's executor logging (kfp/dsl/executor_main.py),
# indented by kfp.local, or through this process's logging (cli.py's format)
TRANSPORTS = {
    "kfp.local": ("    ", "[KFP Executor %(asctime)s %(levelname)s]: %(message)s", None),
    "in-process": ("", "%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"),
}


def logged_lines(transport: str, emit) -> list[str]:
    """The lines that ``emit(logger)`` writes through ``transport``'s logging format."""
    indent, fmt, datefmt = TRANSPORTS[transport]
    lines: list[str] = []
    handler = logging.Handler()
    handler.setFormatter(logging.Formatter(fmt, datefmt))
    handler.emit = lambda record: lines.append(indent + handler.format(record))  # type: ignore[method-assign]
    logger = logging.getLogger("mobiletag.stages.some_stage")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    return lines


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_the_console_shows_records_whatever_their_words(transport):
    def emit(log):
        report_result(log, "the model weighs %d bytes", 4896456)  # words no stage uses
        report_result(log, "the gate says no: %s", "test macro mAP 0.20 < 0.50", level=logging.WARNING)
        log.info("test: macro mAP %.4f (float student %.4f)", 0.5, 0.6)  # a result's words, no record
        log.info("wrote /tmp/d: train 8 images / 1 shard(s) in 0.1 s")
        report_epoch(log, 1, 3, "head %d/%d, loss %.2f", 1, 3, 0.7, head=True)
        report_epoch(log, 3, 3, "head %d/%d, loss %.2f", 3, 3, 0.5, head=True)
        report_epoch(log, 1, 4, "whole model, round %d: loss %.2f", 1, 0.4)
        log.info("student epoch 2/10: loss=0.3000 val_map=0.9000 (7.0 s, 90.0 img/s)")  # an epoch's words, no record

    lines = logged_lines(transport, emit)
    assert len(lines) == 8 and lines[0].endswith("the model weighs 4896456 bytes [result]")
    assert [line.strip() for line in kept("\n".join(lines), ConsoleFilter())] == [
        "the model weighs 4896456 bytes",
        "the gate says no: test macro mAP 0.20 < 0.50",
        "head 3/3, loss 0.50",
        "whole model, round 1: loss 0.40",
    ]


def test_records_read_back():
    assert parse_record("exported /x/m.tflite: 5 bytes [result]") == Record(RESULT, "exported /x/m.tflite: 5 bytes")
    assert parse_record("a [b] c [epoch 2/5 head]") == Record(EPOCH, "a [b] c", 2, 5, True)
    assert parse_record("qat epoch 5/5: loss=0.1 [epoch 5/5]") == Record(EPOCH, "qat epoch 5/5: loss=0.1", 5, 5, False)
    for untagged in ("published gs://b/m/1", "x [results]", "x [epoch 2]", "x [epoch 1/2 tail]", "[result] x"):
        assert parse_record(untagged) is None, untagged
    assert [parse_record(f"e [epoch {i}/3 head]").shown for i in (1, 2, 3)] == [False, False, True]  # type: ignore[union-attr]
    assert parse_record("e [epoch 1/3]").shown  # type: ignore[union-attr]

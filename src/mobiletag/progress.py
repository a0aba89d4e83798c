"""What `mobiletag train` shows while the pipeline runs: a few lines on the console, everything in a log file.

Stages report what a person wants to see through :func:`report_result` and :func:`report_epoch`:
these log the message with a short tag at its end (``... [result]``, ``... [epoch 3/10]``), which
reaches this process's output whichever way the stage runs (a kfp.local task's executor log, or
this process's logging). :class:`RunLog` sends everything this process and its children write
(file descriptors 1 and 2, so TensorFlow's C++ logs too) to a log file, and passes each line
through a :class:`ConsoleFilter`, which keeps, without the tag:

- stage start and end (kfp.local's ``Executing task`` / ``Task ... finished``, or the in-process
  runner's ``=== stage ... ===``), with the stage's seconds;
- every epoch record, but of a head phase (a few short epochs training the head alone) only the
  last, which reads as the phase's result;
- every result record;
- warnings and errors of mobiletag's own code.

The words of a tagged message do not matter to the console. In a terminal, a status line under
them counts the running stage's time. On failure the end of the log (the failed task's traceback)
is shown with the log's path.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

TAIL_LINES = 30

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# kfp.local's own log lines: "03:22:01.123 - INFO - Executing task 'x'"
_KFP = re.compile(r"^\d\d:\d\d:\d\d\.\d+ - (?P<level>[A-Z]+) - (?P<message>.*)$")
# a component's logging (kfp's executor_main): "[KFP Executor 2026-11-26 03:22:01,123 INFO]: message"
_EXECUTOR = re.compile(r"^\s*\[KFP Executor [^\]]*? (?P<level>[A-Z]+)\]: (?P<message>.*)$")
# this process's logging (cli.py's format): "03:22:01 INFO mobiletag.runners.inprocess: message"
_OURS = re.compile(r"^\d\d:\d\d:\d\d (?P<level>[A-Z]+) (?P<name>[\w.]+): (?P<message>.*)$")

_TASK_START = re.compile(r"^Executing task '(?P<task>[^']+)'")
_TASK_END = re.compile(r"^Task '(?P<task>[^']+)' finished with status (?P<status>\w+)")
_PIPELINE = re.compile(r"^(Running pipeline: '[^']+'|Pipeline '[^']+' finished with status .*)")
_KFP_RETRY = re.compile(r"^Task \S+ failed \(attempt \d+/\d+\)")
# an artifact's folder, /tmp/mobiletag-kfp-x/pipeline_root/<run>/train-teacher/model: shown from the task on
_PIPELINE_ROOT = re.compile(r"/\S*/pipeline_root/[^/\s]+/")
_STAGE_START = re.compile(r"^=== stage (?P<task>\S+) ===$")
_STAGE_END = re.compile(r"^=== stage (?P<task>\S+) done in (?P<seconds>[\d.]+) s ===$")

RESULT = "result"
EPOCH = "epoch"
# a record's tag, at the end of its message: " [result]", " [epoch 3/10]", " [epoch 1/2 head]"
_RECORD = re.compile(
    rf"^(?P<message>.*?) \[(?:(?P<result>{RESULT})|{EPOCH} (?P<epoch>\d+)/(?P<epochs>\d+)(?P<head> head)?)\]$"
)
_LEVELS = ("WARNING", "ERROR", "CRITICAL")
# warnings of TensorFlow, Keras and absl that reach a component's log without their logger's name
THIRD_PARTY_WARNINGS = re.compile(
    r"^(?:Compiled the loaded model, but the compiled metrics"
    r"|No training configuration found in (?:the )?save file"
    r"|Found untraced functions"
    r"|Skipping full serialization of Keras layer"
    r"|Statistics for quantized inputs were expected"
    r"|Value in checkpoint could not be found"
    r"|Detecting that an object or model or tf\.train\.Checkpoint is being deleted"
    r"|A checkpoint was restored"
    r"|Unresolved object in checkpoint"
    r"|(?:Functions|Function) \S* ?(?:were|was) not (?:saved|traced)"
    r"|Your input ran out of data"
    r"|`?tf\."
    r"|From \S+: "
    r")"
)


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def report_result(logger: logging.Logger, message: str, *args: object, level: int = logging.INFO) -> None:
    """Logs a stage's result (``message % args``, one line): the console shows it, whatever its words."""
    logger.log(level, f"{message} [{RESULT}]", *args)


def report_epoch(
    logger: logging.Logger, epoch: int, epochs: int, message: str, *args: object, head: bool = False
) -> None:
    """Logs the end of epoch ``epoch`` (1-based) of ``epochs`` (``message % args``, one line).

    The console shows every epoch; of a ``head`` phase (the head trained alone for a few short
    epochs) only the last, which reads as the phase's result. The log file keeps them all.
    """
    logger.info(f"{message} [{EPOCH} {epoch}/{epochs}{' head' if head else ''}]", *args)


@dataclass(frozen=True)
class Record:
    """A message logged by :func:`report_result` or :func:`report_epoch`, read back from a log line."""

    kind: str  # RESULT or EPOCH
    message: str  # without its tag
    epoch: int = 0
    epochs: int = 0
    head: bool = False

    @property
    def shown(self) -> bool:
        """Whether the console shows it: all but a head phase's epochs before its last."""
        return not (self.kind == EPOCH and self.head and self.epoch < self.epochs)


def parse_record(message: str) -> Record | None:
    """The record a logged message carries, or None for a message without a tag."""
    if not (m := _RECORD.match(message)):
        return None
    if m["result"]:
        return Record(RESULT, m["message"])
    return Record(EPOCH, m["message"], int(m["epoch"]), int(m["epochs"]), bool(m["head"]))


def default_log_path(out_dir: str | Path) -> Path:
    """``<out_dir>.log`` beside the output folder: never inside what is published, one per output folder."""
    out = Path(out_dir).resolve()
    return out.parent / f"{out.name}.log"


class ConsoleFilter:
    """Decides which lines of the run's output reach the console, and how they read.

    Call it with each line (without its newline); it returns the console text, or None to keep the
    line in the log file only. It remembers which stage is running (:attr:`stage`, since
    :attr:`stage_started`) to give each stage's end its seconds.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.stage: str | None = None
        self.stage_started = 0.0
        self._starts: dict[str, float] = {}

    def _stamp(self) -> str:
        return time.strftime("%H:%M:%S", time.localtime(self.clock()))

    def _start(self, task: str) -> None:
        self.stage, self.stage_started = task, self.clock()
        self._starts[task] = self.stage_started

    def _end(self, task: str) -> float:
        seconds = self.clock() - self._starts.pop(task, self.clock())
        if self.stage == task:
            self.stage = None
        return seconds

    def __call__(self, line: str) -> str | None:
        line = strip_ansi(line).rstrip("\r\n")
        if m := _KFP.match(line):
            message = m["message"]
            if t := _TASK_START.match(message):
                # no line of its own: the stage's epoch and result lines name it, its end line gives
                # its time, and a terminal's status line shows it running (two screens for the demo)
                self._start(t["task"])
                return None
            if t := _TASK_END.match(message):
                seconds = self._end(t["task"])
                return f"{self._stamp()} Task '{t['task']}' finished with status {t['status']} in {seconds:.0f} s"
            if _PIPELINE.match(message) or m["level"] in _LEVELS:
                return f"{self._stamp()} {message}"
            return None
        if m := _EXECUTOR.match(line):
            message = m["message"]
            if record := parse_record(message):
                return f"    {_PIPELINE_ROOT.sub('', record.message)}" if record.shown else None
            if m["level"] in ("ERROR", "CRITICAL") or (
                m["level"] == "WARNING" and not THIRD_PARTY_WARNINGS.match(message)
            ):
                return f"    {m['level']}: {message}"
            return None
        if m := _OURS.match(line):
            message = m["message"]
            if t := _STAGE_START.match(message):
                self._start(t["task"])
                return f"{self._stamp()} stage {t['task']} started"
            if t := _STAGE_END.match(message):
                self._end(t["task"])
                return f"{self._stamp()} stage {t['task']} done in {float(t['seconds']):.0f} s"
            if m["name"] == "root" and (m["level"] in _LEVELS or _KFP_RETRY.match(message)):
                return f"{self._stamp()} {message}"  # kfp.local's orchestrator: retries, its warnings
            if not m["name"].startswith("mobiletag"):
                return None
            if record := parse_record(message):
                return f"    {record.message}" if record.shown else None
            if m["level"] in _LEVELS:
                return f"    {m['level']}: {message}"
        return None


def tail(path: str | Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a text file (empty when it does not exist)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [line.rstrip("\n") for line in deque(fh, maxlen=lines)]
    except FileNotFoundError:
        return []


def failure_report(path: str | Path, lines: int = TAIL_LINES) -> str:
    """The end of the log, framed with the log's path: what the console shows when the run failed.

    When a kfp.local task failed, the lines end with that task's end (its traceback just above),
    not with what kfp.local printed after it (the tasks it skipped, its clean-up).
    """
    window = tail(path, max(lines, 5000))
    where = ""
    for i in range(len(window) - 1, -1, -1):
        m = _KFP.match(strip_ansi(window[i]))
        if m and (t := _TASK_END.match(m["message"])) and t["status"] != "SUCCESS":
            body = window[:i]
            while body and not body[-1].strip():  # kfp.local's blank lines after a task's output
                body.pop()
            window, where = [*body, window[i]], f", up to the end of task '{t['task']}'"
            break
    last = window[-lines:]
    return "\n".join([f"--- the last {len(last)} lines of {path}{where} ---", *last, f"--- full log: {path} ---"])


class RunLog:
    """Captures this process's standard output and error (file descriptors 1 and 2) into a log file.

    Every line goes to ``path``; the lines ``show`` keeps (with its rewording) go to the console,
    i.e. where standard output pointed before. With ``show=None`` every line goes to the console as
    well (``mobiletag -v train``). Child processes started inside inherit the capture. On an
    exception the end of the log is written to the console's standard error; the exception is
    not swallowed.

    Args:
        path: the log file (its folder is created; an earlier file is replaced).
        show: the console filter, or None for everything.
        tail_lines: lines of the log shown on failure.
        status_line: in a terminal, a line under the others counting the running stage's time
            (default: when standard output is a terminal and ``show`` is given).
    """

    def __init__(
        self,
        path: str | Path,
        show: ConsoleFilter | None = None,
        tail_lines: int = TAIL_LINES,
        status_line: bool | None = None,
    ) -> None:
        self.path = Path(path)
        self.show = show
        self.tail_lines = tail_lines
        self.status_line = status_line
        self._lock = threading.Lock()
        self._status_shown = False
        self._stop = threading.Event()

    # --- the capture ---------------------------------------------------------------

    def __enter__(self) -> RunLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")  # closed in __exit__
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self._console: IO[str] = io.TextIOWrapper(
            io.FileIO(os.dup(self._saved[0]), "w"), encoding="utf-8", errors="replace", line_buffering=True
        )
        self._console_err: IO[str] = io.TextIOWrapper(
            io.FileIO(os.dup(self._saved[1]), "w"), encoding="utf-8", errors="replace", line_buffering=True
        )
        if self.status_line is None:
            self.status_line = self.show is not None and self._console.isatty()
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        # a pipe makes Python's stdout block-buffered: lines must come out as they are written
        self._buffering = [(s, s.line_buffering) for s in (sys.stdout, sys.stderr) if isinstance(s, io.TextIOWrapper)]
        for stream, _ in self._buffering:
            stream.reconfigure(line_buffering=True)
        self._reader = threading.Thread(target=self._pump, args=(read_end,), name="runlog-reader", daemon=True)
        self._reader.start()
        if self.status_line:
            self._ticker = threading.Thread(target=self._tick, name="runlog-status", daemon=True)
            self._ticker.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os.dup2(self._saved[0], 1)  # closes the pipe's write end: the reader sees its end
            os.dup2(self._saved[1], 2)
            for fd in self._saved:
                os.close(fd)
            for stream, buffering in self._buffering:
                stream.reconfigure(line_buffering=buffering)
            self._reader.join(timeout=10)
            self._stop.set()
            if self.status_line:
                self._ticker.join(timeout=5)
            with self._lock:
                self._clear_status()
                report = None
                if exc is not None:
                    self._file.flush()
                    if not isinstance(exc, KeyboardInterrupt):
                        report = failure_report(self.path, self.tail_lines)  # what the run printed, ends with why
                    # the log holds the whole story, this process's traceback too
                    self._file.write(strip_ansi("".join(traceback.format_exception(exc_type, exc, tb))))
                self._file.close()
                if report is not None:
                    self._console_err.write(report + "\n")
                self._console.close()
                self._console_err.close()

    def _pump(self, fd: int) -> None:
        """Reads the captured output line by line: everything to the file, the kept lines to the console."""
        with open(fd, encoding="utf-8", errors="replace", newline="\n") as pipe:
            for raw in pipe:
                line = raw.rstrip("\n")
                with self._lock:
                    if self._file.closed:  # something outlived the capture: its output is dropped
                        continue
                    self._file.write(strip_ansi(line).rstrip("\r") + "\n")
                    self._file.flush()
                    shown = raw.rstrip("\n") if self.show is None else self.show(line)
                    if shown is not None:
                        self._clear_status()
                        self._console.write(shown + "\n")
                        self._draw_status()

    # --- the status line (a terminal only) -----------------------------------------

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                self._draw_status()

    def _draw_status(self) -> None:
        if not self.status_line or self.show is None or self._console.closed:
            return
        if self.show.stage is None:
            self._clear_status()
            return
        seconds = int(self.show.clock() - self.show.stage_started)
        self._console.write(f"\r\x1b[K  {self.show.stage}: running for {seconds // 60}m{seconds % 60:02d}s")
        self._console.flush()
        self._status_shown = True

    def _clear_status(self) -> None:
        if self._status_shown and not self._console.closed:
            self._console.write("\r\x1b[K")
            self._console.flush()
            self._status_shown = False

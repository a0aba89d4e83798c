"""MediaPipe Tasks from TensorFlow's side: TFLite metadata and ImageClassifier, through a subprocess.

``mediapipe==0.10.21`` (the last release whose metadata writers work) needs protobuf < 5 and
cannot share an environment with TensorFlow 2.21, so it lives in an interpreter of its own and
this module never imports it: it runs ``mediapipe_tool.py`` (beside this file) with that
interpreter. Where the interpreter is, in this order: the one given; ``/opt/mediapipe/bin/python``
(images/mediapipe.Dockerfile); ``.venv-mediapipe`` beside the running virtual environment (the
project's ``.venv`` -> ``.venv-mediapipe``, made by ``make install``); ``.venv-mediapipe`` in the
source checkout this package runs from.

The metadata's score calibration: one sigmoid per class, ``score = sigmoid(logit(p) - logit(t'_c))``,
where ``p`` is the model's output (the probability) and ``t'_c`` the class threshold placed halfway
between two output levels (``calibration_thresholds``): the calibrated score is >= 0.5 exactly
when ``p >= t_c``, and float rounding inside MediaPipe cannot flip a decision. With the
metadata's score threshold of 0.5, ImageClassifier's default options return the labels that apply.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobiletag.artifacts import ExportedModel
from mobiletag.errors import ExportError
from mobiletag.export.litert import TensorSpec
from mobiletag.export.mediapipe_tool import DATA_LENGTH, NAME_LENGTH

log = logging.getLogger(__name__)

MEDIAPIPE_VERSION = "0.10.21"
TOOL = Path(__file__).with_name("mediapipe_tool.py")
IMAGE_INTERPRETER = Path("/opt/mediapipe/bin/python")
VENV_NAME = ".venv-mediapipe"
SCORE_THRESHOLD = 0.5  # the metadata's global score threshold: the calibrated score of a class at its threshold
# seconds: metadata is quick; classify decodes every test image (phone photos: ~100 ms each)
TIMEOUT = 6 * 3600


class MediaPipeError(ExportError):
    """The MediaPipe interpreter is missing, or the tool failed."""


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def interpreter_candidates() -> list[Path]:
    """Where the MediaPipe interpreter is looked for, in order (see the module's docstring)."""
    found = [IMAGE_INTERPRETER, _venv_python(Path(sys.prefix).parent / VENV_NAME)]
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "pyproject.toml").is_file():
        found.append(_venv_python(checkout / VENV_NAME))
    return list(dict.fromkeys(found))


def find_interpreter(interpreter: str | Path | None = None) -> Path:
    """The MediaPipe interpreter: ``interpreter`` when given, else the first of
    ``interpreter_candidates`` that exists."""
    if interpreter is not None:
        if not Path(interpreter).is_file():
            raise MediaPipeError(
                f"the MediaPipe interpreter {interpreter} does not exist: give the python of an environment "
                f"with mediapipe=={MEDIAPIPE_VERSION}"
            )
        return Path(interpreter)
    candidates = interpreter_candidates()
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MediaPipeError(
        f"no MediaPipe interpreter (looked for {', '.join(str(c) for c in candidates)}): mediapipe=={MEDIAPIPE_VERSION} "
        "needs an environment of its own (protobuf < 5, TensorFlow needs >= 5). `make install` creates "
        f"{VENV_NAME} beside .venv; elsewhere run `python3 -m venv {VENV_NAME} && "
        f"{VENV_NAME}/bin/pip install mediapipe=={MEDIAPIPE_VERSION}` next to the virtual environment that runs mobiletag"
    )


def run_tool(
    command: str, args: Sequence[str], interpreter: str | Path | None = None, stdin: Iterable[bytes] = ()
) -> dict[str, Any]:
    """Run ``mediapipe_tool.py <command> <args>`` with the MediaPipe interpreter; its JSON summary.

    ``stdin``: chunks written to the tool's standard input while it runs (its output goes to
    files, so neither side can block the other).
    """
    python = find_interpreter(interpreter)
    argv = [str(python), "-I", str(TOOL), command, *args]  # -I: no PYTHONPATH, no user site
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        try:
            process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=stdout, stderr=stderr)
        except OSError as exc:
            raise MediaPipeError(f"running the MediaPipe tool ({python} {TOOL.name} {command}) failed: {exc}") from exc
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            process.kill()

        timer = threading.Timer(TIMEOUT, stop)
        timer.start()
        try:
            assert process.stdin is not None
            try:
                for chunk in stdin:
                    process.stdin.write(chunk)
                process.stdin.close()
            except BrokenPipeError:
                pass  # the tool stopped early: its exit status and stderr say why
            returncode = process.wait()
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            timer.cancel()
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read().decode("utf-8", "replace"), stderr.read().decode("utf-8", "replace")
    if returncode != 0:
        if timed_out.is_set():
            raise MediaPipeError(f"the MediaPipe tool ({python} {TOOL.name} {command}) ran out of its {TIMEOUT} s")
        # MediaPipe's own log lines (absl, XNNPACK) come first; the reason is at the end
        tail = "\n".join(line for line in err.strip().splitlines()[-8:] if line.strip())
        raise MediaPipeError(
            f"the MediaPipe tool failed ({python} {TOOL.name} {command}, exit status {returncode}):\n{tail}"
        )
    try:
        return dict(json.loads(out.strip().splitlines()[-1]))
    except (IndexError, json.JSONDecodeError) as exc:
        raise MediaPipeError(f"the MediaPipe tool ({command}) printed no JSON summary: {out[-400:]!r}") from exc


# === Metadata ===


def calibration_thresholds(thresholds: Sequence[float], output: TensorSpec) -> list[float]:
    """The per-class thresholds the calibration uses: each ``t_c`` moved to halfway between the two
    output levels around it, so ``p >= t'_c`` holds for the same outputs as ``p >= t_c`` and no
    output lies within half a step of ``t'_c`` (a float32 rounding in MediaPipe cannot flip it).

    A float output keeps its thresholds. A threshold at or below the lowest level (every image
    gets the label) becomes half a step above 0: an output of exactly 0 then reads as "no" in
    MediaPipe (logit(0) is -inf); one above the highest level, half a step below 1.
    """
    if output.dtype == "float32" or output.scale <= 0:
        return [min(max(float(t), 1e-6), 1 - 1e-6) for t in thresholds]
    info = np.iinfo(output.dtype)
    lowest, highest = int(info.min), int(info.max)
    out = []
    for t in thresholds:
        first = math.ceil(float(t) / output.scale + output.zero_point - 1e-9)  # the lowest level with p >= t
        first = min(max(first, lowest + 1), highest + 1)
        moved = (first - 0.5 - output.zero_point) * output.scale
        out.append(min(max(moved, output.scale / 2), 1 - output.scale / 2))
    return out


def metadata_description(labels: Sequence[str], thresholds: Sequence[float]) -> str:
    """The model description in the metadata: what the scores mean and the thresholds."""
    listed = ", ".join(f"{label} {t:g}" for label, t in zip(labels, thresholds))
    return (
        "Multi-label image classifier (mobiletag): one sigmoid probability p per class. Input: the whole RGB image "
        "resized to the input size, uint8 pixels 0..255. With this metadata MediaPipe Tasks' ImageClassifier "
        "reports calibrated scores sigmoid(logit(p) - logit(t_c)), which reach 0.5 exactly when p reaches the "
        "class threshold t_c; the metadata's score threshold 0.5 makes the default options return the labels that "
        "apply. The raw output tensor stays the probability p. Thresholds (validation): " + listed
    )


def write_metadata(
    model_in: str | Path,
    model_out: str | Path,
    labels: Sequence[str],
    thresholds: Sequence[float],
    *,
    name: str = "mobiletag",
    description: str = "",
    version: str = "",
    output: TensorSpec | None = None,
    interpreter: str | Path | None = None,
) -> dict[str, Any]:
    """Write ``model_out``: ``model_in`` with TFLite metadata for MediaPipe Tasks (labels,
    per-class score calibration at ``thresholds``, global score threshold 0.5).

    ``output``: the model's output tensor, to place the calibration thresholds between its
    levels (``calibration_thresholds``); None: use ``thresholds`` as they are. Returns the tool's
    summary (``metadata``: the metadata JSON) with ``calibration_thresholds`` added.
    """
    if len(labels) != len(thresholds):
        raise MediaPipeError(f"{len(labels)} labels but {len(thresholds)} thresholds: give one threshold per label")
    used = calibration_thresholds(thresholds, output) if output is not None else [float(t) for t in thresholds]
    with tempfile.TemporaryDirectory(prefix="mobiletag-mediapipe-") as tmp:
        labels_file, thresholds_file = Path(tmp) / ExportedModel.LABELS, Path(tmp) / "thresholds.json"
        labels_file.write_text("\n".join(labels) + "\n", encoding="utf-8")
        thresholds_file.write_text(json.dumps(used), encoding="utf-8")
        summary = run_tool(
            "write-metadata",
            [
                "--model-in",
                str(model_in),
                "--model-out",
                str(model_out),
                "--labels",
                str(labels_file),
                "--thresholds",
                str(thresholds_file),
                "--name",
                name,
                "--description",
                description or metadata_description(labels, thresholds),
                "--version",
                version,
                "--global-score-threshold",
                str(SCORE_THRESHOLD),
            ],
            interpreter,
        )
    summary["calibration_thresholds"] = used
    return summary


def read_metadata(model: str | Path, interpreter: str | Path | None = None) -> dict[str, Any]:
    """The model's metadata (``metadata``, parsed JSON) and associated files' text (``associated_files``)."""
    return run_tool("read-metadata", ["--model", str(model)], interpreter)


# === ImageClassifier ===


@dataclass(frozen=True)
class Classified:
    """ImageClassifier's results over a list of images.

    Attributes:
        scores: calibrated scores [N, C] (float32, label order), every category.
        label_sets: per image, the label indices returned with the model's default options.
        timings: milliseconds per image for decoding (with the pre-scale, when asked) and for classify.
    """

    scores: np.ndarray
    label_sets: list[list[int]]
    timings: dict[str, float] = field(default_factory=dict)

    def decisions(self, num_classes: int) -> np.ndarray:
        """The label sets as a 0/1 matrix [N, C]."""
        out = np.zeros((len(self.label_sets), num_classes), np.uint8)
        for row, indices in enumerate(self.label_sets):
            out[row, indices] = 1
        return out


Image = tuple[str, bytes]  # (name for messages, the image file's bytes)


def classify(
    model: str | Path,
    images: Iterable[str | Path | Image],
    interpreter: str | Path | None = None,
    *,
    prescale_to: tuple[int, int] | None = None,
) -> Classified:
    """Run MediaPipe's ImageClassifier (the model's metadata, default options) over images: file
    paths, or (name, file bytes) pairs. They stream to the tool through a pipe one at a time, so
    an iterator that reads each file when asked (``iter_originals``) keeps a few images in memory
    and nothing on disk; an error it raises stops the tool and is raised here.

    ``prescale_to``: the model input's (width, height): the tool pre-scales each decoded image
    for it as the documented app path does (:func:`mobiletag.export.app_input.prescale`, the
    same code) before ImageClassifier resizes it; None: ImageClassifier gets the decoded image."""

    def framed() -> Iterator[bytes]:
        for image in images:
            if isinstance(image, (str, Path)):
                try:
                    name, data = str(image), Path(image).read_bytes()
                except OSError as exc:
                    raise MediaPipeError(f"cannot read the image {image}: {exc.strerror or exc}") from exc
            else:
                name, data = image
            encoded = name.encode("utf-8")
            yield NAME_LENGTH.pack(len(encoded)) + encoded + DATA_LENGTH.pack(len(data))
            yield data

    with tempfile.TemporaryDirectory(prefix="mobiletag-mediapipe-") as tmp:
        out = Path(tmp) / "scores.npy"
        args = ["--model", str(model), "--stdin", "--out", str(out)]
        if prescale_to is not None:
            args += ["--prescale-to", str(int(prescale_to[0])), str(int(prescale_to[1]))]
        summary = run_tool("classify", args, interpreter, framed())
        scores = np.load(out)
        label_sets = json.loads(out.with_suffix(".labels.json").read_text(encoding="utf-8"))
    timings = {k: float(v) for k, v in summary.items() if k.endswith("_per_image")}
    return Classified(scores=scores, label_sets=label_sets, timings=timings)


def raw_probabilities(scores: np.ndarray, calibration: Sequence[float]) -> np.ndarray:
    """Invert the calibration: ``p = sigmoid(logit(score) + logit(t'_c))`` (float64 inside)."""
    s = np.clip(scores.astype(np.float64), 1e-12, 1 - 1e-12)
    t = np.asarray(calibration, np.float64)
    x = np.log(s) - np.log1p(-s) + np.log(t) - np.log1p(-t)
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def inference_config_entry(summary: dict[str, Any]) -> dict[str, Any]:
    """inference_config.json's "mediapipe" entry: the two readings of the model, from mediapipe-package's
    summary (mediapipe.json)."""
    return {
        "metadata": (
            "the model file carries TFLite metadata for MediaPipe Tasks (ImageClassifier on Android, iOS, web, "
            "Python): name, version, labels, one score calibration per class, score threshold 0.5"
        ),
        "raw_output": "the output tensor is the probability p (dequantize as in output); a label applies when p >= "
        "its threshold (thresholds)",
        "calibrated_score": (
            "MediaPipe reports score = sigmoid(logit(p) - logit(t'_c)) per class, t'_c = calibration_thresholds[c] "
            "(the threshold moved halfway between two output levels): score >= 0.5 exactly when p >= thresholds[c]; "
            "with default options ImageClassifier returns the labels that apply. p = sigmoid(logit(score) + "
            "logit(t'_c)) gives the probability back"
        ),
        "score_threshold": summary.get("score_threshold", SCORE_THRESHOLD),
        "calibration_thresholds": dict(summary["calibration_thresholds"]),
        "mediapipe_version": summary.get("mediapipe_version", MEDIAPIPE_VERSION),
    }

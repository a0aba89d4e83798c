"""MediaPipe side of mobiletag: TFLite metadata and MediaPipe Tasks' ImageClassifier.

A standalone script, run BY PATH with the MediaPipe interpreter (``.venv-mediapipe/bin/python``
made by ``make install``; ``/opt/mediapipe/bin/python`` in images/mediapipe.Dockerfile). It
imports only the standard library, numpy, PIL and ``mediapipe==0.10.21`` (the last release whose
metadata writers work; it needs protobuf < 5, so it cannot share TensorFlow 2.21's environment),
never the ``mobiletag`` package: ``classify --prescale-to`` loads ``app_input.py`` (beside this
file; numpy and PIL only) by path for the app's pre-scale. ``mobiletag.export.mediapipe`` calls
it through a subprocess.

Subcommands (each prints one JSON object on stdout; an error is one line on stderr, exit status 2):

``write-metadata --model-in M --model-out O --labels L --thresholds T.json --name --description --version``
    Writes O: M with TFLite metadata that MediaPipe Tasks reads: name, description, version,
    image input (mean 0, std 1: MediaPipe ignores normalisation for a uint8 input), labels, one
    score-calibration line per class (INVERSE_LOGISTIC, scale 1, slope 1, offset ``-logit(t_c)``:
    the calibrated score ``sigmoid(logit(p) - logit(t_c))`` reaches 0.5 exactly when the
    probability ``p`` reaches the class threshold ``t_c``) and a global score threshold of 0.5,
    so that ImageClassifier with default options returns exactly the labels that apply.
    ``T.json`` is a JSON list of thresholds in label order, each strictly between 0 and 1.

``read-metadata --model M``
    The metadata as JSON and the associated files' text (labels, calibration).

``classify --model M (--images I.json | --stdin) --out S.npy [--score-threshold X] [--prescale-to W H]``
    Runs ImageClassifier over the files listed in I.json (a JSON list of paths), or over the
    images framed on standard input (``--stdin``: per image, the name's length as 4 bytes
    big-endian, the name in UTF-8, the data's length as 8 bytes big-endian, the file's bytes;
    end of input ends the list: nothing is written to disk and one image is held at a time),
    decoded as an app does (PIL, EXIF orientation applied, RGB) and, with ``--prescale-to W H``
    (the model's input width and height), pre-scaled as the documented app path does
    (``app_input.prescale``: the mean of kx x ky blocks, kx = W_image // W, ky = H_image // H)
    before ImageClassifier gets it. Writes S.npy: the calibrated scores [N, C]
    (float32, label order) with every category returned (score threshold 0), and
    ``S.labels.json``: per image, the label indices ImageClassifier returns with the model's
    default options (the metadata's score threshold, 0.5) or ``--score-threshold``.
    Calibrated scores rank the images of a class as the raw probability does (per-class AP is
    unchanged); ``p = sigmoid(logit(score) + logit(t_c))`` gives the probability back.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import io
import json
import math
import os
import struct
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

MEDIAPIPE_VERSION = "0.10.21"
# Run by path, Python puts this folder first on sys.path, where mobiletag's mediapipe.py would
# shadow the mediapipe package: take it off.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]


class ToolError(Exception):
    """A problem with the arguments or the files: one line on stderr, exit status 2."""


def _mediapipe() -> Any:
    try:
        import mediapipe
    except ImportError as exc:
        raise ToolError(
            f"{sys.executable} cannot import mediapipe ({exc}): run this tool with the MediaPipe interpreter "
            f"(`make install` creates .venv-mediapipe with mediapipe=={MEDIAPIPE_VERSION})"
        ) from exc
    if mediapipe.__version__ != MEDIAPIPE_VERSION:
        raise ToolError(
            f"{sys.executable} has mediapipe {mediapipe.__version__}; this tool needs {MEDIAPIPE_VERSION} "
            "(later releases' metadata writers do not import): "
            f"`{sys.executable} -m pip install mediapipe=={MEDIAPIPE_VERSION}`"
        )
    return mediapipe


def _read_bytes(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ToolError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc


def _read_json(path: str, what: str) -> Any:
    try:
        return json.loads(_read_bytes(path, what).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ToolError(f"the {what} {path} is not JSON: {exc}") from exc


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


# === Metadata ===


def _writer_class() -> Any:
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer

    class Writer(metadata_writer.MetadataWriter):  # type: ignore[misc]
        """MetadataWriter whose score-calibration file has no trailing newline.

        mediapipe 0.10.21 ends every line with '\\n'; MediaPipe's parser
        (score_calibration_utils.cc) splits on '\\n' and makes one sigmoid per piece, so C
        classes would become C + 1 sigmoids and the model would not load ("Mismatch between
        number of sigmoids (7) and number of elements in the input scores tensor (6)").
        """

        def _export_calibration_file(self, filename: str, calibrations: list[Any]) -> str:
            path = os.path.join(self._temp_folder.name, filename)
            lines = []
            for c in calibrations:
                if c is None:
                    lines.append("")
                elif c.min_score is None:
                    lines.append(f"{c.scale!r},{c.slope!r},{c.offset!r}")
                else:
                    lines.append(f"{c.scale!r},{c.slope!r},{c.offset!r},{c.min_score!r}")
            with open(path, "w", encoding="utf-8") as fh:
                fh.write("\n".join(lines))
            self._associated_files.append(path)
            return path

    return Writer


def write_metadata(
    model: bytes,
    labels: list[str],
    thresholds: list[float],
    *,
    name: str,
    description: str,
    version: str,
    global_score_threshold: float | None = 0.5,
) -> tuple[bytes, str]:
    """The model with metadata and the metadata as JSON."""
    _mediapipe()
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_info, metadata_writer

    if len(labels) != len(thresholds):
        raise ToolError(f"{len(labels)} labels but {len(thresholds)} thresholds: give one threshold per label")
    bad = [f"{label}: {t!r}" for label, t in zip(labels, thresholds) if not (isinstance(t, float) and 0.0 < t < 1.0)]
    if bad:
        raise ToolError(
            "thresholds must lie strictly between 0 and 1 (the calibration offset is -logit(t)); got " + ", ".join(bad)
        )
    writer = _writer_class()(bytearray(model))
    writer._general_md = metadata_info.GeneralMd(name=name, version=version, description=description)
    writer.add_image_input(norm_mean=[0.0], norm_std=[1.0])
    calibration = metadata_writer.ScoreCalibration(
        metadata_writer.ScoreCalibration.transformation_types.INVERSE_LOGISTIC,
        [metadata_writer.CalibrationParameter(scale=1.0, slope=1.0, offset=-logit(t)) for t in thresholds],
        default_score=0.0,
    )
    thresholding = (
        metadata_writer.ScoreThresholding(global_score_threshold=global_score_threshold)
        if global_score_threshold is not None
        else None
    )
    writer.add_classification_output(
        metadata_writer.Labels().add(list(labels)), score_calibration=calibration, score_thresholding=thresholding
    )
    try:
        out, metadata_json = writer.populate()
    except (ValueError, RuntimeError) as exc:
        raise ToolError(f"the metadata writer rejected the model: {exc}") from exc
    return bytes(out), metadata_json


def read_metadata(model: bytes) -> dict[str, Any]:
    """The metadata JSON (parsed) and every associated file's text."""
    _mediapipe()
    from mediapipe.tasks.python.metadata import metadata

    try:
        displayer = metadata.MetadataDisplayer.with_model_buffer(model)
    except ValueError as exc:
        raise ToolError(f"the model has no readable TFLite metadata: {exc}") from exc
    files = {
        name: displayer.get_associated_file_buffer(name).decode("utf-8")
        for name in displayer.get_packed_associated_file_list()
    }
    return {"metadata": json.loads(displayer.get_metadata_json()), "associated_files": files}


# === ImageClassifier ===


@functools.cache
def _app_input() -> Any:
    """mobiletag's ``app_input.py`` beside this file, loaded by path: the app's pre-scale, the
    code evaluation runs (it imports only numpy and PIL)."""
    path = _HERE / "app_input.py"
    spec = importlib.util.spec_from_file_location("mobiletag_app_input", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ToolError(f"{path} is missing: the tool needs mobiletag's app_input.py beside it for --prescale-to")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decode(name: str, data: bytes) -> np.ndarray:
    """An image file's bytes as an app decodes them: PIL, EXIF orientation applied, RGB (uint8 [H, W, 3])."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise ToolError(f"cannot decode the image {name}: {exc}") from exc
    return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))


def files(paths: list[str]) -> Iterator[tuple[str, bytes]]:
    for path in paths:
        yield path, _read_bytes(path, "image")


NAME_LENGTH = struct.Struct(">I")
DATA_LENGTH = struct.Struct(">Q")


def _exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ToolError(f"standard input ended inside an image frame ({len(data)} of {size} bytes)")
    return data


def frames(stream: BinaryIO) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each image framed on ``stream`` (see the module's docstring), until its end."""
    while True:
        head = stream.read(NAME_LENGTH.size)
        if not head:
            return
        if len(head) != NAME_LENGTH.size:
            raise ToolError("standard input ended inside an image frame")
        name = _exactly(stream, NAME_LENGTH.unpack(head)[0]).decode("utf-8")
        yield name, _exactly(stream, DATA_LENGTH.unpack(_exactly(stream, DATA_LENGTH.size))[0])


def _classifier(model_path: str, score_threshold: float | None) -> Any:
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=model_path),
        running_mode=vision.RunningMode.IMAGE,
        max_results=-1,
        score_threshold=score_threshold,
    )
    try:
        return vision.ImageClassifier.create_from_options(options)
    except (RuntimeError, ValueError) as exc:
        raise ToolError(f"MediaPipe's ImageClassifier cannot load {model_path}: {exc}") from exc


def classify(
    model_path: str,
    images: Iterable[tuple[str, bytes]],
    score_threshold: float | None = None,
    prescale_to: tuple[int, int] | None = None,
) -> tuple[np.ndarray, list[list[int]], dict[str, float]]:
    """Calibrated scores [N, C] (all categories), the label indices returned with the default
    options (or ``score_threshold``) per image, and timings; ``images``: (name, file bytes).
    ``prescale_to``: the model input's (width, height); each decoded image is pre-scaled for it
    (``app_input.prescale``) before ImageClassifier gets it."""
    mp = _mediapipe()
    if prescale_to is not None:
        _app_input()  # a missing app_input.py fails before any image is read
    _read_bytes(model_path, "model")
    scores_all = _classifier(model_path, 0.0)
    default = _classifier(model_path, score_threshold)
    rows: list[np.ndarray] = []
    sets: list[list[int]] = []
    decode_s = classify_s = 0.0
    num_classes: int | None = None
    with scores_all, default:
        for path, data in images:
            start = time.perf_counter()
            rgb = decode(path, data)
            if prescale_to is not None:
                rgb = np.ascontiguousarray(_app_input().prescale(rgb, *prescale_to))
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)
            middle = time.perf_counter()
            categories = scores_all.classify(image).classifications[0].categories
            returned = default.classify(image).classifications[0].categories
            classify_s += (time.perf_counter() - middle) / 2
            decode_s += middle - start
            if num_classes is None:
                num_classes = len(categories)
            if len(categories) != num_classes:
                raise ToolError(f"{path}: ImageClassifier returned {len(categories)} categories, not {num_classes}")
            row = np.full(num_classes, np.nan, np.float32)
            for category in categories:
                row[category.index] = category.score
            rows.append(row)
            sets.append(sorted(int(c.index) for c in returned))
    scores = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
    n = max(1, len(rows))
    timings = {"decode_ms_per_image": 1e3 * decode_s / n, "classify_ms_per_image": 1e3 * classify_s / n}
    return scores, sets, timings


# === Command line ===


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mediapipe_tool.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write-metadata", help="model in -> model out with TFLite metadata")
    w.add_argument("--model-in", required=True)
    w.add_argument("--model-out", required=True)
    w.add_argument("--labels", required=True, help="labels.txt: one class a line, in output order")
    w.add_argument("--thresholds", required=True, help="JSON list of per-class thresholds, in label order")
    w.add_argument("--name", required=True)
    w.add_argument("--description", required=True)
    w.add_argument("--version", required=True)
    w.add_argument("--global-score-threshold", type=float, default=0.5, help="negative: none in the metadata")
    r = sub.add_parser("read-metadata", help="the metadata of a model, as JSON")
    r.add_argument("--model", required=True)
    c = sub.add_parser("classify", help="ImageClassifier over image files -> calibrated scores .npy")
    c.add_argument("--model", required=True)
    given = c.add_mutually_exclusive_group(required=True)
    given.add_argument("--images", help="JSON list of image file paths")
    given.add_argument("--stdin", action="store_true", help="images framed on standard input (see above)")
    c.add_argument("--out", required=True, help="scores .npy; the label sets go to <out without .npy>.labels.json")
    c.add_argument("--score-threshold", type=float, default=None, help="default: the model's metadata")
    c.add_argument(
        "--prescale-to",
        type=int,
        nargs=2,
        metavar=("W", "H"),
        default=None,
        help="pre-scale each image for a W x H model input as the app does (app_input.prescale); default: none",
    )
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        _mediapipe()  # the interpreter first: a wrong one is the likeliest mistake
        if args.command == "write-metadata":
            labels = _read_bytes(args.labels, "labels file").decode("utf-8").splitlines()
            thresholds = _read_json(args.thresholds, "thresholds file")
            if not isinstance(thresholds, list):
                raise ToolError(f"{args.thresholds}: expected a JSON list of thresholds in label order")
            thresholds = [float(t) if isinstance(t, (int, float)) else t for t in thresholds]
            out, metadata_json = write_metadata(
                _read_bytes(args.model_in, "model"),
                labels,
                thresholds,
                name=args.name,
                description=args.description,
                version=args.version,
                global_score_threshold=args.global_score_threshold if args.global_score_threshold >= 0 else None,
            )
            Path(args.model_out).write_bytes(out)
            summary: dict[str, Any] = {
                "model": args.model_out,
                "bytes": len(out),
                "metadata": json.loads(metadata_json),
            }
        elif args.command == "read-metadata":
            summary = read_metadata(_read_bytes(args.model, "model"))
        else:
            if args.stdin:
                images = frames(sys.stdin.buffer)
            else:
                paths = _read_json(args.images, "image list")
                if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                    raise ToolError(f"{args.images}: expected a JSON list of image file paths")
                images = files(paths)
            prescale_to = (args.prescale_to[0], args.prescale_to[1]) if args.prescale_to else None
            scores, sets, timings = classify(args.model, images, args.score_threshold, prescale_to)
            out_path = Path(args.out)
            np.save(out_path, scores)
            sets_path = out_path.with_suffix(".labels.json")
            sets_path.write_text(json.dumps(sets) + "\n", encoding="utf-8")
            summary = {"scores": str(out_path), "label_sets": str(sets_path), "images": len(sets), **timings}
    except ToolError as exc:
        print(f"mediapipe_tool {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mediapipe_tool {args.command}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

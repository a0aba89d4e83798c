"""Dataset layout, CSV parsing and validation.

A dataset is a folder (``images/``, ``train_labels.csv``, ``val_labels.csv``,
``test_labels.csv``, optional ``config.yaml``). Each CSV has the header ``filepath,labels``;
``filepath`` is relative to ``images/`` (a leading ``images/`` is accepted too) and
``labels`` joins class names with ``|``; an empty labels field is a legal negative.

Validation reports every problem it finds (up to ``data.max_errors``) with the CSV file and
line, so one run is enough to fix a dataset.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import numpy as np

from mobiletag.artifacts import SourceDataset
from mobiletag.config import Config, source_of
from mobiletag.data.images import ImageInfo, ImageProblem, inspect_image
from mobiletag.errors import DataError, StorageError
from mobiletag.storage import is_gcs, join, read_bytes_and_generation, read_text_if_exists

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
HEADER = ("filepath", "labels")
IMAGES_DIR = SourceDataset.IMAGES_DIR
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def csv_name(split: str) -> str:
    return SourceDataset.labels_csv(split)


@dataclass(frozen=True)
class Row:
    filepath: str  # normalised, relative to images/, '/'-separated
    labels: tuple[str, ...]
    line: int  # line in the CSV file (1 = header)


@dataclass(frozen=True)
class SourceVersion:
    """Where an image file was read and which version of it: the object's generation on gs://,
    the file's modification time on a local disk (an absolute path)."""

    uri: str
    generation: int | None = None
    mtime_ns: int | None = None


@dataclass(frozen=True)
class DatasetIndex:
    """The parsed, label-checked dataset: what every later step reads.

    ``root`` is a local folder or a gs:// prefix.
    """

    root: str
    classes: tuple[str, ...]
    splits: dict[str, tuple[Row, ...]]
    warnings: tuple[str, ...] = ()

    @property
    def images_root(self) -> str:
        return join(self.root, IMAGES_DIR)

    def image_location(self, row: Row) -> str:
        return join(self.images_root, row.filepath)

    def read_image(self, row: Row) -> bytes:
        """The image file's bytes; ImageProblem when it cannot be had. Never leaves images/."""
        return self.read_source(row)[0]

    def read_source(self, row: Row) -> tuple[bytes, SourceVersion]:
        """The image file's bytes and which version of which file they are (read_image's checks)."""
        location = self.image_location(row)
        try:
            if is_gcs(location):
                data, generation = read_bytes_and_generation(location)
                return data, SourceVersion(uri=location, generation=generation)
            path = Path(location).resolve()
            if not path.is_relative_to(Path(self.images_root).resolve()):
                raise ImageProblem("is a link that points outside images/; refused, never opened")
            with open(path, "rb") as fh:
                mtime_ns = os.fstat(fh.fileno()).st_mtime_ns
                return fh.read(), SourceVersion(uri=str(path), mtime_ns=mtime_ns)
        except FileNotFoundError as exc:
            what = "object" if is_gcs(location) else "image file"
            raise ImageProblem(f"the {what} {location} does not exist") from exc
        except IsADirectoryError as exc:
            raise ImageProblem("is a directory, not an image file") from exc
        except StorageError as exc:
            raise ImageProblem(str(exc)) from exc
        except OSError as exc:
            raise ImageProblem(f"cannot be read: {exc.strerror or exc}") from exc

    def where(self, split: str, row: Row) -> str:
        return f"{csv_name(split)} line {row.line} ({row.filepath})"

    def multi_hot(self, rows: Iterable[Row]) -> np.ndarray:
        position = {c: i for i, c in enumerate(self.classes)}
        rows = list(rows)
        out = np.zeros((len(rows), len(self.classes)), dtype=np.float32)
        for r, row in enumerate(rows):
            for label in row.labels:
                out[r, position[label]] = 1.0
        return out

    def summary(self, labels: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Images per split, positives per class per split, labels per image, overlaps.

        ``labels``: the splits' multi-hot matrices when the caller has them already (in any
        row order), so they are not built again.
        """
        out: dict[str, Any] = {"classes": list(self.classes), "splits": {}}
        for split, rows in self.splits.items():
            y = labels[split] if labels is not None and split in labels else self.multi_hot(rows)
            per_image = y.sum(axis=1).astype(int)
            out["splits"][split] = {
                "num_images": len(rows),
                "positives": {c: int(n) for c, n in zip(self.classes, y.sum(axis=0))},
                "negatives": int((per_image == 0).sum()),
                "labels_per_image": {
                    "mean": round(float(per_image.mean()), 3) if len(rows) else 0.0,
                    "max": int(per_image.max()) if len(rows) else 0,
                    "histogram": {str(k): int(v) for k, v in sorted(Counter(per_image.tolist()).items())},
                },
            }
        out["warnings"] = [*self.warnings, *few_positives(out["splits"])]
        return out


@dataclass
class Problems:
    """Collects problems up to a cap; counts the rest."""

    limit: int
    items: list[str] = field(default_factory=list)
    dropped: int = 0

    def add(self, message: str) -> None:
        if len(self.items) < self.limit:
            self.items.append(message)
        else:
            self.dropped += 1

    def raise_if_any(self, what: str) -> None:
        if not self.items:
            return
        items = list(self.items)
        if self.dropped:
            items.append(f"... and {self.dropped} more (raise data.max_errors to list them)")
        total = len(self.items) + self.dropped
        raise DataError(f"{what}: {total} problem(s) found; fix them and run again", items)


# ======================================================================================
# CSV parsing
# ======================================================================================


def normalise_filepath(raw: str) -> str:
    """The path under images/ as '/'-separated text, or ValueError saying why it is refused.

    Refused paths are never opened: absolute paths, drive letters, backslashes and any '..'
    would let a CSV read files outside the dataset.
    """
    path = raw.strip()
    if not path:
        raise ValueError("the filepath is empty")
    if path.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(path) or "://" in path:
        raise ValueError(f"filepath {path!r} is absolute; write it relative to images/ (for example cats/001.jpg)")
    if "\\" in path:
        raise ValueError(f"filepath {path!r} uses '\\'; separate folders with '/'")
    parts = [p for p in PurePosixPath(path).parts if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"filepath {path!r} contains '..' and would escape images/; refused, never opened")
    if parts and parts[0] == IMAGES_DIR and len(parts) > 1:
        parts = parts[1:]  # 'images/x.jpg' means images/x.jpg, not images/images/x.jpg
    if not parts:
        raise ValueError(f"filepath {path!r} names no file")
    return "/".join(parts)


def parse_labels(field_text: str) -> tuple[str, ...]:
    """'dog | beach' -> ('dog', 'beach'); '' -> () (a legal negative)."""
    text = field_text.strip()
    if not text:
        return ()
    labels = tuple(label.strip() for label in text.split("|"))
    if any(not label for label in labels):
        raise ValueError(f"labels {field_text!r} have an empty name between '|' separators")
    return labels


def read_split_csv(root: str, split: str, problems: Problems) -> list[Row] | None:
    """Rows of one split CSV; problems go to ``problems``. None when the file is unusable."""
    name = csv_name(split)
    location = join(root, name)
    try:
        text = read_text_if_exists(location)
    except UnicodeDecodeError as exc:
        problems.add(f"{name}: not valid UTF-8 ({exc.reason} at byte {exc.start}); save the file as UTF-8")
        return None
    if text is None:
        problems.add(f"{name}: missing ({location}); every dataset needs {', '.join(csv_name(s) for s in SPLITS)}")
        return None
    reader = csv.reader(text.splitlines(), skipinitialspace=True)
    header = next(reader, None)
    if header is None:
        problems.add(f"{name} line 1: the file is empty; it needs the header 'filepath,labels'")
        return None
    if tuple(h.strip().lower() for h in header) != HEADER:
        problems.add(f"{name} line 1: header is {','.join(header)!r}; it must be 'filepath,labels'")
        return None
    rows: list[Row] = []
    seen: dict[str, Row] = {}
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue  # blank line
        if len(fields) == 1:
            fields = [fields[0], ""]
        if len(fields) != 2:
            problems.add(
                f"{name} line {line}: {len(fields)} fields; expected 2 (filepath,labels). "
                "Join labels with '|', not ','; quote a filepath that contains a comma"
            )
            continue
        try:
            filepath = normalise_filepath(fields[0])
            labels = parse_labels(fields[1])
        except ValueError as exc:
            problems.add(f"{name} line {line}: {exc}")
            continue
        if len(set(labels)) != len(labels):
            labels = tuple(dict.fromkeys(labels))
        row = Row(filepath=filepath, labels=labels, line=line)
        previous = seen.get(filepath)
        if previous is not None:
            if set(previous.labels) != set(labels):
                problems.add(
                    f"{name} line {line}: {filepath} is listed again with other labels "
                    f"({'|'.join(labels) or 'none'} here, {'|'.join(previous.labels) or 'none'} on line "
                    f"{previous.line}); keep one row per image"
                )
            continue  # an exact duplicate row is harmless: keep the first
        seen[filepath] = row
        rows.append(row)
    return rows


def resolve_classes(splits: dict[str, list[Row]], config: Config, problems: Problems) -> tuple[str, ...]:
    """The label vocabulary: config ``classes`` in its order, else sorted train labels."""
    train_labels = Counter(label for row in splits.get("train", []) for label in row.labels)
    if config.classes is not None:
        classes = tuple(c.strip() for c in config.classes)
        allowed = set(classes)
        for split, rows in splits.items():
            for row in rows:
                for label in row.labels:
                    if label not in allowed:
                        problems.add(
                            f"{csv_name(split)} line {row.line}: label {label!r} is not in the config key "
                            f"'classes' ({', '.join(classes)}); add it there or fix the row"
                        )
    else:
        classes = tuple(sorted(train_labels))
        for split in ("val", "test"):
            for row in splits.get(split, []):
                for label in row.labels:
                    if label not in train_labels:
                        problems.add(
                            f"{csv_name(split)} line {row.line}: label {label!r} does not occur in "
                            "train_labels.csv; the model cannot learn it (fix the spelling or add train images)"
                        )
    if "train" in splits:
        for name in classes:
            if train_labels[name] == 0 and (config.classes is not None):
                problems.add(
                    f"train_labels.csv: class {name!r} (from config key 'classes') has no positive image in "
                    "train; add training images for it or remove it from 'classes'"
                )
    if config.num_classes is not None and classes and config.num_classes != len(classes):
        problems.add(
            f"{source_of(config, 'num_classes')}: config key 'num_classes' is {config.num_classes} but the data has "
            f"{len(classes)} classes ({', '.join(classes)}); fix num_classes (or drop it to infer it)"
        )
    return classes


# A class with fewer positives than this in a split gets a warning. On the development suite's
# imbalance set (bench/README.md) the five classes with 3-5 validation or test positives made 0.117 of
# the 0.144 spread of test macro mAP over three training seeds; those with 11 or more made 0.028.
MIN_POSITIVES = 10


def few_positives(splits: dict[str, Any]) -> list[str]:
    """A warning per split naming its classes with fewer than MIN_POSITIVES positive images (from
    the summary's per-split ``positives``); an empty split has its own warning."""
    out = []
    for split, counts in splits.items():
        few = {c: n for c, n in counts["positives"].items() if n < MIN_POSITIVES}
        if few and counts["num_images"]:
            listed = ", ".join(f"{c} ({n})" for c, n in few.items())
            out.append(
                f"{csv_name(split)}: {len(few)} class(es) with fewer than {MIN_POSITIVES} positive images: {listed}. "
                "Their AP and threshold rest on those few images and move a lot between training seeds; "
                "label more images of them, or read their figures with care"
            )
    return out


def index_dataset(data_dir: str | Path, config: Config) -> DatasetIndex:
    """Parse and check the three CSVs and the labels (not the image contents).

    ``data_dir`` is a local folder or a gs:// prefix.
    """
    root = str(data_dir).rstrip("/") if is_gcs(str(data_dir)) else str(Path(data_dir))
    problems = Problems(config.data.max_errors)
    if not is_gcs(root):
        if not Path(root).is_dir():
            raise DataError(f"dataset folder {root} does not exist; pass --data-dir pointing at a dataset")
        if not Path(root, IMAGES_DIR).is_dir():
            problems.add(f"{root}: has no {IMAGES_DIR}/ folder; the CSV filepaths are relative to it")
    splits: dict[str, list[Row]] = {}
    for split in SPLITS:
        rows = read_split_csv(root, split, problems)
        if rows is not None:
            splits[split] = rows
    if "train" in splits and not splits["train"]:
        problems.add("train_labels.csv: has no rows; the model needs training images")
    classes = resolve_classes(splits, config, problems)
    problems.raise_if_any(f"dataset {root} is not valid")

    warnings: list[str] = []
    owner: dict[str, str] = {}
    for split in SPLITS:
        for row in splits[split]:
            first = owner.setdefault(row.filepath, split)
            if first != split:
                warnings.append(f"{row.filepath} is in both {first} and {split} ({csv_name(split)} line {row.line})")
    if warnings:
        log.warning("%d image(s) are shared between splits; test figures will be optimistic", len(warnings))
    for split in ("val", "test"):
        if not splits[split]:
            warnings.append(f"{csv_name(split)} has no rows")
    return DatasetIndex(
        root=root,
        classes=classes,
        splits={s: tuple(splits[s]) for s in SPLITS},
        warnings=tuple(warnings),
    )


# ======================================================================================
# Image checks (parallel)
# ======================================================================================

T = TypeVar("T")


def worker_count(config: Config) -> int:
    """Threads for reading and decoding: decoding needs a core each, downloads wait on the network."""
    return config.data.workers or max(1, min(32, (os.cpu_count() or 1) * 4))


def map_images(
    index: DatasetIndex,
    split: str,
    rows: Iterable[Row],
    config: Config,
    problems: Problems,
    fn: Callable[[bytes], T],
    keep: Callable[[Row, bytes, SourceVersion], None] | None = None,
) -> Iterator[tuple[Row, T]]:
    """fn(image bytes) for every row, in parallel, in row order; failures go to problems.

    Reads (local or gs://, with retries) and decodes run in a thread pool. Results stream
    out in order with a bounded window, so memory does not grow with the dataset and a
    consumer (the TFRecord writer) works while the next images load. ``keep(row, bytes,
    version)``, when given, runs in the worker after ``fn`` succeeds (e.g. to checksum the
    bytes), so the bytes are never held in the window.
    """
    rows = list(rows)
    workers = worker_count(config)

    def task(row: Row) -> tuple[Row, T | None, str | None]:
        try:
            data, version = index.read_source(row)
            result = fn(data)
            if keep is not None:
                keep(row, data, version)
            return row, result, None
        except ImageProblem as exc:
            return row, None, str(exc)

    window = workers * 4
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending = deque(pool.submit(task, row) for row in rows[:window])
        next_row = len(pending)
        while pending:
            row, result, problem = pending.popleft().result()
            if next_row < len(rows):
                pending.append(pool.submit(task, rows[next_row]))
                next_row += 1
            if problem is not None:
                problems.add(f"{index.where(split, row)}: {problem}")
            else:
                yield row, result  # type: ignore[misc]


def check_images(index: DatasetIndex, config: Config) -> dict[str, dict[str, ImageInfo]]:
    """Decode every image once (in parallel); raise DataError listing every bad one."""
    problems = Problems(config.data.max_errors)
    side = config.stored_image_side
    infos: dict[str, dict[str, ImageInfo]] = {}
    decoded: dict[str, ImageInfo] = {}  # an image shared between splits is decoded once
    for split, rows in index.splits.items():
        todo = [r for r in rows if r.filepath not in decoded]
        for row, info in map_images(index, split, todo, config, problems, lambda b: inspect_image(b, max_side=side)):
            decoded[row.filepath] = info
        infos[split] = {r.filepath: decoded[r.filepath] for r in rows if r.filepath in decoded}
    problems.raise_if_any(f"dataset {index.root} has unusable images")
    return infos


def validate_dataset(data_dir: str | Path, config: Config) -> tuple[DatasetIndex, dict[str, Any]]:
    """Full validation (CSVs, labels, every image). Returns the index and a summary."""
    index = index_dataset(data_dir, config)
    infos = check_images(index, config)
    summary = index.summary()
    for split, by_path in infos.items():
        sides = np.array([[i.width, i.height] for i in by_path.values()] or [[0, 0]])
        summary["splits"][split]["image_size"] = {
            "min": [int(sides[:, 0].min()), int(sides[:, 1].min())],
            "max": [int(sides[:, 0].max()), int(sides[:, 1].max())],
            "modes": dict(Counter(i.mode for i in by_path.values())),
        }
    return index, summary


def format_summary(summary: dict[str, Any]) -> str:
    """A readable table of the summary for the terminal."""
    classes = summary["classes"]
    splits = summary["splits"]
    width = max([len(c) for c in classes] + [22])
    lines = [
        f"{len(classes)} classes; images per split: " + ", ".join(f"{s} {v['num_images']}" for s, v in splits.items())
    ]
    lines.append("")
    lines.append("positives per class".ljust(width + 2) + "".join(s.rjust(8) for s in splits))
    for c in classes:
        lines.append(c.ljust(width + 2) + "".join(str(v["positives"][c]).rjust(8) for v in splits.values()))
    lines.append(
        "no label (negatives)".ljust(width + 2) + "".join(str(v["negatives"]).rjust(8) for v in splits.values())
    )
    lines.append(
        "labels per image, mean".ljust(width + 2)
        + "".join(f"{v['labels_per_image']['mean']:8.2f}" for v in splits.values())
    )
    for warning in summary.get("warnings", []):
        lines.append(f"warning: {warning}")
    return "\n".join(lines)

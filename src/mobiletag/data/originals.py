"""The val and test originals: where they live, recorded by prepare_dataset, and read back checked.

Threshold search, evaluation and MediaPipe measure the model on the source files through the
app's input path, not on the TFRecords' shrunk copies. The files are never copied into an
artifact: on a cluster the KFP launcher downloads every input artifact whole into a step's pod
before the step starts, and 2-6 MP phone photos are ~100x their stored copies. prepare_dataset
writes a manifest into the dataset instead (``originals.json``,
:data:`mobiletag.artifacts.Dataset.ORIGINALS`): per split, in record order, each file's path in
the CSV, its URI (``<data_uri>/images/<path>``: an absolute local path or a gs:// URI), its size
and CRC32C (of the bytes prepare_dataset decoded, no second read) and its version (the object's
generation on gs://, ``st_mtime_ns`` on a local disk).

The readers stream the files from their URIs and check size and CRC32C: a file that changed or
vanished since the run began stops the step with a DataError that names it. A version that
differs while the bytes are the same (a file touched, an object re-uploaded unchanged) is
logged and read: the measurement is the same.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from mobiletag.artifacts import Dataset
from mobiletag.data.dataset import SourceVersion, csv_name
from mobiletag.errors import DataError, StorageError
from mobiletag.storage import bytes_crc32c, is_gcs, read_bytes_and_generation

log = logging.getLogger(__name__)

ORIGINAL_SPLITS = ("val", "test")  # the splits measured through the app's input path
_RERUN = (
    "Re-run prepare_dataset (in a pipeline, with caching disabled for it, or with `mobiletag train`), "
    "then the stages after it"
)


@dataclass(frozen=True)
class Original:
    """One original image file as prepare_dataset read it."""

    split: str
    filepath: str  # as in the split's CSV (normalised, relative to images/)
    uri: str  # absolute local path or gs:// URI
    size: int
    crc32c: str  # base64, as Cloud Storage reports it
    generation: int | None = None  # gs://
    mtime_ns: int | None = None  # local file

    @classmethod
    def of(cls, split: str, filepath: str, data: bytes, version: SourceVersion) -> Original:
        return cls(
            split=split,
            filepath=filepath,
            uri=version.uri,
            size=len(data),
            crc32c=bytes_crc32c(data),
            generation=version.generation,
            mtime_ns=version.mtime_ns,
        )

    def describe(self) -> str:
        return f"the {self.split} image {self.filepath} ({csv_name(self.split)}), {self.uri}"

    def entry(self) -> dict[str, object]:
        """The manifest's JSON entry (the split is the list it is in)."""
        fields = asdict(self)
        del fields["split"]
        return {k: v for k, v in fields.items() if v is not None}


def write_manifest(folder: str | Path, data_uri: str, splits: dict[str, Sequence[Original]]) -> Path:
    """Write the manifest into ``folder``: the originals of each split, in record order."""
    manifest = {
        "data_uri": data_uri,
        "splits": {split: [o.entry() for o in originals] for split, originals in splits.items()},
    }
    path = Path(folder, Dataset.ORIGINALS)
    path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_manifest(dataset_dir: str | Path, split: str) -> list[Original]:
    """The split's originals in record order; DataError when the dataset has no manifest for it."""
    if split not in ORIGINAL_SPLITS:
        raise DataError(
            f"{dataset_dir}: prepare_dataset records the original images of the {' and '.join(ORIGINAL_SPLITS)} "
            f"splits only, not of {split!r}; read its TFRecords instead (source='records')"
        )
    path = Path(dataset_dir, Dataset.ORIGINALS)
    if not path.is_file():
        raise DataError(
            f"{dataset_dir}: the dataset has no {Dataset.ORIGINALS} (where the {split} split's original images live): "
            f"it was built by an older prepare_dataset. {_RERUN}"
        )
    entries = json.loads(path.read_text(encoding="utf-8"))["splits"].get(split)
    if entries is None:
        raise DataError(f"{path} lists no {split} split: the dataset is inconsistent. {_RERUN}")
    return [Original(split=split, **entry) for entry in entries]


def _read(original: Original) -> tuple[bytes, SourceVersion]:
    if is_gcs(original.uri):
        data, generation = read_bytes_and_generation(original.uri)
        return data, SourceVersion(uri=original.uri, generation=generation)
    with open(original.uri, "rb") as fh:
        mtime_ns = os.fstat(fh.fileno()).st_mtime_ns
        return fh.read(), SourceVersion(uri=original.uri, mtime_ns=mtime_ns)


def read_original(original: Original) -> bytes:
    """The file's bytes, read where it lives and checked against the manifest (size, CRC32C).

    Raises DataError naming the file (CSV path and URI) when it vanished or its bytes changed
    since prepare_dataset read them; StorageError when it cannot be read.
    """
    todo = (
        "restore it as it was, or start a new run (prepare_dataset then records the dataset as it is now); "
        "this run's thresholds and test figures are measured on the files it began with"
    )
    try:
        data, version = _read(original)
    except FileNotFoundError as exc:
        raise DataError(
            f"{original.describe()}, vanished since the run began (prepare_dataset read it): {todo}"
        ) from exc
    except StorageError as exc:
        raise StorageError(f"{original.describe()}, cannot be read: {exc}") from exc
    except OSError as exc:
        raise DataError(f"{original.describe()}, cannot be read ({exc.strerror or exc}): {todo}") from exc
    if len(data) != original.size or bytes_crc32c(data) != original.crc32c:
        was = ", ".join(
            f"{what} {then} then, {now} now"
            for what, then, now in (
                ("size", original.size, len(data)),
                ("generation", original.generation, version.generation),
                ("mtime_ns", original.mtime_ns, version.mtime_ns),
            )
            if then is not None and then != now
        )
        raise DataError(
            f"{original.describe()}, changed since the run began (prepare_dataset read it): its bytes differ "
            f"(crc32c {original.crc32c} then, {bytes_crc32c(data)} now{f', {was}' if was else ''}): {todo}"
        )
    if (version.generation, version.mtime_ns) != (original.generation, original.mtime_ns):
        log.info("%s has a new version but the same bytes; read as it is", original.describe())
    return data


def iter_originals(originals: Sequence[Original], workers: int | None = None) -> Iterator[tuple[Original, bytes]]:
    """(original, checked bytes) in order, read on ``workers`` threads with a bounded window:
    memory holds a few files, never the split."""
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    items = iter(originals)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="originals") as pool:
        pending = deque((o, pool.submit(read_original, o)) for o in itertools.islice(items, workers * 2))
        try:
            while pending:
                original, future = pending.popleft()
                data = future.result()
                following = next(items, None)
                if following is not None:
                    pending.append((following, pool.submit(read_original, following)))
                yield original, data
        finally:
            for _, future in pending:
                future.cancel()

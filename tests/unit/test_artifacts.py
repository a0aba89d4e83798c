"""The artifact contract: file names defined once (mobiletag.artifacts), and the atomic-directory writer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mobiletag import artifacts
from mobiletag.artifacts import Dataset, OutputFolder, SourceDataset, atomic_dir, read_json, write_json

ROOT = Path(__file__).resolve().parents[2]
SCANNED = [ROOT / "src" / "mobiletag", ROOT / "components", ROOT / "pipeline.py"]

ARTIFACT_CLASSES = [
    value
    for value in vars(artifacts).values()
    if isinstance(value, type) and value.__module__ == artifacts.__name__ and value.__doc__
]
# "images" names the dataset's image folder and the repository's Dockerfile folder (components/image.py).
NOT_CHECKED = {SourceDataset.IMAGES_DIR}
NAMES = {
    value
    for cls in ARTIFACT_CLASSES
    for key, value in vars(cls).items()
    if key.isupper() and isinstance(value, str) and value not in NOT_CHECKED and not key.endswith("_SUFFIX")
}
# Names built from a split or a shard number end with these.
TEMPLATE_SUFFIXES = (Dataset.SHARD_SUFFIX, SourceDataset.LABELS_CSV_SUFFIX)


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (module, class, function)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def name_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string literal outside docstrings that is an artifact file name, or the
    fixed end of a templated one (an f-string's ``"_labels.csv"`` part)."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
            if text in NAMES or text.endswith(TEMPLATE_SUFFIXES):
                hits.append((node.lineno, text))
    return hits


def _python_files() -> list[Path]:
    files: list[Path] = []
    for place in SCANNED:
        files.extend(sorted(place.rglob("*.py")) if place.is_dir() else [place])
    return files


def test_the_scan_sees_what_it_should():
    assert [cls.__name__ for cls in ARTIFACT_CLASSES] == [
        "SourceDataset",
        "Dataset",
        "TeacherModel",
        "StudentModel",
        "QatModel",
        "ExportedModel",
        "Thresholds",
        "Evaluation",
        "OutputFolder",
        "Published",
    ]
    assert {"labels.txt", "metrics.json", "teacher_best.h5", "model_qat_int8.tflite", "LATEST"} <= NAMES
    assert "images" not in NAMES
    source = '''
"""Module docstring naming metrics.json."""
X = "metrics.json"
def f(out):
    """Writes labels.txt."""
    print(f"model: {out / 'model_qat_int8.tflite'}")  # a comment: report.html
    return f"{out}_labels.csv", "see metrics.json for more", "-*-of-*.tfrecord"
'''
    assert sorted(name_literals(source)) == [
        (3, "metrics.json"),
        (6, "model_qat_int8.tflite"),
        (7, "-*-of-*.tfrecord"),
        (7, "_labels.csv"),
    ]


def test_artifact_file_names_are_spelled_out_only_in_artifacts_py():
    found = []
    for path in _python_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel == "src/mobiletag/artifacts.py":
            continue
        found += [f"{rel}:{line}: {text!r}" for line, text in name_literals(path.read_text(encoding="utf-8"))]
    assert found == [], "use the names in mobiletag.artifacts instead:\n" + "\n".join(found)


def test_output_folder_is_the_contract_with_the_app_team():
    assert {
        "model_qat_int8.tflite",
        "labels.txt",
        "metrics.json",
        "threshold_recommendation.json",
        "inference_config.json",
        "teacher_best.h5",
        "student_best.h5",
        "student_qat.h5",
        "report.md",
        "report.html",
    } == OutputFolder.FILES
    copied = [name for names in OutputFolder.SOURCES.values() for name in names]
    assert len(copied) == len(set(copied)) == len(OutputFolder.FILES) - 1
    assert OutputFolder.INFERENCE_CONFIG not in copied


def test_templated_names():
    assert Dataset.shard("train", 3, 12) == "train-00003-of-00012.tfrecord"
    assert Path("train-00003-of-00012.tfrecord").match(Dataset.shard_glob("train"))
    assert not Path("val-00003-of-00012.tfrecord").match(Dataset.shard_glob("train"))
    assert SourceDataset.labels_csv("val") == "val_labels.csv"


def test_json_round_trip(tmp_path):
    path = tmp_path / "a" / "b.json"
    write_json(path, {"é": [1, 2.5, None]})
    assert path.read_text(encoding="utf-8") == '{\n  "é": [\n    1,\n    2.5,\n    null\n  ]\n}\n'
    assert read_json(path) == {"é": [1, 2.5, None]}


# === atomic_dir ===


class Boom(Exception):
    pass


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_dir_writes_the_folder_on_success(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        assert tmp.parent == tmp_path and tmp != final and not final.exists()
        (tmp / "a.txt").write_text("a")
    assert _entries(tmp_path) == ["out"]
    assert _entries(final) == ["a.txt"]


@pytest.mark.parametrize("failure", [Boom, KeyboardInterrupt])
def test_a_failure_inside_leaves_neither_the_final_folder_nor_the_temporary_one(tmp_path, failure):
    final = tmp_path / "out"
    with pytest.raises(failure), atomic_dir(final) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise failure
    assert _entries(tmp_path) == []


def test_an_existing_folder_survives_a_failed_rewrite_and_is_replaced_by_a_good_one(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "good.txt").write_text("good")
    with pytest.raises(Boom), atomic_dir(final) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise Boom
    assert _entries(tmp_path) == ["out"]
    assert _entries(final) == ["good.txt"] and (final / "good.txt").read_text() == "good"

    with atomic_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _entries(tmp_path) == ["out"]
    assert _entries(final) == ["new.txt"]


def test_a_failed_local_publish_leaves_no_partial_version(tmp_path, monkeypatch):
    """publish's local upload goes through atomic_dir: a copy that fails its check leaves nothing behind."""
    from mobiletag import publish as publish_module
    from mobiletag.config import GateConfig
    from mobiletag.errors import StorageError

    folder = tmp_path / "bundle"
    folder.mkdir()
    write_json(folder / OutputFolder.METRICS, {"test": {"f1_micro": 0.5, "map_macro": 0.5}})
    (folder / OutputFolder.MODEL).write_bytes(b"model")
    monkeypatch.setattr(publish_module, "_crc32c", lambda path: str(path))  # every copy mismatches its source
    out = tmp_path / "models"
    with pytest.raises(StorageError, match="does not match"):
        publish_module.publish(folder, str(out), "run-1", GateConfig())
    assert _entries(out) == []

"""Every validation rule: the legal cases pass, each fault is reported with file and line."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobiletag.config import Config, load_config
from mobiletag.data.dataset import MIN_POSITIVES, index_dataset, validate_dataset
from mobiletag.errors import DataError


def _jpeg(size=(40, 30), colour=(200, 20, 20), mode="RGB", fmt="JPEG") -> bytes:
    image = Image.new("RGB", size, colour)
    if mode != "RGB":
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def make_dataset(root: Path, train: str, val: str = "", test: str = "", images: dict | None = None) -> Path:
    """CSV bodies without header lines; every referenced file is a small valid JPEG unless given."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    header = "filepath,labels\n"
    for split, body in (("train", train), ("val", val), ("test", test)):
        (root / f"{split}_labels.csv").write_text(header + body, encoding="utf-8")
    for name, data in (images or {}).items():
        path = root / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def _default_images(*names):
    return {(n if "." in n else f"{n}.jpg"): _jpeg() for n in names}


GOOD_TRAIN = "a.jpg,dog|beach\nb.jpg,dog\nc.jpg,\n"


def errors_of(root: Path, config: Config | None = None) -> str:
    with pytest.raises(DataError) as info:
        validate_dataset(root, config or Config())
    return str(info.value)


def test_valid_dataset_summary(tmp_path):
    root = make_dataset(tmp_path, GOOD_TRAIN, "d.jpg,beach\n", "e.jpg,dog|beach\n", _default_images(*"abcde"))
    index, summary = validate_dataset(root, Config())
    assert index.classes == ("beach", "dog")
    assert summary["splits"]["train"]["num_images"] == 3
    assert summary["splits"]["train"]["positives"] == {"beach": 1, "dog": 2}
    assert summary["splits"]["train"]["negatives"] == 1
    assert summary["splits"]["train"]["labels_per_image"]["histogram"] == {"0": 1, "1": 1, "2": 1}
    np.testing.assert_array_equal(index.multi_hot(index.splits["train"]), [[1, 1], [0, 1], [0, 0]])


def test_legal_variants_are_accepted(tmp_path):
    """BOM, CRLF, spaces around labels and '|', sub-folders, non-ASCII names, every image mode."""
    images = {
        "sub/dir/ü 猫.jpg": _jpeg(),
        "gray.png": _jpeg(mode="L", fmt="PNG"),
        "rgba.png": _jpeg(mode="RGBA", fmt="PNG"),
        "pal.gif": _jpeg(mode="P", fmt="GIF"),
        "pal.png": _jpeg(mode="P", fmt="PNG"),
        "cmyk.jpg": _jpeg(mode="CMYK"),
        "bmp.bmp": _jpeg(fmt="BMP"),
        "big.jpg": _jpeg(size=(4000, 3000)),
        "v.jpg": _jpeg(),
        "t.jpg": _jpeg(),
    }
    train = (
        '"sub/dir/ü 猫.jpg", dog | beach \r\ngray.png,dog\r\nrgba.png,beach\r\npal.gif,dog\r\n'
        "pal.png,\r\ncmyk.jpg,beach\r\nbmp.bmp,dog\r\nimages/big.jpg,dog|beach\r\n"
    )
    root = make_dataset(tmp_path, "", "v.jpg,dog\n", "t.jpg,\n", images)
    (root / "train_labels.csv").write_bytes(("\ufefffilepath,labels\r\n" + train).encode("utf-8"))
    index, summary = validate_dataset(root, Config())
    assert [r.filepath for r in index.splits["train"]][0] == "sub/dir/ü 猫.jpg"
    assert index.splits["train"][0].labels == ("dog", "beach")
    assert index.splits["train"][7].filepath == "big.jpg"  # a leading images/ is accepted
    assert summary["splits"]["train"]["image_size"]["max"] == [4000, 3000]
    assert set(summary["splits"]["train"]["image_size"]["modes"]) == {"RGB", "L", "RGBA", "P", "CMYK"}


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        ("/etc/passwd,dog\n", r"train_labels.csv line 2: filepath '/etc/passwd' is absolute"),
        ("../secret.jpg,dog\n", r"train_labels.csv line 2: filepath '../secret.jpg' contains '..' and would escape"),
        ("x/../../s.jpg,dog\n", r"line 2: .*contains '..'"),
        ("C:/x.jpg,dog\n", r"line 2: .*is absolute"),
        ("x\\y.jpg,dog\n", r"line 2: .*uses '\\'"),
        ("a.jpg,dog,beach\n", r"line 2: 3 fields; expected 2 .*Join labels with '\|'"),
        ("a.jpg,dog||beach\n", r"line 2: labels 'dog\|\|beach' have an empty name"),
    ],
)
def test_bad_rows_are_refused_with_line(tmp_path, train, expected):
    root = make_dataset(tmp_path, GOOD_TRAIN + train, "", "", _default_images(*"abc"))
    message = errors_of(root)
    assert __import__("re").search(expected.replace("line 2", "line 5"), message), message


def test_escaping_path_is_never_opened(tmp_path, monkeypatch):
    opened = []
    real_read = Path.read_bytes

    def spy(self):
        opened.append(self.name)
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", spy)
    root = make_dataset(tmp_path / "ds", GOOD_TRAIN + "../../outside.jpg,dog\n", "", "", _default_images(*"abc"))
    (tmp_path / "outside.jpg").write_bytes(_jpeg())
    errors_of(root)
    assert "outside.jpg" not in opened


def test_symlink_out_of_images_is_refused(tmp_path):
    root = make_dataset(tmp_path / "ds", GOOD_TRAIN + "link.jpg,dog\n", "", "", _default_images(*"abc"))
    (tmp_path / "outside.jpg").write_bytes(_jpeg())
    (root / "images" / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    assert "train_labels.csv line 5 (link.jpg): is a link that points outside images/" in errors_of(root)


def test_missing_split_and_wrong_header(tmp_path):
    root = make_dataset(tmp_path, GOOD_TRAIN, "", "", _default_images(*"abc"))
    (root / "test_labels.csv").unlink()
    (root / "val_labels.csv").write_text("path,label\n")
    message = errors_of(root)
    assert "test_labels.csv: missing" in message
    assert "val_labels.csv line 1: header is 'path,label'; it must be 'filepath,labels'" in message


def test_image_faults_all_reported_in_one_run(tmp_path):
    good = _jpeg(size=(64, 64))
    images = {
        "a.jpg": good,
        "b.jpg": good,
        "c.jpg": good,
        "empty.jpg": b"",
        "trunc.jpg": good[: len(good) // 2],
        "junk.jpg": b"this is not an image at all",
    }
    train = GOOD_TRAIN + "missing.jpg,dog\nempty.jpg,dog\ntrunc.jpg,beach\njunk.jpg,dog\n"
    root = make_dataset(tmp_path, train, "", "", images)
    message = errors_of(root)
    assert "4 problem(s)" in message
    assert (
        f"train_labels.csv line 5 (missing.jpg): the image file {tmp_path / 'images' / 'missing.jpg'} does not exist"
        in message
    )
    assert "train_labels.csv line 6 (empty.jpg): the file is empty (0 bytes)" in message
    assert "train_labels.csv line 7 (trunc.jpg): cannot be decoded" in message
    assert "train_labels.csv line 8 (junk.jpg): not an image PIL can read" in message


def test_unknown_label_in_val_and_test(tmp_path):
    root = make_dataset(tmp_path, GOOD_TRAIN, "d.jpg,cat\n", "e.jpg,beach|Dog\n", _default_images(*"abcde"))
    message = errors_of(root)
    assert "val_labels.csv line 2: label 'cat' does not occur in train_labels.csv" in message
    assert "test_labels.csv line 2: label 'Dog' does not occur in train_labels.csv" in message


def test_conflicting_duplicate_row(tmp_path):
    root = make_dataset(tmp_path, GOOD_TRAIN + "a.jpg,beach\nb.jpg,dog\n", "", "", _default_images(*"abc"))
    message = errors_of(root)
    assert (
        "train_labels.csv line 5: a.jpg is listed again with other labels (beach here, dog|beach on line 2)" in message
    )
    assert "b.jpg" not in message  # an identical duplicate is harmless


def test_classes_from_config(tmp_path):
    root = make_dataset(tmp_path, GOOD_TRAIN, "d.jpg,beach\n", "", _default_images(*"abcd"))
    config = load_config({"classes": ["dog", "beach", "sunset"]})
    message = errors_of(root, config)
    assert "class 'sunset' (from config key 'classes') has no positive image in train" in message
    config = load_config({"classes": ["dog"]})
    message = errors_of(root, config)
    assert "train_labels.csv line 2: label 'beach' is not in the config key 'classes'" in message
    index = index_dataset(root, load_config({"classes": ["dog", "beach"]}))
    assert index.classes == ("dog", "beach")  # config order is output order


def test_num_classes_disagreement(tmp_path):
    root = make_dataset(tmp_path, GOOD_TRAIN, "", "", _default_images(*"abc"))
    message = errors_of(root, load_config({"num_classes": 7}))
    assert "config key 'num_classes' is 7 but the data has 2 classes (beach, dog)" in message
    assert index_dataset(root, load_config({"num_classes": 2})).classes == ("beach", "dog")


def test_empty_train_split(tmp_path):
    root = make_dataset(tmp_path, "", "", "", {})
    assert "train_labels.csv: has no rows" in errors_of(root)


def test_problem_cap(tmp_path):
    train = GOOD_TRAIN + "".join(f"/abs{i}.jpg,dog\n" for i in range(30))
    root = make_dataset(tmp_path, train, "", "", _default_images(*"abc"))
    message = errors_of(root, load_config({"data": {"max_errors": 5}}))
    assert "30 problem(s)" in message and "... and 25 more" in message


def test_shared_image_between_splits_is_a_warning(tmp_path):
    root = make_dataset(tmp_path, GOOD_TRAIN, "a.jpg,dog\n", "", _default_images(*"abc"))
    _, summary = validate_dataset(root, Config())
    assert any("a.jpg is in both train and val" in w for w in summary["warnings"])


def test_a_class_with_few_positives_in_a_split_is_a_warning_naming_split_class_and_count(tmp_path):
    """One image short of MIN_POSITIVES is named with its count, in its split; at MIN_POSITIVES none."""
    n = MIN_POSITIVES
    train = "".join(f"t{i}.jpg,dog|cat\n" for i in range(n - 1)) + "u.jpg,cat\n"  # dog n - 1, cat n
    val = "".join(f"v{i}.jpg,dog|cat\n" for i in range(n))
    names = [f"t{i}" for i in range(n - 1)] + ["u"] + [f"v{i}" for i in range(n)]
    root = make_dataset(tmp_path, train, val, "", _default_images(*names))
    _, summary = validate_dataset(root, Config())
    assert summary["warnings"] == [
        "test_labels.csv has no rows",  # an empty split: its own warning only
        f"train_labels.csv: 1 class(es) with fewer than {n} positive images: dog ({n - 1}). Their AP and "
        "threshold rest on those few images and move a lot between training seeds; label more images of them, "
        "or read their figures with care",
    ]

"""The development suite (mobiletag.data.suite) and `make bench-quality`'s bookkeeping (bench/quality.py):
generators write what they declare, the same seed the same files; per-set mean, spread and goal;
resumable runs. No training: bench/quality.py's train and baselines are replaced by stand-ins."""

from __future__ import annotations

import collections
import csv
import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image, ImageOps

from mobiletag.config import load_config
from mobiletag.data import suite

from .conftest import bench_modules

REPO = Path(__file__).parents[2]
BENCH = REPO / "bench"
SMALL = (("train", 20), ("val", 20), ("test", 20))  # 10 classes x 2 forced positives per split
PHOTO_SMALL = (("train", 3), ("val", 2), ("test", 2))
TINY = (("train", 2), ("val", 1), ("test", 1))


@pytest.fixture(scope="module")
def quality() -> Iterator[ModuleType]:
    """bench/quality.py, imported as the bench scripts import each other."""
    with bench_modules("quality") as modules:
        yield modules["quality"]


def _rows(root: Path, split: str) -> list[dict[str, str]]:
    with open(root / f"{split}_labels.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["small-objects", "glyphs", "imbalance", "textures"])
def test_each_96px_set_writes_its_declared_classes_in_every_split(name, tmp_path):
    counts = suite.SUITE[name](tmp_path, seed=3, splits=SMALL)
    assert counts == dict(SMALL)
    declared = set(suite.SUITE_CLASSES[name])
    for split, count in SMALL:
        rows = _rows(tmp_path, split)
        assert len(rows) == count
        labels = [[label for label in row["labels"].split("|") if label] for row in rows]
        assert set().union(*map(set, labels)) <= declared
        assert all(len(set(one)) == len(one) <= 4 for one in labels)
        if name != "small-objects":  # the suite's own sets: every class in every split
            seen = collections.Counter(label for one in labels for label in one)
            assert {c: seen[c] >= 2 for c in declared} == dict.fromkeys(declared, True)
        for row in rows[:3]:
            with Image.open(tmp_path / "images" / row["filepath"]) as image:
                assert (image.size, image.mode) == ((96, 96), "RGB")


HASH_SEED_SCRIPT = """
import hashlib, json, sys, tempfile
from pathlib import Path
import numpy as np
from mobiletag.data import suite
digest = hashlib.sha256()
rng = np.random.default_rng(0)
for _ in range(3000):  # enough draws for ties among equally common classes to be cut
    digest.update("|".join(suite._imbalance_labels(rng)).encode() + b"\\n")
root = Path(tempfile.mkdtemp())
splits = json.loads(sys.argv[1])  # set name -> splits
for name in suite.SUITE:
    suite.SUITE[name](root / name, seed=0, splits=tuple(map(tuple, splits[name])))
for path in sorted(root.rglob("*")):
    if path.is_file():
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
print(digest.hexdigest())
"""


def test_the_sets_do_not_move_with_the_python_hash_seed():
    """The suite's files are the same in every process: a generator that cut labels in the order of a
    set of names wrote another imbalance set under each PYTHONHASHSEED (6 of its 600 images)."""
    import json
    import subprocess
    import sys

    def digest(hash_seed: str) -> str:
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        splits = json.dumps({name: PHOTO_SMALL if name == "photos" else SMALL for name in suite.SUITE})
        command = [sys.executable, "-c", HASH_SEED_SCRIPT, splits]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert digest("1") == digest("2")


@pytest.mark.parametrize("name", ["glyphs", "imbalance", "textures", "photos"])
def test_the_same_seed_writes_the_same_files_and_another_seed_others(name, tmp_path):
    for folder, seed in (("a", 5), ("b", 5), ("c", 6)):
        suite.SUITE[name](tmp_path / folder, seed=seed, splits=TINY)
    a, b, c = (_files(tmp_path / folder) for folder in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert [k for k in a if k.startswith("images/") and a[k] != c[k]] == [k for k in a if k.startswith("images/")]


def test_glyph_set_turns_flips_off_through_its_config_yaml_under_the_presets(tmp_path):
    suite.make_glyph_dataset(tmp_path, seed=0, splits=SMALL)
    dataset_config = tmp_path / "config.yaml"
    # the override order of `mobiletag train`: defaults, the dataset's config.yaml, the user's preset
    for preset in ("fast.yaml", "demo.yaml"):
        assert load_config(dataset_config, REPO / "configs" / preset).data.augment.flip is False
        assert load_config(REPO / "configs" / preset).data.augment.flip is True


def test_a_mirrored_2_is_a_5_in_the_glyph_strokes():
    mirror = {"a": "a", "b": "f", "c": "e", "d": "d", "e": "c", "f": "b", "g": "g"}
    segments = suite.DIGIT_SEGMENTS
    assert sorted(mirror[s] for s in segments[2]) == sorted(segments[5])


def test_imbalance_set_has_common_and_rare_classes_and_pairs_that_co_occur():
    rng = np.random.default_rng(0)
    draws = [suite._imbalance_labels(rng) for _ in range(4000)]
    count = collections.Counter(label for labels in draws for label in labels)
    order = sorted(suite.IMBALANCE_PREVALENCE, key=suite.IMBALANCE_PREVALENCE.get, reverse=True)
    common, rare = order[:2], order[-4:]
    assert min(count[c] for c in common) > 10 * max(count[c] for c in rare)
    for cls, partner, _ in suite.IMBALANCE_PAIRS:
        with_cls = [labels for labels in draws if cls in labels]
        together = sum(partner in labels for labels in with_cls) / len(with_cls)
        assert together > count[partner] / len(draws)  # more often together than the partner alone


def test_photos_are_phone_sized_jpegs_upright_through_their_exif_orientation(tmp_path):
    counts = suite.make_photo_dataset(tmp_path, seed=0, splits=PHOTO_SMALL)
    assert counts == dict(PHOTO_SMALL)
    orientations = []
    for split, _ in PHOTO_SMALL:
        for row in _rows(tmp_path, split):
            assert set(filter(None, row["labels"].split("|"))) <= set(suite.PHOTO_CLASSES)
            with Image.open(tmp_path / "images" / row["filepath"]) as image:
                assert image.format == "JPEG"
                orientation = image.getexif().get(suite.EXIF_ORIENTATION)
                stored = image.size
                upright = ImageOps.exif_transpose(image)
            orientations.append(orientation)
            assert upright.size == suite.PHOTO_SIZE
            assert stored == (suite.PHOTO_SIZE[::-1] if orientation in (6, 8) else suite.PHOTO_SIZE)
    assert sorted(set(orientations)) == [1, 3, 6]  # upright, turned 180 and 90 degrees (seed 0)


def test_a_photo_stored_turned_comes_back_as_drawn(tmp_path):
    drawn = suite._photo_image(np.random.default_rng(0), ["hbar", "triangle"])
    for orientation in (6, 8, 3):
        path = tmp_path / f"{orientation}.jpg"
        suite._save_photo(drawn, path, _FixedChoice(orientation))
        with Image.open(path) as image:
            upright = np.asarray(ImageOps.exif_transpose(image), np.float32)
        assert np.abs(upright - np.asarray(drawn, np.float32)).mean() < 8  # JPEG noise, not a turn (~40)


class _FixedChoice:
    """An rng whose choice() returns one value: the orientation _save_photo draws."""

    def __init__(self, value: int) -> None:
        self.value = value

    def choice(self, options):
        return self.value


# ------------------------------------------------------------------------------------------
# bench/quality.py: aggregation and resumable runs
# ------------------------------------------------------------------------------------------


def test_summary_of_three_seeds_that_meet_the_goal(quality):
    summary = quality.summarize({2: 0.79, 0: 0.80, 1: 0.81}, best_regression=0.70)
    assert summary == {
        "seeds": [0, 1, 2],
        "int8_test_map": [0.80, 0.81, 0.79],
        "mean": 0.80,
        "spread": 0.02,
        "std": 0.01,
        "margin_over_regression": 0.10,
        "checks": {"margin": True, "spread": True},
        "status": "met",
    }


def test_summary_misses_on_spread_or_margin_and_waits_for_three_seeds(quality):
    wide = quality.summarize({0: 0.70, 1: 0.76, 2: 0.73}, best_regression=0.50)
    assert (wide["mean"], wide["spread"], wide["std"], wide["margin_over_regression"]) == (0.73, 0.06, 0.03, 0.23)
    assert (wide["checks"], wide["status"]) == ({"margin": True, "spread": False}, "missed")
    close = quality.summarize({0: 0.60, 1: 0.60, 2: 0.61}, best_regression=0.55)
    assert (close["margin_over_regression"], close["checks"], close["status"]) == (
        0.0533,
        {"margin": False, "spread": True},
        "missed",
    )
    two = quality.summarize({0: 0.9, 1: 0.9}, best_regression=0.5)
    assert (two["std"], two["status"]) == (0.0, "incomplete")
    assert quality.summarize({4: 0.9}, best_regression=0.5)["std"] is None
    assert quality.summarize({}, best_regression=0.5) == {"seeds": [], "status": "incomplete"}


def _fake_metrics(seed: int) -> dict:
    return {
        "test": {"map_macro": round(0.8 + seed / 100, 4)},
        "compare": {"student": {"map_macro": round(0.81 + seed / 100, 4)}, "teacher": {"map_macro": 0.5}},
        "distillation": {
            "shipped": "baseline",
            "students": {
                "distilled": {"test": {"map_macro": round(0.7 + seed / 50, 4)}},
                "baseline": {"test": {"map_macro": 0.8}},
            },
        },
    }


BASE = {  # a set's baselines, as bench/quality.py's baselines returns them
    "constant": {"test_map": 0.2},
    "logistic_regression_24px": {"test_map": 0.6, "C": 1.0, "seconds": 0.1},
    "logistic_regression_48px": {"test_map": 0.65, "C": 0.1, "seconds": 0.1},
}


@pytest.fixture
def small_glyphs(quality, monkeypatch) -> None:
    """The glyph set generated at SMALL splits, its baselines faked: bench/quality.py's bookkeeping at no cost."""
    monkeypatch.setattr(quality, "baselines", lambda data_dir: BASE)
    monkeypatch.setitem(suite.SUITE, "glyphs", functools.partial(suite.make_glyph_dataset, splits=SMALL))
    monkeypatch.setitem(suite.SUITE_SPLITS, "glyphs", SMALL)


def test_the_preset_digest_is_its_settings_not_its_comments(quality, tmp_path):
    """A comment or layout edit keeps a preset's runs; a changed value does not."""
    text = (REPO / "configs" / "fast.yaml").read_text()
    commented = tmp_path / "commented.yaml"
    commented.write_text("# a note\n" + text.replace("learning_rate:", "learning_rate:  ", 1))
    changed = tmp_path / "changed.yaml"
    changed.write_text(text.replace("\nseed: 7\n", "\nseed: 8\n", 1))
    assert changed.read_text() != text
    digest = quality.preset_digest(REPO / "configs" / "fast.yaml")
    assert quality.preset_digest(commented) == digest
    assert quality.preset_digest(changed) != digest


def test_runs_stored_in_the_results_file_are_not_trained_again(quality, tmp_path, monkeypatch, small_glyphs):
    trained: list[tuple[str, int]] = []

    def fake_train(data_dir, config, out_dir, work_dir):
        import yaml

        seed = yaml.safe_load(Path(config).read_text())["seed"]
        trained.append((Path(config).parent.parent.name, seed))
        return _fake_metrics(seed)

    monkeypatch.setattr(quality, "train", fake_train)
    out, keep = tmp_path / "quality.json", tmp_path / "work"
    common = ["--sets", "glyphs", "--out", str(out), "--keep", str(keep)]

    quality.main([*common, "--seeds", "0,1"])
    monkeypatch.setattr(quality, "_commit", lambda: "def5678")  # seed 2's rows at a later commit
    quality.main([*common, "--seeds", "0,1,2"])
    assert trained == [("glyphs", 0), ("glyphs", 1), ("glyphs", 2)]

    results = quality.load_results(out)
    entry = results["sets"]["glyphs"]
    assert entry["best_regression_test_map"] == 0.65
    assert entry["runs"]["2"]["students_test_map"] == {"distilled": 0.74, "baseline": 0.8}
    assert entry["summary"]["int8_test_map"] == [0.8, 0.81, 0.82]
    assert (entry["summary"]["mean"], entry["summary"]["spread"], entry["summary"]["status"]) == (0.81, 0.02, "met")
    assert entry["summary"]["float_student_mean"] == 0.82
    assert entry["summary"]["float_student_spread"] == 0.02
    # distilled - baseline per seed: -0.1, -0.08, -0.06
    assert entry["summary"]["distillation_gap"] == {"mean": -0.08, "spread": 0.04, "runs": 3}

    quality.main([*common, "--seeds", "1", "--rerun"])
    quality.main([*common, "--seeds", "0", "--config", str(REPO / "configs" / "demo.yaml")])
    assert trained[3:] == [("glyphs", 1), ("glyphs", 0)]
    runs = quality.load_results(out)["sets"]["glyphs"]["runs"]
    assert {s: r["config"] for s, r in runs.items()} == {"0": "configs/demo.yaml"}  # presets never mixed


def test_the_spread_splits_into_the_classes_with_few_test_positives_and_the_others_and_runs_name_their_cpu(quality):
    """Each run keeps its per-class test AP; the set's macro mAP splits into the share of the classes
    with fewer than 10 test positives and the share of the others, each with its spread over the
    seeds; a class with no test positives is in neither; bench/README.md shows it."""
    import readme  # bench/readme.py, imported by the fixture's bench_modules

    positives = {"rare": 3, "scarce": 9, "common": 10, "absent": 0}
    aps = {0: (0.5, 1.0, 0.9), 1: (1.0, 1.0, 0.93), 2: (0.8, 0.7, 0.9)}  # rare, scarce, common per seed
    runs = {}
    for seed, (rare, scarce, common) in aps.items():
        metrics = _fake_metrics(seed)
        ap = {"rare": rare, "scarce": scarce, "common": common, "absent": None}
        metrics["test"]["per_class"] = {c: {"ap": ap[c], "support": n} for c, n in positives.items()}
        runs[str(seed)] = quality.run_record(metrics, seed, "configs/fast.yaml", 1.0, "abc1234")
    assert runs["1"]["test_ap_by_class"] == {"rare": 1.0, "scarce": 1.0, "common": 0.93, "absent": None}
    assert runs["1"]["cpu"] == quality.run_cpu() and runs["1"]["cpu"].endswith(("AVX-512", "AVX2", "no AVX2"))
    entry = {"runs": runs, "best_regression_test_map": 0.6, "dataset": {}, "baselines": BASE}
    split = quality.set_summary(entry)["spread_by_positives"]
    # shares over the 3 classes with positives: few 0.5 / 0.6667 / 0.5, many 0.3 / 0.31 / 0.3
    assert split == {
        "min_positives": 10,
        "few": {"classes": 2, "positives": [3, 9], "spread": 0.1667},
        "many": {"classes": 1, "positives": [10], "spread": 0.01},
    }
    entry["summary"] = quality.set_summary(entry)
    entry["dataset"] = {"train": 4, "val": 4, "test": 4}
    lines = readme.quality_lines({"goal": "g", "sets": {"glyphs": entry}})
    assert "| `glyphs` | 2 (3, 9) | 0.1667 | 1 (10) | 0.01 |" in lines
    assert f"CPUs the runs trained on: `glyphs`: {quality.run_cpu()}." in lines
    del runs["2"]["test_ap_by_class"]  # a run from before per-class AP was kept: no split shown
    del runs["2"]["cpu"]
    entry["summary"] = quality.set_summary(entry)
    assert entry["summary"]["cpus"] == sorted([quality.run_cpu(), "not recorded"])
    assert "spread_by_positives" not in entry["summary"]
    assert not [x for x in readme.quality_lines({"goal": "g", "sets": {"glyphs": entry}}) if "(3, 9)" in x]


def test_trials_pair_each_change_with_the_preset_on_the_same_seed_and_are_not_trained_again(
    quality, tmp_path, monkeypatch, small_glyphs
):
    """--trial: the student stage alone, per set and seed, with the preset and with each change (the
    seed and alpha 1 given first); the gain is the test mAP minus the preset's on the same seed; rows
    in the file are not trained again; bench/README.md's table shows the summary."""
    calls: list[tuple[str, list[dict]]] = []
    gains = {"preset": 0.0, "more": 0.05}

    def fake_student_stage(stages, data_dir, config, overrides):
        calls.append((Path(stages).parent.parent.name, overrides))
        seed, change = overrides[1]["seed"], "more" if overrides[2] else "preset"
        test = round(0.6 + seed / 100 + gains[change] + (0.02 if (change, seed) == ("more", 2) else 0), 4)
        app = round(test - 0.03 + (0.01 if change == "more" else 0), 4)  # the app path, 0.02 less for "more"
        return {"val_map": test, "test_map": test, "app_test_map": app, "seconds": 1}

    monkeypatch.setattr(quality, "train", lambda *a: _fake_metrics(0))
    monkeypatch.setattr(quality, "student_stage", fake_student_stage)
    monkeypatch.setattr(quality, "_commit", lambda: "abc1234")
    out, keep = tmp_path / "quality.json", tmp_path / "work"
    trial = ["--trial", "more", '{"student": {"epochs": 20}}']
    common = ["--sets", "glyphs", "--out", str(out), "--keep", str(keep), *trial]

    quality.main([*common, "--seeds", "0,1"])
    monkeypatch.setattr(quality, "_commit", lambda: "def5678")  # seed 2's rows at a later commit
    quality.main([*common, "--seeds", "0,1,2"])
    assert [(s, o[1]["seed"], o[2]) for s, o in calls] == [
        ("glyphs", seed, change) for seed in (0, 1, 2) for change in ({}, {"student": {"epochs": 20}})
    ]
    assert all(o[0] == {"student": {"alpha": 1.0}} for _, o in calls)
    # another seed first would train on that seed's run (another stored order): refused before any training
    with pytest.raises(SystemExit):
        quality.main([*common, "--seeds", "2,0,1"])
    assert len(calls) == 6 and quality.load_results(out)["trials"]["glyphs"]["run_seed"] == 0
    summary = quality.load_results(out)["trials"]["glyphs"]["summary"]
    assert summary["preset"]["test_mean"] == 0.61 and summary["preset"]["test_gain"] is None
    assert summary["more"]["seeds"] == [0, 1, 2]
    assert summary["more"]["test_spread"] == 0.04  # 0.65, 0.66, 0.69
    assert summary["more"]["test_gain"] == {"mean": 0.0567, "min": 0.05, "max": 0.07}
    assert (summary["more"]["app_test_mean"], summary["more"]["app_test_spread"]) == (0.6467, 0.04)
    assert summary["more"]["app_test_gain"] == {"mean": 0.0667, "min": 0.06, "max": 0.08}
    assert summary["preset"]["app_test_gain"] is None

    import readme  # bench/readme.py, imported by the fixture's bench_modules

    table = "\n".join(readme.quality_lines(quality.load_results(out)))
    assert (
        '| `glyphs` | `configs/fast.yaml` at abc1234, def5678 | more: `{"student":{"epochs":20}}` | 0, 1, 2 |' in table
    )
    assert "| 0.6667 (0.04) | +0.0567 (+0.0500 to +0.0700) | 0.6467 (0.04) | +0.0667 (+0.0600 to +0.0800) |" in table
    # rows trained before the app path was measured: their change has no app-path figures
    results = quality.load_results(out)
    rows = results["trials"]["glyphs"]["rows"]
    del rows["more/0"]["app_test_map"]
    old = quality.trial_summary(rows)["more"]
    assert (old["test_mean"], old["app_test_mean"], old["app_test_gain"]) == (0.6667, None, None)
    # rows trained as another change of the same configuration (the preset took its value) say so
    results = quality.load_results(out)
    results["trials"]["glyphs"]["rows"]["preset/1"]["carried_from"] = "more/1 at abc0000"
    table = "\n".join(readme.quality_lines(results))
    assert "| preset (rows trained as more/1 at abc0000: the same configuration) | 0, 1, 2 |" in table

    # the same preset file with other contents: its old rows do not compare, they are trained again
    preset = tmp_path / "preset.yaml"
    preset.write_text((REPO / "configs" / "fast.yaml").read_text())
    quality.main([*common, "--seeds", "0", "--config", str(preset)])
    preset.write_text(preset.read_text().replace("seed: 7", "seed: 8"))
    quality.main([*common, "--seeds", "0", "--config", str(preset)])
    assert len(calls) == 6 + 2 + 2
    # figures trained at settings the preset file has since changed: the suite's and the trials' rows say so
    name = os.path.relpath(preset.resolve(), REPO)
    table = "\n".join(readme.quality_lines(quality.load_results(out)))
    assert f"| `glyphs` | 20 / 20 / 20 | `{name}` at def5678 | 0: 0.8 |" in table
    assert f"| `glyphs` | `{name}` at def5678 | preset | 0 |" in table
    assert table.count("(earlier settings) |") == 2  # only the superseded seed-7 version's preset and more rows
    preset.write_text(preset.read_text().replace("seed: 8", "seed: 9"))
    table = "\n".join(readme.quality_lines(quality.load_results(out)))
    assert f"| `glyphs` | 20 / 20 / 20 | `{name}` at def5678 (earlier settings) | 0: 0.8 |" in table
    assert f"| `glyphs` | `{name}` at def5678 (earlier settings) | preset | 0 |" in table
    # the trials those runs superseded stay in the file, after the set's current one in the table
    earlier = quality.load_results(out)["earlier_trials"]["glyphs"]
    assert [(t["config"], sorted(t["rows"])) for t in earlier] == [
        ("configs/fast.yaml", [f"{c}/{s}" for c in ("more", "preset") for s in (0, 1, 2)]),
        (name, ["more/0", "preset/0"]),
    ]
    current = table.index(f"| `glyphs` | `{name}` at def5678 (earlier settings) | preset | 0 |")
    first = table.index('| `glyphs` | `configs/fast.yaml` at abc1234, def5678 | more: `{"student":{"epochs":20}}` |')
    assert current < first < table.index(f"| `glyphs` | `{name}` at def5678 (earlier settings) | more: ", first)


def test_a_trial_run_that_stops_keeps_the_rows_it_trained(quality, tmp_path, monkeypatch, small_glyphs):
    """The results file is written after each trial row: a run stopped in its third student stage
    (killed, or out of time) keeps the first two."""
    calls = []

    def fake_student_stage(stages, data_dir, config, overrides):
        calls.append(overrides)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return {"val_map": 0.9, "test_map": 0.8, "app_test_map": 0.7, "seconds": 1}

    monkeypatch.setattr(quality, "train", lambda *a: _fake_metrics(0))
    monkeypatch.setattr(quality, "student_stage", fake_student_stage)
    out = tmp_path / "quality.json"
    trial = ["--trial", "more", '{"student": {"epochs": 20}}']
    with pytest.raises(KeyboardInterrupt):
        quality.main(["--sets", "glyphs", "--seeds", "0,1", "--out", str(out), "--keep", str(tmp_path / "w"), *trial])
    trial = quality.load_results(out)["trials"]["glyphs"]
    assert sorted(trial["rows"]) == ["more/0", "preset/0"]
    assert trial["summary"]["more"]["test_gain"] == {"mean": 0.0, "min": 0.0, "max": 0.0}


def test_a_second_process_s_runs_and_trial_rows_merge_and_a_differing_rerun_is_refused(
    quality, tmp_path, monkeypatch, small_glyphs, capsys
):
    """--merge: two processes train side by side into their own results files; one's runs and trial
    rows at the preset's current settings fold into the other's without training; a run both hold
    with other figures, or a set on other data, is refused with its name; a trial at other settings
    moves to earlier_trials; trial rows on data the generator no longer writes are marked."""
    import readme  # bench/readme.py, imported by the fixture's bench_modules
    import yaml

    trained: list[int] = []

    def fake_train(data_dir, config, out_dir, work_dir):
        trained.append(yaml.safe_load(Path(config).read_text())["seed"])
        return _fake_metrics(trained[-1])

    def fake_student_stage(stages, data_dir, config, overrides):
        test = round(0.6 + overrides[1]["seed"] / 100 + (0.05 if overrides[2] else 0), 4)
        return {"val_map": test, "test_map": test, "app_test_map": test, "seconds": 1}

    monkeypatch.setattr(quality, "train", fake_train)
    monkeypatch.setattr(quality, "student_stage", fake_student_stage)
    monkeypatch.setattr(quality, "_commit", lambda: "abc1234")
    out, lane = tmp_path / "quality.json", tmp_path / "lane.json"
    common = ["--sets", "glyphs", "--keep", str(tmp_path / "work")]
    trial = ["--trial", "more", '{"student": {"epochs": 20}}']
    quality.main([*common, "--out", str(out), "--seeds", "0"])
    lane.write_text(out.read_text())  # the second process starts from a copy
    quality.main([*common, "--out", str(lane), "--seeds", "1,2"])
    quality.main([*common, "--out", str(out), "--seeds", "0,1", *trial])
    quality.main([*common, "--out", str(lane), "--seeds", "0,2", *trial])
    assert trained[:3] == [0, 1, 2]  # then seed 0 again for each trial (the fake leaves no teacher to start from)
    before, count = out.read_text(), len(trained)

    quality.main(["--out", str(out), "--merge", str(lane)])
    assert len(trained) == count  # merging trains nothing
    assert "glyphs: runs of seeds 1, 2; glyphs: trial rows more/2, preset/2" in capsys.readouterr().out
    results = quality.load_results(out)
    entry, rows = results["sets"]["glyphs"], results["trials"]["glyphs"]["rows"]
    assert list(entry["runs"]) == ["0", "1", "2"] and entry["summary"]["int8_test_map"] == [0.8, 0.81, 0.82]
    assert (entry["summary"]["spread"], entry["summary"]["status"]) == (0.02, "met")
    assert sorted(rows) == [f"{c}/{s}" for c in ("more", "preset") for s in (0, 1, 2)]
    more = results["trials"]["glyphs"]["summary"]["more"]
    assert (more["seeds"], more["test_gain"]) == ([0, 1, 2], {"mean": 0.05, "min": 0.05, "max": 0.05})

    # a rerun with other figures: refused, the file untouched; --rerun takes the merged file's
    other = quality.load_results(lane)
    other["sets"]["glyphs"]["runs"]["1"]["int8_test_map"] = 0.7
    lane.write_text(json.dumps(other))
    merged = out.read_text()
    with pytest.raises(SystemExit):
        quality.main(["--out", str(out), "--merge", str(lane)])
    assert "set glyphs seed 1: both files hold a run at the current settings" in capsys.readouterr().err
    assert out.read_text() == merged
    quality.main(["--out", str(out), "--merge", str(lane), "--rerun"])
    assert quality.load_results(out)["sets"]["glyphs"]["summary"]["int8_test_map"] == [0.8, 0.7, 0.82]
    # the same for a trial row, and trials on another seed's run do not pair at all
    row = other["trials"]["glyphs"]["rows"]["more/2"]
    row["test_map"], merged = 0.5, out.read_text()
    lane.write_text(json.dumps(other))
    with pytest.raises(SystemExit):
        quality.main(["--out", str(out), "--merge", str(lane)])
    assert "trials of glyphs, row more/2: both files hold it" in capsys.readouterr().err
    other["trials"]["glyphs"]["run_seed"] = 2
    lane.write_text(json.dumps(other))
    with pytest.raises(SystemExit):
        quality.main(["--out", str(out), "--merge", str(lane), "--rerun"])
    assert "here on seed 0's run, there on seed 2's" in capsys.readouterr().err
    assert out.read_text() == merged
    row["test_map"], other["trials"]["glyphs"]["run_seed"] = 0.67, 0
    # another set's data: refused
    other["sets"]["glyphs"]["dataset"]["digest"] = "sha256:other"
    lane.write_text(json.dumps(other))
    with pytest.raises(SystemExit):
        quality.main(["--out", str(out), "--merge", str(lane)])
    assert "set glyphs: its data differ" in capsys.readouterr().err
    kept = out.read_text()  # with --rerun (the set's generator changed): the merged file's set, its runs
    quality.main(["--out", str(out), "--merge", str(lane), "--rerun"])
    taken = quality.load_results(out)["sets"]["glyphs"]
    assert (taken["dataset"]["digest"], list(taken["runs"])) == ("sha256:other", ["0", "1", "2"])
    out.write_text(kept)
    other["sets"]["glyphs"]["dataset"]["digest"] = entry["dataset"]["digest"]
    other["sets"]["glyphs"]["runs"]["2"]["config_digest"] = "sha256:older"  # a run at settings since changed
    lane.write_text(json.dumps(other))

    # a trial here at settings the preset no longer has: the merged current one takes its place
    out.write_text(before)
    stale = quality.load_results(out)
    stale["trials"]["glyphs"]["config_digest"] = "sha256:older"
    out.write_text(json.dumps(stale))
    quality.main(["--out", str(out), "--merge", str(lane)])
    results = quality.load_results(out)
    assert list(results["sets"]["glyphs"]["runs"]) == ["0", "1"]  # not the one at older settings
    assert sorted(results["trials"]["glyphs"]["rows"]) == [f"{c}/{s}" for c in ("more", "preset") for s in (0, 2)]
    assert [sorted(t["rows"]) for t in results["earlier_trials"]["glyphs"]] == [
        [f"{c}/{s}" for c in ("more", "preset") for s in (0, 1)]
    ]
    # the set's generator writes other data now: the trials on the old data say so
    results["sets"]["glyphs"]["dataset"]["digest"] = "sha256:newer"
    table = "\n".join(readme.quality_lines(results))
    assert table.count("abc1234 (earlier data) |") == 2  # the current trial's two changes
    assert table.count("(earlier settings) (earlier data) |") == 2  # the earlier trial: both
    assert "| `glyphs` | 20 / 20 / 20 | `configs/fast.yaml` at abc1234 | 0: 0.8, 1: 0.7 |" in table
    # the generator writes larger splits now: the set's runs were on data it no longer writes, as are its trials
    results["sets"]["glyphs"]["dataset"]["digest"] = results["trials"]["glyphs"]["data"]
    monkeypatch.setitem(suite.SUITE_SPLITS, "glyphs", (("train", 20), ("val", 40), ("test", 40)))
    table = "\n".join(readme.quality_lines(results))
    assert "| `glyphs` | 20 / 20 / 20 | `configs/fast.yaml` at abc1234 (earlier data) | 0: 0.8, 1: 0.7 |" in table
    assert table.count("abc1234 (earlier data) |") == 1 + 2  # the set's runs, the current trial's two changes


def test_every_imbalance_class_has_the_summary_s_minimum_of_positives_in_validation_and_test(tmp_path):
    """The imbalance set as bench-quality generates it (seed 0, its own splits): no class falls below the
    count under which the dataset summary warns that its AP moves between training seeds (at 90
    validation and test images the rarest had 3-5), and the training split keeps its 420 images."""
    from mobiletag.data.dataset import MIN_POSITIVES

    counts = suite.SUITE["imbalance"](tmp_path, seed=0)
    assert counts == {"train": 420, "val": 360, "test": 360}
    for split in ("val", "test"):
        seen = collections.Counter(label for row in _rows(tmp_path, split) for label in row["labels"].split("|"))
        assert min(seen[c] for c in suite.IMBALANCE_CLASSES) >= MIN_POSITIVES, (split, seen)


@pytest.mark.parametrize("name", list(suite.SUITE))
def test_suite_splits_are_what_each_generator_writes_by_default(name):
    """bench/README.md marks runs on splits of other sizes than SUITE_SPLITS: it must be each
    generator's own default."""
    import inspect

    assert inspect.signature(suite.SUITE[name]).parameters["splits"].default == suite.SUITE_SPLITS[name]

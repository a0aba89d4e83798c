"""bench/README.md is rendered from the results files (bench/report.py, bench/readme.py), never edited by hand."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import ModuleType

import pytest

from .conftest import BENCH, bench_modules


@pytest.fixture(scope="module")
def bench() -> Iterator[dict[str, ModuleType]]:
    """bench/'s report, readme and stats modules, imported as bench/run.py imports them."""
    with bench_modules("stats", "report", "readme") as modules:
        yield modules


def test_the_committed_readme_is_the_one_the_results_files_give(bench):
    expected = bench["readme"].render(BENCH / "results.json")
    committed = (BENCH / "README.md").read_text()
    assert committed == expected, (
        "bench/README.md differs from what bench/results.json, scale.json and quality.json give: "
        "write it again with `python bench/run.py --readme` (do not edit it by hand)"
    )


def _results(stats) -> dict:
    """A small results file: the machine, the host input section, one section in an older format,
    the benchmark's seconds and the comparison with a previous run."""
    return {
        "machine": {
            "cpu_model": "Test CPU",
            "cores": 2,
            "cpu_features": ["avx2", "fma"],
            "gpus": 0,
            "python": "3.11.7",
            "tensorflow": "2.21.0",
            "litert": "2.3.0",
            "date": "2026-12-05",
        },
        "host_input": {
            "sizes": {"teacher": 300, "student": 240},
            "augment_on_host": {
                "images_per_core_second": stats.summarize([400.0, 380.0]),
                "host_to_device_bytes_per_image": 1000,
            },
            "augment_in_step": {
                "images_per_core_second": stats.summarize([1000.0, 1040.0]),
                "host_to_device_bytes_per_image": 250,
            },
            "plain_decode": {"images_per_core_second": stats.summarize([2000.0]), "host_to_device_bytes_per_image": 9},
            "augment_in_step_vs_on_host": stats.summarize([2.5, 2.7], "> 1"),
            "augment_in_step_vs_plain_decode": stats.summarize([0.5, 0.52]),
            "bytes_augment_on_host_vs_in_step": 4.0,
        },
        "training": {"qat_step_ms": 210.0},  # no longer the keys the rows read
        "bench_seconds": {"host_input": 40.0, "training": 1.2, "total": 41.5},
        "previous_run": {
            "date": "2026-12-04",
            "ratios": {
                "host_input.augment_in_step_vs_on_host": {
                    "previous": [2.4, 2.3, 2.45],
                    "current": [2.6, 2.5, 2.7],
                    "agree": False,
                }
            },
            "agree": 0,
            "of": 1,
        },
    }


def test_table_rows_of_a_small_results_file(bench):
    assert bench["report"].table(_results(bench["stats"])).splitlines() == [
        "Test CPU, 2 cores (avx2, fma); 0 GPU; Python 3.11.7, TensorFlow 2.21.0, LiteRT 2.3.0; 2026-12-05",
        "",
        "| measure | figures (medians) | ratio (median) | [min, max] | n | goal | status |",
        "|---|---|---|---|---|---|---|",
        "| host input per core at 300/240 px: augmentation in the step / on the host, img/s | 1020.0 / 390.0 "
        "| 2.6 | [2.5, 2.7] | 2 | > 1 | met |",
        "| host input per core: augmentation in the step / plain decode of the stored JPEGs, img/s "
        "| 1020.0 / 2000.0 | 0.51 | [0.5, 0.52] | 2 |  |  |",
        "| host-to-device bytes per image: augmentation on the host / in the step | 1000 / 250 | 4.0 |  | 1 |  |  |",
        "| training: recorded in an older format, re-measure with --only training |  |  |  |  |  |  |",
        "| this benchmark, s | 41.5 (host_input 40.0, training 1.2) | 41.5 |  | 1 | < 1200 | met, 1 run |",
        "",
        "Against the previous run (2026-12-04): 0 of 1 ratios agree (each run's median within the other's [min, max]).",
        "",
        "| ratio | previous: median [min, max] | this run: median [min, max] | agree |",
        "|---|---|---|---|",
        "| host_input.augment_in_step_vs_on_host | 2.4 [2.3, 2.45] | 2.6 [2.5, 2.7] | **no** |",
    ]


def test_scale_table_and_a_shape_the_renderer_does_not_know(bench):
    readme = bench["readme"]
    scale = {
        "sizes": [1000, 4000],
        "splits": "20% train, 40% val, 40% test",
        "image": "64x48 JPEG",
        "results": {
            "1000": {"evaluate": {"seconds": 8.65, "run_seconds": 7.5, "peak_rss_mb": 761.1}},
            "4000": {"evaluate": {"seconds": 16.35, "run_seconds": 15.3, "peak_rss_mb": 757.8, "report_bytes": 5}},
        },
        "growth": {
            "evaluate": {
                "rss_ratio": 0.996,
                "rss_goal": 1.3,
                "seconds_ratio": 1.89,
                "run_seconds_ratio": 2.04,
                "seconds_goal": 4.8,
                "met": True,
            }
        },
        "cores": 2,
    }
    assert readme.scale_lines(scale)[2:] == [
        "| stage | N = 1,000: s / MB | 4,000 | memory x | seconds x (in the stage) | goal |",
        "|---|---|---|---|---|---|",
        "| evaluate | 8.7 / 761 | 16.4 / 758 | 1.00 | 1.89 (2.04) | met |",
        "",
        "Goals, from N = 1,000 to 4,000: peak memory at most 1.3x, seconds at most 4.8x.",
    ]
    other = {"stages": {"evaluate": {"seconds": [1.5, 2.0]}}, "note": "new layout"}
    assert readme._optional("Scale", "scale.json", other, readme.scale_lines) == [
        "",
        "## Scale",
        "",
        "`bench/scale.json` in a shape this README does not know; its figures as they are:",
        "",
        "| key | value |",
        "|---|---|",
        "| stages.evaluate.seconds | 1.5, 2.0 |",
        "| note | new layout |",
    ]
    assert readme._optional("Scale", "scale.json", None, readme.scale_lines)[-1] == "No `bench/scale.json` yet."


def _evaluate_scale(summarize) -> dict:
    """scale.json's evaluate figures as bench/scale.py summarises them."""
    profile = {
        "decode_test_image": [1.5, 1.7],
        "decode_val_image": [1.0, 1.2],
        "teacher_traced": [4.0, 5.0],
        "teacher_eager": [11.0, 12.0],
        "student_traced": [1.2, 1.4],
        "student_eager": [3.2, 3.4],
        "int8": [0.6, 0.6],
    }
    return {
        "evaluate_at_largest": {
            "n": 16000,
            "seconds": summarize([150.0, 170.0, 160.0], "<= 120", digits=1),
            "run_seconds": summarize([140.0, 150.0, 145.0], digits=1),
        },
        "eager_vs_traced": {
            "n": 1000,
            "eager_seconds": summarize([60.0, 62.0], digits=1),
            "traced_seconds": summarize([40.0, 44.0], digits=1),
            "eager_over_traced": summarize([1.5, 1.41], digits=2),
            "measured_gap_seconds": summarize([20.0, 18.0], digits=1),
            "profile_gap_seconds": summarize([15.0, 16.0], digits=1),
            "eager_at_largest_estimate": {"seconds": summarize([400.0, 420.0], digits=0), "how": "as measured"},
            "max_abs_diff": {"0_efficientnet_lite1": 2.4e-07, "2_teacher": 1.1e-06},
            "tolerance": 1e-05,
            "within": True,
            "int8_scores_identical": True,
            "float_map_macro_max_abs_diff": 0.0,
        },
        "profile_ms_per_image": {key: summarize(values) for key, values in profile.items()},
        "profile_seconds_at_largest": {
            key: summarize([10.0, 12.0], digits=1)
            for key in ("decode", "teacher_traced", "students_traced", "int8", "traced_models", "eager_models")
        },
        "load": {"start": "load average: 1.00", "end": "load average: 2.00"},
    }


def test_evaluate_lines_state_the_goal_both_paths_and_the_parts(bench):
    readme, summarize = bench["readme"], bench["stats"].summarize
    scale = _evaluate_scale(summarize)
    lines = readme.evaluate_lines(scale)
    assert lines[3:10] == [
        "| N = 16,000, float models traced (process; goal <= 120 s: missed) | 160 (150-170, 3 runs) |",
        "| N = 16,000, traced, the `run` call | 145 (140-150, 3 runs) |",
        "| N = 16,000, float models eager, estimated | 410 (400-420, 2 runs) |",
        "| N = 1,000, float models eager | 61 (60-62, 2 runs) |",
        "| N = 1,000, float models traced | 42 (40-44, 2 runs) |",
        "| N = 1,000, eager / traced, per round | 1.46x (1.41-1.5, 2 runs) |",
        "| N = 1,000, eager - traced, measured | 19 (18-20, 2 runs) |",
    ]
    assert "teacher 4.5 traced / 11.5 eager; a student 1.3 / 3.3; INT8 0.6." in lines[-3]
    assert lines[-3].endswith(
        "Largest |eager - traced| probability: 0_efficientnet_lite1 2.4e-07, 2_teacher 1.1e-06 (tolerance 1e-05: "
        "within); INT8 scores identical; the float models' macro mAP differ by at most 0."
    )
    assert lines[-1] == "Load: `load average: 1.00` at the start, `load average: 2.00` at the end."
    assert readme.evaluate_lines({"sizes": [1000]}) == []


def test_evaluate_lines_state_the_sample_and_before_after(bench):
    """With the float models on a sample: each part names the images it covers; evaluate before and
    after at the largest N, alternated, with its goal."""
    readme, summarize = bench["readme"], bench["stats"].summarize
    scale = _evaluate_scale(summarize)
    scale["compare_images"] = 2000
    scale["evaluate_before_after"] = {
        "n": 16000,
        "before": "8f1486d3e38e2042f93cec91c965679bb1f04773",
        "before_scores": "every image",
        "after_scores": "2000 sampled",
        "before_seconds": summarize([400.0, 420.0], digits=1),
        "after_seconds": summarize([100.0, 130.0], "<= 120", digits=1),
        "before_run_seconds": summarize([390.0, 410.0], digits=1),
        "after_run_seconds": summarize([90.0, 120.0], digits=1),
        "before_over_after": summarize([4.0, 3.23], digits=2),
        "load": {"start": "load average: 3.00", "end": "load average: 4.00"},
    }
    lines = readme.evaluate_lines(scale)
    assert lines[11:20] == [
        "| N = 16,000: decoding the originals (threads, beside the models: 16,000 test, 2,000 of them also at "
        "the teacher's size, 2,000 validation) | 11 (10-12, 2 runs) |",
        "| N = 16,000: teacher on 2,000 sampled test images, traced | 11 (10-12, 2 runs) |",
        "| N = 16,000: two students on 2,000 sampled test and 2,000 validation images, traced | 11 (10-12, 2 runs) |",
        "| N = 16,000: INT8 model | 11 (10-12, 2 runs) |",
        "| N = 16,000: all models, traced | 11 (10-12, 2 runs) |",
        "| N = 16,000: all models, eager | 11 (10-12, 2 runs) |",
        "| N = 16,000, before: commit 8f1486d3e38e (process) | 410 (400-420, 2 runs) |",
        "| N = 16,000, after (process; goal <= 120 s: unstable) | 115 (100-130, 2 runs) |",
        "| N = 16,000, before, the `run` call | 400 (390-410, 2 runs) |",
    ]
    assert lines[20:22] == [
        "| N = 16,000, after, the `run` call | 105 (90-120, 2 runs) |",
        "| N = 16,000, before / after, per round | 3.62x (3.23-4, 2 runs) |",
    ]
    assert "times the images each part covers" in lines[-5]
    assert lines[-1].startswith(
        "evaluate before and after, alternated at N = 16,000 (2 rounds): before (commit "
        "8f1486d3e38e) scores every image; after, 2000 sampled, and the INT8 model"
    )


def test_readme_is_written_beside_the_results_file(bench, tmp_path):
    results = _results(bench["stats"])
    (tmp_path / "results.json").write_text(json.dumps(results))
    written = bench["readme"].write(tmp_path / "results.json")
    assert written == tmp_path / "README.md"
    text = written.read_text()
    assert text == bench["readme"].readme(results)
    assert bench["report"].table(results) in text
    assert text.endswith("## `make bench-quality`: the recipe on a hard set\n\nNo `bench/quality.json` yet.\n")

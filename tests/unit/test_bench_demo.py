"""`make bench-demo` (bench/demo.py): reading a demo's log, the alternation, the summary and its README rows.
No demo runs here: the log and the runs are written by hand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from .conftest import BENCH, bench_modules

REPO = BENCH.parent

LOG = """\
23:59:50.100 - INFO - Running pipeline: 'mobiletag'
23:59:50.110 - INFO - Executing task 'resolve-config'
    [KFP Executor 2026-12-06 23:59:50,381 INFO]: Task 'not-a-task-line' finished
23:59:50.600 - INFO - Task 'resolve-config' finished with status SUCCESS
23:59:50.700 - INFO - Executing task 'train-teacher'
\x1b[32m00:01:05.950 - INFO - Task 'train-teacher' finished with status SUCCESS\x1b[0m
00:01:06.000 - INFO - Executing task 'bundle'
00:01:06.500 - INFO - Task 'bundle' finished with status SUCCESS
00:01:06.600 - INFO - Pipeline 'mobiletag' finished with status SUCCESS
"""


@pytest.fixture(scope="module")
def bench() -> Iterator[dict[str, ModuleType]]:
    """bench/'s demo, stats and readme modules, imported as bench/demo.py imports them."""
    with bench_modules("demo", "stats", "readme") as modules:
        yield modules


def test_pipeline_and_task_seconds_from_the_log_past_midnight(bench):
    demo = bench["demo"]
    assert demo.pipeline_seconds(LOG) == 76.5
    assert demo.task_seconds(LOG) == {"resolve-config": 0.5, "train-teacher": 75.2, "bundle": 0.5}
    with pytest.raises(ValueError, match="did the pipeline run"):
        demo.pipeline_seconds(LOG.splitlines()[0])


def test_rounds_alternate_a_b_b_a(bench):
    assert bench["demo"].order(3) == [
        (0, "before"),
        (0, "after"),
        (1, "after"),
        (1, "before"),
        (2, "before"),
        (2, "after"),
    ]


def test_the_recipe_is_this_makefiles_demo_without_install(bench, tmp_path):
    demo = bench["demo"]
    lines = demo.recipe(REPO, Path("/venv/bin"), tmp_path / "d")
    assert [line.split()[:2] for line in lines] == [
        ["/venv/bin/mobiletag", "sample-data"],
        ["/venv/bin/mobiletag", "validate"],
        ["/venv/bin/mobiletag", "train"],
    ]
    assert f"--out-dir {tmp_path / 'd'}/output" in lines[2]
    assert demo.recipe_facts(lines) == {"config": "configs/demo.yaml", "images": 600}
    with pytest.raises(ValueError, match="no mobiletag command"):
        demo.recipe_lines("echo hello\n")


def _raw() -> dict:
    def run(r: int, side: str, seconds: float, teacher: float) -> dict:
        return {
            "round": r,
            "side": side,
            "pipeline_seconds": seconds,
            "wall_seconds": seconds + 9,
            "task_seconds": {"train-teacher": teacher, "bundle": 0.5},
            "test_map_macro_int8": 0.9892 if side == "before" else 0.9399,
            "load_before": "0.50 0.40 0.30",
        }

    return {
        "date": "2026-12-06",
        "machine": {"cpu_model": "Test CPU", "cores": 2},
        "before": {"commit": "cd5c461" + "0" * 33, "recipe": ["bin/mobiletag sample-data --images 1000 --config x"]},
        "after": {"commit": "abc" * 13 + "d-dirty", "recipe": ["bin/mobiletag train --config configs/demo.yaml"]},
        "runs": [
            run(0, "before", 569.3, 300.0),
            run(0, "after", 230.0, 70.0),
            run(1, "after", 248.4, 80.0),
            run(1, "before", 560.1, 310.0),
        ],
        "load": {"start": "0.50 0.40 0.30", "end": "1.00 0.90 0.80"},
        "seconds": 1700.0,
    }


def test_summary_medians_ratio_and_rounds(bench):
    report = bench["demo"].summary(_raw(), goal=0.40)
    assert report["before"]["pipeline_seconds"]["median"] == 564.7
    assert report["after"]["pipeline_seconds"]["samples"] == [230.0, 248.4]
    assert report["after"]["task_seconds"] == {"bundle": 0.5, "train-teacher": 75.0}
    assert (report["before"]["config"], report["before"]["images"]) == ("x", 1000)
    assert report["order"] == ["0:before", "0:after", "1:after", "1:before"]
    ratio = report["after_over_before"]
    assert (ratio["of_medians"], ratio["goal"], ratio["status"]) == (round(239.2 / 564.7, 3), "<= 0.40", "missed")
    assert ratio["per_round"]["samples"] == [round(230.0 / 569.3, 3), round(248.4 / 560.1, 3)]
    assert bench["demo"].summary(_raw(), goal=0.45)["after_over_before"]["status"] == "met"


def test_readme_rows_come_from_demo_json(bench):
    report = bench["demo"].summary(_raw(), goal=0.40)
    lines = bench["readme"].demo_lines(report)
    assert lines[2:9] == [
        "| demo | commit | config, images | pipeline seconds: median (min-max, runs) | test macro mAP (INT8) |",
        "|---|---|---|---|---|",
        "| before | cd5c46100000 | `x`, 1,000 images | 564.7 (560.1-569.3, 2 runs) | 0.9892 |",
        "| after | abcabcabcabc | `configs/demo.yaml` | 239.2 (230-248.4, 2 runs) | 0.9399 |",
        "| after / before | | | 42.4% of the median; per round 0.424 (0.404-0.443, 2 runs) | goal <= 0.40: missed |",
        "",
        "| task: median seconds | before | after |",
    ]
    assert lines[10:12] == ["| train-teacher | 305.0 | 75.0 |", "| bundle | 0.5 | 0.5 |"]
    text = bench["readme"].readme({"machine": {"date": "2026-12-06"}}, demo=report)
    assert "## `make bench-demo`: the demo against an earlier commit" in text
    assert "make bench-demo     # 28 minutes in the last run" in text

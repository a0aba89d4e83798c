"""bench/stats.py: the statistics `make bench` reports, and how two of its runs are compared."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_stats", Path(__file__).parents[2] / "bench" / "stats.py")
assert _spec and _spec.loader
stats = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stats)


def test_summary_and_status_against_a_goal():
    summary = stats.summarize([1.2, 1.5, 1.3, 1.45, 1.1], "<= 1.40")
    assert (summary["median"], summary["min"], summary["max"], summary["n"]) == (1.3, 1.1, 1.5, 5)
    assert summary["status"] == "unstable"
    assert stats.summarize([1.2, 1.3], "<= 1.40")["status"] == "met"
    assert stats.summarize([1.5, 1.6], "<= 1.40")["status"] == "missed"
    assert stats.summarize([1.5], "<= 1.40")["status"] == "missed, 1 run"
    with pytest.raises(ValueError, match="no samples"):
        stats.summarize([])


def test_blocks_of_rounds_are_extended_in_order():
    samples = stats.extend({}, {"a": [1.0, 2.0], "b": [3.0, 4.0]})
    stats.extend(samples, {"a": [5.0], "b": [6.0]})
    assert samples == {"a": [1.0, 2.0, 5.0], "b": [3.0, 4.0, 6.0]}
    assert stats.per_round(lambda a, b: b / a, samples["a"], samples["b"]) == [3.0, 2.0, 1.2]


def _run(**ratios: list[float]) -> dict:
    """A results file with a training section of the given ratios, plus figures that are no ratio."""
    training = {name: stats.summarize(values) for name, values in ratios.items()}
    training["qat_step_ms"] = stats.summarize([200.0, 210.0])  # milliseconds, not a ratio
    return {
        "machine": {"date": "2026-11-26"},
        "training": training,
        "model": {"size_int8_vs_float": stats.summarize([0.29], exact=True)},  # one sample: no spread
    }


def test_two_runs_agree_when_each_median_lies_within_the_others_spread():
    previous = _run(qat_vs_float=[1.30, 1.32, 1.34], distill_vs_student=[0.90, 0.92, 0.94])
    # QAT: 1.36 lies outside [1.30, 1.34] although the ranges overlap; distillation agrees
    current = _run(qat_vs_float=[1.33, 1.36, 1.38], distill_vs_student=[0.91, 0.93, 0.99])
    found = stats.agreement(previous, current)
    assert (found["agree"], found["of"]) == (1, 2)
    assert found["ratios"]["training.qat_vs_float"] == {
        "previous": [1.32, 1.3, 1.34],
        "current": [1.36, 1.33, 1.38],
        "agree": False,
    }
    assert found["ratios"]["training.distill_vs_student"]["agree"] is True
    # symmetric, and a results file's own comparison is not taken for a ratio
    assert stats.agreement(current, previous)["agree"] == 1
    assert stats.agreement({**current, "previous_run": found}, previous)["of"] == 2

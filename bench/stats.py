"""Statistics of `make bench`: alternated samples, per-pair ratios, median and spread, status against a goal.

A ratio is measured as several pairs (A B A B ...), one ratio per pair; it is reported as the
median of the pairs with their spread (min-max and quartiles), and its status is "met" when
every pair meets the goal, "missed" when none does and "unstable" when the spread crosses it.
Two runs agree on a ratio when each one's median lies within the other's [min, max]
(:func:`agreement`).
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}


def alternate(
    fns: Mapping[str, Callable[[], object]], rounds: int, warm_up: bool = True, pause: float = 0.0
) -> dict[str, list[float]]:
    """Seconds of each function over ``rounds`` rounds, called in turn (A B A B ...).

    Each function is called once first as a warm-up (not timed) when ``warm_up``. Sample ``i``
    of every function comes from round ``i``, so a slow spell of a shared machine hits the
    samples of one round alike and a ratio is best taken per round (see :func:`per_round`).
    ``pause`` seconds of sleep before each sample let work left in the background by the
    previous one finish outside the clock. A function that returns a float times itself: that
    float is its sample (e.g. seconds after a warm-up of its own).
    """
    if warm_up:
        for fn in fns.values():
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            if pause:
                time.sleep(pause)
            start = time.perf_counter()
            result = fn()
            elapsed = time.perf_counter() - start
            seconds[name].append(result if isinstance(result, float) else elapsed)
    return seconds


def extend(into: dict[str, list[float]], more: dict[str, list[float]]) -> dict[str, list[float]]:
    """Appends the samples of another block of rounds (:func:`alternate`'s result) to ``into``."""
    for name, values in more.items():
        into.setdefault(name, []).extend(values)
    return into


def per_round(fn: Callable[..., float], *series: Sequence[float]) -> list[float]:
    """``fn`` applied to the samples of each round: ``[fn(a[i], b[i], ...) for i ...]``."""
    return [fn(*values) for values in zip(*series, strict=True)]


def goal_met(value: float, goal: str) -> bool:
    """Whether ``value`` meets a goal written as ``"<= 1.1"``, ``">= 0.9"``, ``"< 900"`` or ``"> 1"``."""
    op, _, bound = goal.strip().partition(" ")
    if op not in _COMPARISONS:
        raise ValueError(f"goal {goal!r}: expected '<=', '>=', '<' or '>' then a number, e.g. '<= 1.10'")
    return _COMPARISONS[op](value, float(bound))


def status(values: Sequence[float], goal: str | None, exact: bool = False) -> str:
    """ "met" when every sample meets the goal, "missed" when none does, "unstable" when the
    spread (min-max) crosses it; "" without a goal. One sample is marked as such ("met, 1 run"),
    unless the figure is ``exact`` (the same in every run, e.g. a file size)."""
    if not goal:
        return ""
    met = [goal_met(v, goal) for v in values]
    verdict = "met" if all(met) else "missed" if not any(met) else "unstable"
    if len(values) == 1 and not exact:
        verdict += ", 1 run"
    return verdict


def summarize(values: Sequence[float], goal: str | None = None, digits: int = 3, exact: bool = False) -> dict:
    """Median, quartiles, min-max, every sample, the goal and its status.

    Args:
        values: one figure per round (a per-pair ratio, a rate, milliseconds).
        goal: e.g. ``"<= 1.10"``; None for a figure without one.
        digits: rounding of the reported figures (samples included).
        exact: the figure does not vary from run to run (one sample is all there is).
    """
    if not values:
        raise ValueError("summarize: no samples (was the section's round count 0?)")
    array = np.asarray(values, dtype=float)
    q1, median, q3 = (round(float(q), digits) for q in np.percentile(array, [25, 50, 75]))
    out: dict = {
        "median": median,
        "min": round(float(array.min()), digits),
        "max": round(float(array.max()), digits),
        "q1": q1,
        "q3": q3,
        "n": len(values),
        "samples": [round(float(v), digits) for v in values],
    }
    if goal:
        out["goal"] = goal
        out["status"] = status(out["samples"], goal, exact)  # the figures shown, so the table agrees with itself
    return out


def milliseconds(seconds: Sequence[float], per: int = 1, digits: int = 1) -> dict:
    """:func:`summarize` of seconds given for ``per`` items, as milliseconds per item."""
    return summarize([s * 1000 / per for s in seconds], digits=digits)


def ratios(results: dict, prefix: str = "") -> dict[str, dict]:
    """Every ratio summary of a results file, by its dotted path: the summaries (dicts with samples)
    of more than one sample whose key names two sides (``a_vs_b``)."""
    found: dict[str, dict] = {}
    for key, value in results.items():
        if not isinstance(value, dict) or key == "previous_run":
            continue
        path = f"{prefix}{key}"
        if "samples" in value and "median" in value:
            if "_vs_" in key and value.get("n", 1) > 1:
                found[path] = value
        else:
            found.update(ratios(value, f"{path}."))
    return found


def agreement(previous: dict, current: dict) -> dict:
    """How two runs of the benchmark agree: for each ratio both measured, whether each run's median
    lies within the other's [min, max]; and how many of them do."""
    before, now = ratios(previous), ratios(current)
    rows = {}
    for path in sorted(before.keys() & now.keys()):
        a, b = before[path], now[path]
        rows[path] = {
            "previous": [a["median"], a["min"], a["max"]],
            "current": [b["median"], b["min"], b["max"]],
            "agree": bool(a["min"] <= b["median"] <= a["max"] and b["min"] <= a["median"] <= b["max"]),
        }
    return {"ratios": rows, "agree": sum(r["agree"] for r in rows.values()), "of": len(rows)}

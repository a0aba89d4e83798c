"""The figures `make bench-scale` (bench/scale.py) writes to bench/scale.json: growth of each
late stage's memory and seconds from the smallest to the largest N against the goals, evaluate at
the largest N, eager against traced, and evaluate before and after, from a run's raw samples."""

from __future__ import annotations

import os

import numpy as np
from scale_data import SOURCE_SIZE, STUDENT_SIZE, TEACHER_SIZE

STAGES = ("prepare_dataset", "optimize_thresholds", "evaluate")
GOALS = {"rss": 1.3, "seconds_per_image": 1.2, "evaluate_seconds": 120.0}


def growth(results: dict[str, dict[str, dict]], sizes: list[int]) -> dict[str, dict]:
    """Largest-N / smallest-N ratios per stage, with the goals and whether they are met."""
    small, large = str(sizes[0]), str(sizes[-1])
    scale = sizes[-1] / sizes[0]
    out = {}
    for stage in STAGES:
        a, b = results[small][stage], results[large][stage]
        rss = b["peak_rss_mb"] / a["peak_rss_mb"]
        wall, run = b["seconds"] / a["seconds"], b["run_seconds"] / max(a["run_seconds"], 1e-9)
        out[stage] = {
            "rss_ratio": round(rss, 3),
            "rss_goal": GOALS["rss"],
            "seconds_ratio": round(wall, 2),
            "run_seconds_ratio": round(run, 2),
            "seconds_goal": round(scale * GOALS["seconds_per_image"], 2),
            "met": bool(rss <= GOALS["rss"] and wall <= scale * GOALS["seconds_per_image"]),
        }
    return out


def table(results: dict[str, dict[str, dict]], ratios: dict[str, dict], sizes: list[int]) -> str:
    """Seconds (process wall, the run call's in brackets) and peak RSS per stage and N, then the ratios."""
    lines = [
        f"{'stage':<20}" + "".join(f"{f'N={n} s (run) / MB':>26}" for n in sizes) + "   RSS x   s x (run x)   goal"
    ]
    for stage in STAGES:
        cells = ""
        for n in sizes:
            r = results[str(n)][stage]
            cell = f"{r['seconds']:.1f} ({r['run_seconds']:.1f}) / {r['peak_rss_mb']:.0f}"
            cells += f"{cell:>26}"
        g = ratios[stage]
        verdict = f"{'met' if g['met'] else 'MISSED'} (RSS x <= {g['rss_goal']}, s x <= {g['seconds_goal']})"
        ratio_text = f"{g['seconds_ratio']:.2f} ({g['run_seconds_ratio']:.2f})"
        lines.append(f"{stage:<20}{cells}{g['rss_ratio']:>8.2f}{ratio_text:>14}   {verdict}")
    built = [(n, results[str(n)]["evaluate"]) for n in sizes if "report_seconds" in results[str(n)]["evaluate"]]
    if built:
        lines.append(
            "evaluate's report.html (in its run seconds): "
            + ", ".join(f"N={n} {r['report_seconds']:.1f} s, {r['report_bytes'] / 1e3:.0f} kB" for n, r in built)
        )
    return "\n".join(lines)


def before_after(raw: dict) -> dict:
    """evaluate at the largest N before (``--before``) and after, from the alternated pairs."""
    from stats import summarize

    before, after = raw["before_after"]["before"], raw["before_after"]["after"]
    images = {one.get("float_test_images") for one in after}
    return {
        "n": raw["before_after"]["n"],
        "before": raw["before_after"]["ref"],
        "before_scores": "the teacher and both float students on every test image, both students on every "
        "validation image",
        "after_scores": f"the float models on {', '.join(f'{i:,}' if i else '?' for i in sorted(images, key=str))} "
        "sampled test images and as many validation images (thresholds.compare_images)",
        "before_seconds": summarize([one["seconds"] for one in before], digits=1),
        "after_seconds": summarize([one["seconds"] for one in after], f"<= {GOALS['evaluate_seconds']:.0f}", digits=1),
        "before_run_seconds": summarize([one["run_seconds"] for one in before], digits=1),
        "after_run_seconds": summarize([one["run_seconds"] for one in after], digits=1),
        "before_over_after": summarize([b["seconds"] / a["seconds"] for b, a in zip(before, after)], digits=2),
        "load": raw["before_after"]["load"],
    }


def summary(raw: dict) -> dict:
    """scale.json from a run's raw samples (``raw.json`` in ``--work``)."""
    from stats import summarize

    from mobiletag.stages.evaluate import TRACED_TOLERANCE  # TensorFlow: after the last measurement

    sizes, results, samples, profiles = raw["sizes"], raw["results"], raw["samples"], raw["profiles"]
    largest, compare_size = sizes[-1], raw["compare_size"]

    def seconds(key: str, field: str = "seconds") -> list[float]:
        return [one[field] for one in samples[key]]

    # the float models' images at the largest N: K sampled test images (the teacher, two students)
    # and K validation images (two students); the INT8 model scores all N test images
    k = min(raw.get("compare_images") or largest, largest)
    weights = {"teacher": 1, "student": 4}
    extra_ms = [sum(w * (p[f"{m}_eager"] - p[f"{m}_traced"]) for m, w in weights.items()) for p in profiles]
    largest_median = float(np.median(seconds("largest")))
    parts = [key for key in profiles[0] if key not in ("seconds", "peak_rss_mb")]  # measure's own figures
    where = {key: summarize([p[key] for p in profiles], digits=3) for key in parts}

    def part_seconds(counts: dict[str, int]) -> dict:
        return summarize([sum(n * p[key] for key, n in counts.items()) / 1000 for p in profiles], digits=1)

    report = {
        "sizes": sizes,
        "splits": "N test, N validation, N/2 training images",
        "image": (
            f"{SOURCE_SIZE[0]}x{SOURCE_SIZE[1]} JPEG; teacher EfficientNet-B3 {TEACHER_SIZE} px, "
            f"students EfficientNet-Lite1 and INT8 (QAT export) {STUDENT_SIZE} px, random weights"
        ),
        "results": results,
        "growth": growth(results, sizes),
        "evaluate_at_largest": {
            "n": largest,
            "seconds": summarize(seconds("largest"), f"<= {GOALS['evaluate_seconds']:.0f}", digits=1),
            "run_seconds": summarize(seconds("largest", "run_seconds"), digits=1),
        },
        "eager_vs_traced": {
            "n": compare_size,
            "eager_seconds": summarize(seconds("eager"), digits=1),
            "traced_seconds": summarize(seconds("traced"), digits=1),
            "eager_over_traced": summarize([e / t for e, t in zip(seconds("eager"), seconds("traced"))], digits=2),
            "measured_gap_seconds": summarize([e - t for e, t in zip(seconds("eager"), seconds("traced"))], digits=1),
            "profile_gap_seconds": summarize([compare_size * x / 1000 for x in extra_ms], digits=1),
            "eager_at_largest_estimate": {
                "seconds": summarize([largest_median + k * x / 1000 for x in extra_ms], digits=0),
                "how": (
                    f"the median traced evaluate at N={largest:,} plus {k:,} (the float models' images) x the "
                    "profile's extra eager milliseconds per image (teacher once, a student four times: two "
                    "students, test and validation), per round; both paths run the same code but the float "
                    "models' calls"
                ),
            },
            **raw["differences"],
            "tolerance": TRACED_TOLERANCE,
            "within": bool(max(raw["differences"]["max_abs_diff"].values()) <= TRACED_TOLERANCE),
        },
        "profile_ms_per_image": where,
        "compare_images": k,
        "profile_seconds_at_largest": {
            # N test images at the INT8 size, K of them also at the teacher's, K validation images
            "decode": part_seconds({"decode_val_image": largest, "decode_test_image": k}),
            "teacher_traced": part_seconds({"teacher_traced": k}),
            "students_traced": part_seconds({"student_traced": 4 * k}),
            "int8": part_seconds({"int8": largest}),
            "traced_models": part_seconds({"teacher_traced": k, "student_traced": 4 * k, "int8": largest}),
            "eager_models": part_seconds({"teacher_eager": k, "student_eager": 4 * k, "int8": largest}),
        },
        "load": raw["load"],
        "total_seconds": raw["total_seconds"],
        "cores": os.cpu_count(),
    }
    if raw.get("before_after"):
        report["evaluate_before_after"] = before_after(raw)
    return report

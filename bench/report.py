"""The tables of `make bench` and bench/README.md, rendered from the results files alone.

:func:`table` is what `make bench` prints: the machine, one row per measure of the sections in
bench/results.json, and how the run agrees with the previous one. :func:`readme` is
bench/README.md: what each command measures (the prose below), that table, and the tables of
bench/scale.json and bench/quality.json when they exist. Nothing here measures or imports
TensorFlow, so the README can be rendered again without running the benchmark
(``python bench/run.py --readme``), and a test checks that the committed file matches it.
"""

from __future__ import annotations

from collections.abc import Callable

import stats
from sections import SECTIONS

Row = tuple[str, ...]
HEADER = (
    "| measure | figures (medians) | ratio (median) | [min, max] | n | goal | status |",
    "|---|---|---|---|---|---|---|",
)


def _fmt(x: object) -> str:
    """A figure: the median of a summary, or the figure itself."""
    return str(x["median"]) if isinstance(x, dict) else str(x)


def _row(measure: str, figures: str, ratio: object, goal: str = "") -> Row:
    """measure | figures | median | [min, max] | n | goal | status, from a summary (or a bare figure of
    an older results file)."""
    if isinstance(ratio, dict):
        spread = f"[{ratio['min']}, {ratio['max']}]" if ratio.get("n", 1) > 1 else ""
        return (
            measure,
            figures,
            str(ratio["median"]),
            spread,
            str(ratio.get("n", "")),
            ratio.get("goal", goal),
            ratio.get("status", ""),
        )
    return (measure, figures, "" if ratio is None else str(ratio), "", "1" if ratio not in ("", None) else "", goal, "")


def _input_rows(i: dict) -> list[Row]:
    pipe = _fmt(i["pipeline_student_images_per_s"])
    return [
        _row(
            "input: train pipeline (student size) / raw JPEG decode, img/s",
            f"{pipe} / {_fmt(i['raw_decode_images_per_s_1_thread'])}",
            i["pipeline_student_vs_raw_decode"],
            ">= 1",
        ),
        _row(
            "input: train pipeline (student size) / PIL decode+resize of the files, img/s",
            f"{pipe} / {_fmt(i['pil_files_images_per_s'])}",
            i["pipeline_student_vs_pil_files"],
            "> 1",
        ),
    ]


def _host_input_rows(h: dict) -> list[Row]:
    def per_core(name: str) -> str:
        return _fmt(h[name]["images_per_core_second"])

    def to_device(name: str) -> str:
        return str(h[name]["host_to_device_bytes_per_image"])

    sides = f"{h['sizes']['teacher']}/{h['sizes']['student']} px"
    return [
        _row(
            f"host input per core at {sides}: augmentation in the step / on the host, img/s",
            f"{per_core('augment_in_step')} / {per_core('augment_on_host')}",
            h["augment_in_step_vs_on_host"],
            "> 1",
        ),
        _row(
            "host input per core: augmentation in the step / plain decode of the stored JPEGs, img/s",
            f"{per_core('augment_in_step')} / {per_core('plain_decode')}",
            h["augment_in_step_vs_plain_decode"],
        ),
        _row(
            "host-to-device bytes per image: augmentation on the host / in the step",
            f"{to_device('augment_on_host')} / {to_device('augment_in_step')}",
            h["bytes_augment_on_host_vs_in_step"],
        ),
    ]


def _training_rows(t: dict) -> list[Row]:
    return [
        _row(
            "student step rate: fed by pipeline / in memory",
            f"{_fmt(t['student_step_ms_fed_by_pipeline'])} / {_fmt(t['student_step_ms_in_memory'])} ms",
            t["pipeline_fed_vs_in_memory_step_rate"],
            ">= 0.90",
        ),
        _row(
            "distill step / (student step + teacher forward, inference mode)",
            f"{_fmt(t['distill_step_ms'])} / ({_fmt(t['student_step_ms_beside_distill'])} + "
            f"{_fmt(t['teacher_forward_ms'])}) ms",
            t["distill_vs_student_step_plus_teacher_forward"],
            "<= 1.10",
        ),
        _row(
            "QAT step / float student step",
            f"{_fmt(t['qat_step_ms'])} / {_fmt(t['float_step_ms_beside_qat'])} ms",
            t["qat_vs_float_student_step"],
            "<= 1.40",
        ),
    ]


def _determinism_rows(d: dict) -> list[Row]:
    rows = []
    for kind, label in (("in_memory", "in memory"), ("fed", "fed by the pipeline")):
        on = _fmt(d[f"student_step_ms_{kind}_determinism_on"])
        rows.append(
            _row(
                f"student step {label}: op determinism on / off",
                f"{on} / {_fmt(d[f'student_step_ms_{kind}_determinism_off'])} ms",
                d[f"{kind}_step_determinism_on_vs_off"],
            )
        )
        if f"{kind}_step_onednn_off_vs_on" in d:  # results files before the oneDNN child lack it
            rows.append(
                _row(
                    f"student step {label}: oneDNN off / on",
                    f"{on} / {_fmt(d[f'student_step_ms_{kind}_determinism_onednn'])} ms",
                    d[f"{kind}_step_onednn_off_vs_on"],
                )
            )
    return rows


def _model_rows(m: dict) -> list[Row]:
    rows = [
        _row(
            f"INT8 / float TFLite size (Lite1 @{m['image_size']})",
            f"{m['int8_bytes']} / {m['float_bytes']} B",
            m["size_int8_vs_float"],
            "<= 0.30",
        )
    ]
    for label, name in (("1_thread", "1 thread"), ("2_threads", "2 threads")):
        rows.append(
            _row(
                f"INT8 / float latency, {name}",
                f"{_fmt(m[f'int8_ms_{label}'])} / {_fmt(m[f'float_ms_{label}'])} ms",
                m[f"latency_int8_vs_float_{label}"],
                "<= 0.55",
            )
        )
    return rows


def _run_rows(run: dict) -> list[Row]:
    wall = run["wall_seconds"]
    rows = [
        _row("whole demo run (`mobiletag train`, kfp.local), s", f"{wall}", stats.summarize([wall], "< 900", digits=1))
    ]
    if "console_lines" in run:
        lines = run["console_lines"]
        rows.append(
            _row(
                "`mobiletag train` console lines (the full log goes to a file)",
                f"{lines}",
                stats.summarize([lines], "< 80"),
            )
        )
    if quality := run.get("quality"):
        figures = (
            f"INT8 {quality['test_map_macro_int8']}, float student {quality['test_map_macro_float_student']}, "
            f"teacher {quality['test_map_macro_teacher']}; shipped: {quality['shipped_student']}"
        )
        rows.append(_row("demo test macro mAP", figures, ""))
        gap = round(quality["test_map_macro_int8"] - quality["test_map_macro_float_student"], 4)
        rows.append(
            _row(
                "demo test macro mAP: abs(INT8 - float student)",
                f"{gap:+.4f}",
                stats.summarize([abs(gap)], "<= 0.02", digits=4),
            )
        )
        if diff := quality.get("distilled_minus_baseline_test_map"):
            rows.append(
                _row(
                    "demo test macro mAP: distilled - baseline student (95% bootstrap)",
                    f"{diff['value']} [{diff['ci'][0]}, {diff['ci'][1]}]",
                    "",
                )
            )
    for task, total in run["task_seconds"].items():
        share = run["overhead_share"].get(task)
        compute = run["stage_compute_seconds"].get(task)
        figures = f"{total} s, {compute} s in the stage" if compute is not None else f"{total} s"
        summary = stats.summarize([share], "<= 0.20") if share is not None else ""
        rows.append(_row(f"stage {task}: overhead share", figures, summary, "<= 0.20"))
    return rows


def _process_start_rows(start: dict) -> list[Row]:
    figures = ", ".join(f"{k[:-2]} {_fmt(v)}" for k, v in start.items())
    return [_row("new process + imports (median), s", figures, "")]


def _spread_rows(spread: dict) -> list[Row]:
    rows = []
    for name, label in (("test_map_macro_int8", "INT8"), ("test_map_macro_float_student", "float student")):
        summary = spread[name]
        rows.append(
            _row(
                f"test macro mAP, {label}, reproducible: false: spread over {summary['n']} runs",
                ", ".join(str(v) for v in summary["samples"]),
                summary,
            )
        )
    return rows


# the rows of each section, from its part of the results file
SECTION_ROWS: dict[str, Callable[[dict], list[Row]]] = {
    "input": _input_rows,
    "host_input": _host_input_rows,
    "training": _training_rows,
    "determinism": _determinism_rows,
    "model": _model_rows,
    "run": _run_rows,
    "process_start": _process_start_rows,
    "spread": _spread_rows,
}


def rows(r: dict) -> list[Row]:
    """One row per measure of the sections present in ``r`` (``--only`` may have measured one), in
    :data:`sections.SECTIONS` order, then the benchmark's own seconds."""
    found: list[Row] = []
    for key in SECTIONS:
        if key not in r:
            continue
        try:
            found += SECTION_ROWS[key](r[key])
        except (KeyError, TypeError):  # a section of an older results file
            found.append((f"{key}: recorded in an older format, re-measure with --only {key}", "", "", "", "", "", ""))
    if "bench_seconds" in r:
        spent = dict(r["bench_seconds"])
        total = spent.pop("total", round(sum(spent.values()), 1))
        found.append(
            _row(
                "this benchmark, s",
                f"{total} ({', '.join(f'{k} {v}' for k, v in spent.items())})",
                stats.summarize([total], "< 1200", digits=1),
            )
        )
    return found


def machine_line(m: dict) -> str:
    features = m.get("cpu_features", "unknown")
    return (
        f"{m.get('cpu_model', '?')}, {m.get('cores')} cores "
        f"({', '.join(features) if isinstance(features, list) else features}); "
        f"{m.get('gpus', 0)} GPU; Python {m.get('python')}, TensorFlow {m.get('tensorflow')}, "
        f"LiteRT {m.get('litert')}; {m.get('date')}"
    )


def agreement_lines(previous: dict) -> list[str]:
    """The comparison with the previous run (results.json's ``previous_run``)."""
    lines = [
        f"Against the previous run ({previous['date']}): {previous['agree']} of {previous['of']} ratios agree "
        "(each run's median within the other's [min, max]).",
        "",
        "| ratio | previous: median [min, max] | this run: median [min, max] | agree |",
        "|---|---|---|---|",
    ]
    for path, row in previous["ratios"].items():
        (a, a_min, a_max), (b, b_min, b_max) = row["previous"], row["current"]
        agree = "yes" if row["agree"] else "**no**"
        lines.append(f"| {path} | {a} [{a_min}, {a_max}] | {b} [{b_min}, {b_max}] | {agree} |")
    return lines


def table(r: dict) -> str:
    """The Markdown table of the sections present in r, after the machine line; then the agreement
    with the previous run, if the results file holds one."""
    lines = [machine_line(r["machine"]), "", *HEADER]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows(r)]
    if previous := r.get("previous_run"):
        lines += ["", *agreement_lines(previous)]
    return "\n".join(lines)

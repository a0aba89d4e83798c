"""bench/README.md, rendered from bench/results.json, bench/scale.json, bench/quality.json and bench/demo.json.

`make bench` (every full or ``--only`` run) writes it, and ``python bench/run.py --readme``
writes it again from the files as they are, measuring nothing. The prose that says what each
command and section measures lives here; every figure comes from the results files.
"""

from __future__ import annotations

import json
from pathlib import Path

import report
from quality import earlier_settings
from sections import BLOCKS, ROUNDS

# what each section of `make bench` measures, in the table's order
SECTION_TEXT = {
    "input": "the training input pipeline (student size) against decoding the same JPEGs in a tight loop "
    "on one thread and against PIL on the original files.",
    "host_input": "images per host core at production sizes (~1 MP photos, teacher 300 px and student 240 px, "
    "tf.data on one thread): the pipeline that hands the training step one uint8 crop and a seed "
    "(flip, colour jitter and each model's resize run in the step) against the host-side augmentation "
    "baseline (two float32 views, flip and jitter on the host) and against a plain decode of the stored "
    "JPEGs; and the bytes per image each sends to the device.",
    "training": "the student's step fed by the pipeline against the same step on tensors in memory; the "
    "distillation step against the student's step plus the teacher's forward pass in inference mode "
    "(what distillation adds); the QAT step against the float step.",
    "determinism": "op determinism (`reproducible: true`) on against off for the student step, in memory and "
    "fed by the pipeline, and with TensorFlow's oneDNN CPU kernels off (as `import mobiletag` sets them, for "
    "reproducible runs) against on (processes taking turns: both settings are process-wide).",
    "model": "the INT8 model against the float TFLite model of the same Lite1 student at 240 px: size, and "
    "latency with 1 and 2 threads in fresh processes with LiteRT alone (`bench/latency.py`), as an app's "
    "would: three per block, 5 rounds each, 30 in all.",
    "run": "the demo itself (`mobiletag train` with `configs/fast.yaml` through `kfp.local`), one run: its "
    "time, console lines, test figures and each stage's share spent outside its own code (process start, "
    "imports).",
    "process_start": "what a stage pays before its own code runs: a fresh Python process importing "
    "TensorFlow and tf_keras, and one importing the evaluate stage.",
    "spread": "(`make bench-spread` only) test macro mAP of three trainings with `reproducible: false` on the "
    "same data and seed (`--runner inprocess --no-baseline-student`): what a change must beat to be told "
    "from chance (`gate.min_improvement`).",
}

METHOD = (
    "Every ratio compares two things measured in the same run on the same machine, so ratios travel "
    "between machines better than absolute numbers. Each is measured over rounds that alternate its two "
    f"sides (A B A B ...), one ratio per round, in {BLOCKS} blocks of {ROUNDS} rounds (4 for host input): "
    "one before the whole demo run and one after it, about 9 minutes later, so the spread holds what a "
    "shared machine does over minutes and not only within one. A ratio is reported as the median of its "
    'rounds with their [min, max]; it is "met" when every round meets its goal, "missed" when none does '
    'and "unstable" when the spread crosses it. When the `bench/results.json` it replaces came from the '
    "same CPU model, `make bench` ends with how the two runs agree: a ratio agrees when each run's median "
    "lies within the other's [min, max] (`previous_run` in the file). `bench/results.json` keeps every "
    "sample, the CPU model and the instruction sets INT8 kernels use, and the library versions."
)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} minutes"


def _commands(results: dict, scale: dict | None, quality: dict | None, demo_run: dict | None) -> list[str]:
    spent = results.get("bench_seconds", {})
    spread = results.get("spread", {}).get("seconds")
    lines = ["```sh"]
    lines.append(
        "make bench          # "
        + (f"{_minutes(spent['total'])} in the last run; " if "total" in spent else "")
        + "writes bench/results.json and this file"
    )
    lines.append(
        "make bench-spread   # "
        + (f"{_minutes(sum(spread))} in the last run: " if spread else "")
        + "test macro mAP of three trainings with reproducible: false"
    )
    lines.append(
        "make bench-scale    # "
        + (f"{_minutes(scale['total_seconds'])} in the last run: " if scale and "total_seconds" in scale else "")
        + "the late stages at growing dataset sizes; writes bench/scale.json"
    )
    runs = [run for entry in (quality or {}).get("sets", {}).values() for run in entry.get("runs", {}).values()]
    lines.append(
        "make bench-quality  # "
        + (f"{len(runs)} trainings in the file, {_minutes(sum(r['seconds'] for r in runs))}: " if runs else "")
        + "the recipe on each set of the development suite, 3 seeds, against simple baselines; "
        "writes bench/quality.json"
    )
    demo = (demo_run or {}).get("seconds")
    lines.append(
        "make bench-demo     # "
        + (f"{_minutes(demo)} in the last run: " if demo else "")
        + "make demo's pipeline time against an earlier commit's demo, alternated; writes bench/demo.json"
    )
    lines.append("python bench/run.py --readme   # this file again from the JSON files, measuring nothing")
    lines.append("```")
    return lines


def _flat(data: object, prefix: str = "") -> list[tuple[str, str]]:
    """Every leaf of a JSON value by its dotted path; lists of numbers or text as one leaf."""
    if isinstance(data, dict):
        return [leaf for key, value in data.items() for leaf in _flat(value, f"{prefix}{key}.")]
    if isinstance(data, list) and any(isinstance(v, dict | list) for v in data):
        return [leaf for i, value in enumerate(data) for leaf in _flat(value, f"{prefix}{i}.")]
    text = ", ".join(str(v) for v in data) if isinstance(data, list) else str(data)
    return [(prefix.rstrip("."), text)]


def generic_table(data: dict) -> list[str]:
    """A results file of a shape this module does not know, as a two-column table of its leaves."""
    lines = ["| key | value |", "|---|---|"]
    return lines + [f"| {path} | {value} |" for path, value in _flat(data)]


def scale_lines(scale: dict) -> list[str]:
    """bench/scale.json: seconds and peak memory per stage and N, and how they grow from the smallest
    N to the largest against the goals."""
    sizes = [str(n) for n in scale["sizes"]]
    stages = list(scale["growth"])
    head = [f"N = {int(sizes[0]):,}: s / MB", *(f"{int(n):,}" for n in sizes[1:])]
    lines = [
        f"Generated datasets ({scale['splits']}; {scale['image']}), each stage in a fresh process; "
        "seconds are the process's wall time (the stage's own `run` call in brackets), MB its peak "
        f"resident memory; {scale.get('cores', '?')} cores.",
        "",
        "| stage | " + " | ".join(head) + " | memory x | seconds x (in the stage) | goal |",
        "|---" * (len(head) + 4) + "|",
    ]
    for stage in stages:
        at = [scale["results"][n][stage] for n in sizes]
        cells = [f"{one['seconds']:.1f} / {one['peak_rss_mb']:.0f}" for one in at]
        g = scale["growth"][stage]
        cells += [f"{g['rss_ratio']:.2f}", f"{g['seconds_ratio']:.2f} ({g['run_seconds_ratio']:.2f})"]
        cells.append("met" if g["met"] else "missed")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    g = scale["growth"][stages[0]]
    lines += [
        "",
        f"Goals, from N = {int(sizes[0]):,} to {int(sizes[-1]):,}: peak memory at most {g['rss_goal']}x, "
        f"seconds at most {g['seconds_goal']}x.",
    ]
    return lines + evaluate_lines(scale)


def _spread(figure: dict, unit: str = "") -> str:
    """A summarised figure (bench/stats.py) as "median unit (min-max, n runs)"."""
    return f"{figure['median']:g}{unit} ({figure['min']:g}-{figure['max']:g}, {figure['n']} runs)"


def evaluate_lines(scale: dict) -> list[str]:
    """evaluate at the largest N against its goal, eager against traced float models, where the time goes."""
    if "evaluate_at_largest" not in scale:
        return []
    at, vs = scale["evaluate_at_largest"], scale["eager_vs_traced"]
    ms = {key: figure["median"] for key, figure in scale["profile_ms_per_image"].items()}
    parts = scale["profile_seconds_at_largest"]
    goal, estimate, n, small = at["seconds"], vs["eager_at_largest_estimate"], f"{at['n']:,}", f"{vs['n']:,}"
    k = scale.get("compare_images")
    if k is None:  # every image through every float model
        on = {"decode": "", "teacher": "", "students": "two students on test and validation"}
        times = "times N"
    else:
        on = {
            "decode": f": {n} test, {k:,} of them also at the teacher's size, {k:,} validation",
            "teacher": f" on {k:,} sampled test images",
            "students": f"two students on {k:,} sampled test and {k:,} validation images",
        }
        times = "times the images each part covers"
    lines = [
        "",
        "| evaluate | seconds: median (min-max, runs) |",
        "|---|---|",
        f"| N = {n}, float models traced (process; goal {goal['goal']} s: {goal['status']}) | {_spread(goal)} |",
        f"| N = {n}, traced, the `run` call | {_spread(at['run_seconds'])} |",
        f"| N = {n}, float models eager, estimated | {_spread(estimate['seconds'])} |",
        f"| N = {small}, float models eager | {_spread(vs['eager_seconds'])} |",
        f"| N = {small}, float models traced | {_spread(vs['traced_seconds'])} |",
        f"| N = {small}, eager / traced, per round | {_spread(vs['eager_over_traced'], 'x')} |",
        f"| N = {small}, eager - traced, measured | {_spread(vs['measured_gap_seconds'])} |",
        f"| N = {small}, eager - traced, from the profile | {_spread(vs['profile_gap_seconds'])} |",
        f"| N = {n}: decoding the originals (threads, beside the models{on['decode']}) | {_spread(parts['decode'])} |",
        f"| N = {n}: teacher{on['teacher']}, traced | {_spread(parts['teacher_traced'])} |",
        f"| N = {n}: {on['students']}, traced | {_spread(parts['students_traced'])} |",
        f"| N = {n}: INT8 model | {_spread(parts['int8'])} |",
        f"| N = {n}: all models, traced | {_spread(parts['traced_models'])} |",
        f"| N = {n}: all models, eager | {_spread(parts['eager_models'])} |",
        *before_after_rows(scale),
        "",
        f"Rounds alternated (eager and traced at N = {small}, traced at N = {n}, the profile). Eager at "
        f"N = {n}: {estimate['how']}. The parts at N = {n} are the profile's median milliseconds per "
        f"image (batches of 64) {times}: decoding an original {ms['decode_test_image']:g} (test, two sizes) / "
        f"{ms['decode_val_image']:g} (validation); teacher {ms['teacher_traced']:g} traced / "
        f"{ms['teacher_eager']:g} eager; a student {ms['student_traced']:g} / {ms['student_eager']:g}; "
        f"INT8 {ms['int8']:g}. Largest |eager - traced| probability: "
        + ", ".join(f"{name} {diff:g}" for name, diff in vs["max_abs_diff"].items())
        + f" (tolerance {vs['tolerance']:g}: {'within' if vs['within'] else 'EXCEEDED'}); INT8 scores "
        + ("identical" if vs["int8_scores_identical"] else "DIFFERENT")
        + f"; the float models' macro mAP differ by at most {vs['float_map_macro_max_abs_diff']:g}.",
    ]
    if "load" in scale:
        lines += ["", f"Load: `{scale['load']['start']}` at the start, `{scale['load']['end']}` at the end."]
    if "evaluate_before_after" in scale:
        block = scale["evaluate_before_after"]
        lines += [
            "",
            f"evaluate before and after, alternated at N = {block['n']:,} ({block['before_seconds']['n']} rounds): "
            f"before (commit {block['before'][:12]}) scores {block['before_scores']}; after, "
            f"{block['after_scores']}, and the INT8 model on every test image. Load: "
            f"`{block['load']['start']}` at the start, `{block['load']['end']}` at the end.",
        ]
    return lines


def before_after_rows(scale: dict) -> list[str]:
    """evaluate at the largest N before and after (``evaluate_before_after``), as rows of the evaluate table."""
    if "evaluate_before_after" not in scale:
        return []
    block = scale["evaluate_before_after"]
    n, after = f"{block['n']:,}", block["after_seconds"]
    return [
        f"| N = {n}, before: commit {block['before'][:12]} (process) | {_spread(block['before_seconds'])} |",
        f"| N = {n}, after (process; goal {after['goal']} s: {after['status']}) | {_spread(after)} |",
        f"| N = {n}, before, the `run` call | {_spread(block['before_run_seconds'])} |",
        f"| N = {n}, after, the `run` call | {_spread(block['after_run_seconds'])} |",
        f"| N = {n}, before / after, per round | {_spread(block['before_over_after'], 'x')} |",
    ]


def demo_lines(demo: dict) -> list[str]:
    """bench/demo.json: the demo's pipeline seconds at two commits, alternated, their ratio against the
    goal, and each task's median seconds."""
    machine, ratio = demo["machine"], demo["after_over_before"]
    sides = {side: demo[side] for side in ("before", "after")}

    def what(side: dict) -> str:
        images = f", {side['images']:,} images" if side.get("images") else ""
        return f"`{side.get('config') or '?'}`{images}"

    per_round = ratio.get("per_round")
    lines = [
        f"{demo['date']}, {machine.get('cpu_model', '?')}, {machine.get('cores', '?')} cores: each side runs its own "
        "commit's `make demo` recipe lines (no install), in the order "
        f"{', '.join(demo['order'])}; seconds from the pipeline log's `Running pipeline` line to its `Pipeline "
        "... finished` line (the sample data and the validation before it not counted).",
        "",
        "| demo | commit | config, images | pipeline seconds: median (min-max, runs) | test macro mAP (INT8) |",
        "|---|---|---|---|---|",
    ]
    for name, side in sides.items():
        maps = ", ".join(str(m) for m in side["test_map_macro_int8"])
        lines.append(
            f"| {name} | {side['commit'][:12]} | {what(side)} | {_spread(side['pipeline_seconds'])} | {maps} |"
        )
    rounds = f"; per round {_spread(per_round)}" if per_round else ""
    lines += [
        f"| after / before | | | {ratio['of_medians']:.1%} of the median{rounds} | goal {ratio['goal']}: "
        f"{ratio['status']} |",
        "",
        "| task: median seconds | before | after |",
        "|---|---|---|",
    ]
    tasks = list(dict.fromkeys([*sides["before"]["task_seconds"], *sides["after"]["task_seconds"]]))
    for task in tasks:
        cells = [_cell(side["task_seconds"].get(task)) for side in sides.values()]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    loads = "; ".join(f"{run['round']}:{run['side']} `{run['load_before']}`" for run in demo["runs"])
    lines += [
        "",
        f"Load averages (1, 5, 15 min): `{demo['load']['start']}` at the start, `{demo['load']['end']}` at the end; "
        f"before each run: {loads}.",
    ]
    return lines


# what each set of the development suite (mobiletag.data.suite) stresses
SET_TEXT = {
    "small-objects": "0-3 of ten small shapes (a tenth of the image wide) in four slots, any dark colour",
    "glyphs": "mosaics of 0-3 stroke-drawn digits; a mirrored 2 is a 5, so its config.yaml turns flips off",
    "imbalance": "ten shapes at 40% down to 3% of images; rare ones mostly beside a common partner; 360 "
    "validation and test images, so that every class has 10 or more positives in each",
    "textures": "0-3 patches of eight textures (stripes, grid, checks, dots, rings, zigzag, speckle) among clutter",
    "photos": "1200x900 JPEGs of large shapes, half stored turned with an EXIF orientation tag; "
    "a horizontal and a vertical bar are two classes",
}


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _pair(mean: float | None, spread: float | None) -> str:
    return "-" if mean is None else f"{mean} ({spread})" if spread is not None else str(mean)


def _gap(gap: dict | None) -> str:
    if not gap:
        return "-"
    return f"{gap['mean']:+.4f} ({gap['spread']}, {gap['runs']} seed{'s' if gap['runs'] != 1 else ''})"


def quality_lines(quality: dict) -> list[str]:
    """bench/quality.json: per set of the suite, the INT8 model over its training seeds against the
    baselines and the goal; then each recipe choice undone on one set."""
    lines = [
        "Each set is generated with dataset seed 0 (`mobiletag.data.suite`; 96-px images, 420 / 90 / 90, "
        "unless said) and trained once per training seed (the preset's `seed`). Goal: "
        f"{quality['goal']}. Spread: max - min; std: sample standard deviation. (earlier settings): trained at "
        "settings the preset file has since changed; (earlier data): on splits of other sizes than the set's "
        "generator writes now.",
        "",
        *(f"* `{name}`: {SET_TEXT.get(name, '')}" for name in quality["sets"]),
        "",
        "| set | images | preset | INT8 test mAP per seed | mean | spread | std | float student (mean, spread) "
        "| distilled - baseline (mean, spread) | shipped | regression 24 px / 48 px | constant | margin | goal |",
        "|---" * 14 + "|",
    ]
    for name, entry in quality["sets"].items():
        data, base, summary = entry["dataset"], entry["baselines"], entry["summary"]
        images = f"{data['train']} / {data['val']} / {data['test']}"
        regression = f"{base['logistic_regression_24px']['test_map']} / {base['logistic_regression_48px']['test_map']}"
        seeds = summary.get("seeds", [])
        per_seed = ", ".join(f"{s}: {v}" for s, v in zip(seeds, summary.get("int8_test_map", [])))
        status = summary["status"] + (f" ({len(seeds)} of 3 seeds)" if summary["status"] == "incomplete" else "")
        cells = [
            f"`{name}`",
            images,
            _preset(
                summary.get("config"),
                summary.get("commits"),
                {r.get("config_digest") for r in entry["runs"].values()},
                _earlier_splits(name, data),
            ),
            per_seed or "-",
            _cell(summary.get("mean")),
            _cell(summary.get("spread")),
            _cell(summary.get("std")),
            _pair(summary.get("float_student_mean"), summary.get("float_student_spread")),
            _gap(summary.get("distillation_gap")),
            ", ".join(summary.get("shipped", [])) or "-",
            regression,
            str(base["constant"]["test_map"]),
            _cell(summary.get("margin_over_regression")),
            status,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _cpu_lines(quality)
    lines += _spread_by_positives_lines(quality)
    if ablations := quality.get("ablations"):
        lines += [
            "",
            f"Each recipe choice undone, student stage alone on `{ablations['set']}` with the run's teacher "
            f"(training seed {ablations['seed']}, {ablations['date']}; float student; test mAP on the test images "
            "as stored and through the app's input path from the originals):",
            "",
            f"| student stage, `{ablations['config']}` with... | validation mAP | test mAP | test mAP, app path | s |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {a['name']} | {a['val_map']} | {a['test_map']} | {_cell(a.get('app_test_map'))} | {a['seconds']} |"
            for a in ablations["rows"]
        ]
    if trials := quality.get("trials"):
        lines += [
            "",
            "Recipe changes tried (`bench/quality.py --trial NAME OVERRIDES`): the baseline student stage alone "
            "(alpha 1, the student these presets ship) on each set's seed-0 run's dataset, once per training "
            "seed, with the preset and with the change; float student, test images as stored and through the "
            "app's input path from the originals (how the shipped model is measured; rows trained before it was "
            "measured show -). Gain: test mAP minus the preset's on the same seed (mean, min to max). A set's "
            "trials at earlier settings follow its current ones; (earlier data): trained on data the set's generator no "
            "longer writes.",
            "",
            "| set | preset | student stage with... | seeds | validation mAP (spread) | test mAP (spread) | gain "
            "| test mAP, app path (spread) | gain, app path |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        earlier = quality.get("earlier_trials", {})  # per set: trials superseded by one at other settings
        shown = [(n, t) for n in dict.fromkeys([*trials, *earlier]) for t in [trials.get(n), *earlier.get(n, [])] if t]
        for name, trial in shown:
            data = quality["sets"].get(name, {}).get("dataset", {})  # the set's data now
            old_data = trial.get("data") != data.get("digest") or _earlier_splits(name, data)
            for change, t in trial["summary"].items():
                cells = [
                    f"`{name}`",
                    _preset(
                        trial["config"],
                        _row_commits(trial, change),
                        {trial.get("config_digest")},
                        old_data,
                    ),
                    (change if change == "preset" else f"{change}: `{_overrides(trial, change)}`")
                    + _carried(trial, change),
                    ", ".join(map(str, t["seeds"])),
                    f"{t['val_mean']} ({t['val_spread']})",
                    f"{t['test_mean']} ({t['test_spread']})",
                    _gain(t["test_gain"]),
                    _pair(t.get("app_test_mean"), t.get("app_test_spread")),
                    _gain(t.get("app_test_gain")),
                ]
                lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cpu_lines(quality: dict) -> list[str]:
    """The CPUs each set's runs trained on, where any run recorded its CPU (quality.run_cpu)."""
    cpus = {name: e["summary"].get("cpus") or [] for name, e in quality["sets"].items()}
    if not any(c != "not recorded" for found in cpus.values() for c in found):
        return []
    return [
        "",
        "CPUs the runs trained on: " + "; ".join(f"`{n}`: {' and '.join(c)}" for n, c in cpus.items() if c) + ".",
    ]


def _spread_by_positives_lines(quality: dict) -> list[str]:
    """Per set whose runs recorded per-class AP: the spread of the macro mAP's share from the classes
    with few test positives and from the others (quality.spread_by_positives)."""
    split = {name: e["summary"].get("spread_by_positives") for name, e in quality["sets"].items()}
    split = {name: s for name, s in split.items() if s}
    if not split:
        return []
    minimum = next(iter(split.values()))["min_positives"]
    lines = [
        "",
        f"Where the spread comes from: the INT8 macro mAP as the sum of two shares, the classes with fewer "
        f"than {minimum} test positives (the dataset summary warns about them) and the others (each share: "
        "their per-class AP summed, over the number of classes with test positives), and each share's spread "
        "over the seeds:",
        "",
        f"| set | classes with < {minimum} test positives (positives) | their share's spread "
        "| other classes (positives) | their share's spread |",
        "|---|---|---|---|---|",
    ]
    for name, s in split.items():
        few, many = s["few"], s["many"]
        lines.append(
            f"| `{name}` | {few['classes']} ({', '.join(map(str, few['positives'])) or '-'}) | {few['spread']} "
            f"| {many['classes']} ({', '.join(map(str, many['positives'])) or '-'}) | {many['spread']} |"
        )
    return lines


def _gain(gain: dict | None) -> str:
    """A trial's gain over the preset: mean (min to max), or - (the preset's own row, no figures)."""
    return "-" if gain is None else f"{gain['mean']:+.4f} ({gain['min']:+.4f} to {gain['max']:+.4f})"


def _preset(config: str | None, commits: list[str] | None, digests: set[str | None], old_data: bool = False) -> str:
    """The preset's file and the commit(s) its figures ran at (the file's version); "(earlier settings)" when
    they ran at settings (``digests``) the file no longer has, "(earlier data)" when on data (``old_data``)
    the set's generator no longer writes."""
    if config is None:
        return "-"
    marks = [m for m, on in (("earlier settings", earlier_settings(config, digests)), ("earlier data", old_data)) if on]
    return f"`{config}`" + (f" at {', '.join(commits)}" if commits else "") + "".join(f" ({m})" for m in marks)


def _earlier_splits(name: str, data: dict) -> bool:
    """Whether a set's stored runs were trained on splits of other sizes than its generator writes now
    (the runs' data digest cannot be checked without generating the set)."""
    from mobiletag.data.suite import SUITE_SPLITS

    splits = SUITE_SPLITS.get(name)
    return splits is not None and any(data.get(split) != count for split, count in splits)


def _row_commits(trial: dict, change: str) -> list[str] | None:
    """The commits that trained ``change``'s rows (a row without one: the trial's last commit)."""
    commits = {r.get("commit", trial.get("commit")) for r in trial["rows"].values() if r["change"] == change}
    return sorted(c for c in commits if c) or None


def _carried(trial: dict, change: str) -> str:
    """Where rows of ``change`` came from when they were trained as another change of the same
    configuration at an earlier commit (a row's ``carried_from``), e.g. after the preset took a trial's value."""
    carried = [r["carried_from"] for r in trial["rows"].values() if r["change"] == change and r.get("carried_from")]
    return f" (rows trained as {', '.join(sorted(carried))}: the same configuration)" if carried else ""


def _overrides(trial: dict, change: str) -> str:
    """The overrides of ``change`` in ``trial``'s rows, as compact JSON."""
    overrides = next(r["overrides"] for r in trial["rows"].values() if r["change"] == change)
    return json.dumps(overrides, separators=(",", ":"))


def _optional(title: str, name: str, data: dict | None, render) -> list[str]:
    """A section for bench/scale.json or bench/quality.json: its table, the file's leaves if its shape
    is not the one the renderer knows, or a line saying it is missing."""
    lines = ["", f"## {title}", ""]
    if data is None:
        return [*lines, f"No `bench/{name}` yet."]
    try:
        return lines + render(data)
    except (KeyError, TypeError, ValueError, IndexError):
        unknown = f"`bench/{name}` in a shape this README does not know; its figures as they are:"
        return [*lines, unknown, "", *generic_table(data)]


def readme(results: dict, scale: dict | None = None, quality: dict | None = None, demo: dict | None = None) -> str:
    """The text of bench/README.md."""
    lines = [
        "# Benchmark results",
        "",
        "Written by `bench/run.py` from `bench/results.json`, `bench/scale.json`, `bench/quality.json` and "
        "`bench/demo.json`; "
        "do not edit it by hand (`python bench/run.py --readme` writes it again, and "
        "`tests/unit/test_bench_readme.py` fails when it differs). What the figures mean and what each "
        "choice is worth: [docs/benchmarks.md](../docs/benchmarks.md).",
        "",
        *_commands(results, scale, quality, demo),
        "",
        "## How `make bench` measures",
        "",
        METHOD,
        "",
        "What each section measures:",
        "",
        *(f"* `{key}`: {text}" for key, text in SECTION_TEXT.items()),
        "",
        f"## `make bench`, {results['machine'].get('date')}",
        "",
        report.table(results),
    ]
    lines += _optional("`make bench-demo`: the demo against an earlier commit", "demo.json", demo, demo_lines)
    lines += _optional("`make bench-scale`: the late stages at growing dataset sizes", "scale.json", scale, scale_lines)
    lines += _optional("`make bench-quality`: the recipe on a hard set", "quality.json", quality, quality_lines)
    return "\n".join(lines) + "\n"


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def render(results_path: Path) -> str:
    """The README for ``results_path``, with scale.json, quality.json and demo.json from the same folder."""
    folder = results_path.parent
    results = json.loads(results_path.read_text())
    return readme(results, _load(folder / "scale.json"), _load(folder / "quality.json"), _load(folder / "demo.json"))


def write(results_path: Path) -> Path:
    """Writes README.md beside ``results_path`` (:func:`render`); returns its path."""
    path = results_path.with_name("README.md")
    path.write_text(render(results_path))
    return path

"""`make bench`: the pipeline's speed as ratios of two things measured in the same run.

Writes bench/results.json and bench/README.md, and prints a table. Every ratio is measured over
several rounds that alternate its two sides (A B A B ...), one ratio per round, in two blocks of
rounds, one before the whole demo run and one after it; it is reported as the median with its
spread (min-max; quartiles and every sample in results.json); a ratio is "met" when every round
meets its goal, "missed" when none does and "unstable" when the spread crosses it. When the
results file it replaces came from the same CPU, the table ends with how the two runs agree: a
ratio agrees when each run's median lies within the other's [min, max]. It trains nothing to
convergence, it times steps: about 16 minutes on 2 cores, 9 of them the whole demo run (one
run, not repeated).

    python bench/run.py [--skip-run] [--only SECTION] [--out bench/results.json]
    python bench/run.py --readme

``--only SECTION`` measures one section (input, host_input, training, determinism, model, run,
process_start, spread) and updates that section of the results file, keeping the others.
``spread`` (``make bench-spread``, 29 minutes here with other jobs beside it: three training runs
with ``reproducible: false``) runs only when asked for. ``--readme`` measures nothing: it writes
bench/README.md again from the results files beside --out.

The sections are in bench/sections/, the machine probe in bench/machine.py, the table in
bench/report.py and the README in bench/readme.py; this script chooses what to measure, runs it
and writes the files.
"""

from __future__ import annotations

import mobiletag  # noqa: F401  (isort: skip) its TensorFlow settings, as the pipeline runs: tf_keras, oneDNN off

import argparse
import inspect
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: stats, report, sections, ...
import readme
import report
import stats
from sections import DETERMINISM_MODES, REPO, SECTIONS, Blocked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "bench" / "results.json"))
    parser.add_argument("--skip-run", action="store_true", help="skip the whole-run measurement")
    parser.add_argument(
        "--only", choices=list(SECTIONS), help="measure this section only and update it in --out, keeping the others"
    )
    parser.add_argument(
        "--readme",
        action="store_true",
        help="measure nothing: write README.md beside --out from it (and scale.json, quality.json there)",
    )
    parser.add_argument("--determinism-child", choices=DETERMINISM_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--tfrecords", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    out_path = Path(args.out)
    if args.readme:
        print(f"wrote {readme.write(out_path)}")
        return
    if args.determinism_child:
        from sections.determinism import determinism_child

        determinism_child(args.determinism_child, args.tfrecords)
        return
    results = measure(out_path, args.only, args.skip_run)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    readme.write(out_path)
    print(report.table(results))


def measure(out_path: Path, only: str | None, skip_run: bool) -> dict:
    """The results file after measuring the sections asked for: ``only`` one of them (the others kept
    from ``out_path``), or all but the spread (kept), or, with ``skip_run``, all but the spread,
    the whole run and process start; with the comparison to the run it replaces."""
    from machine import machine
    from sections.determinism import bench_determinism
    from sections.input import bench_host_input, bench_input
    from sections.model import bench_model
    from sections.training import bench_training
    from sections.whole_run import bench_process_start, bench_run, bench_spread

    from mobiletag.config import load_config
    from mobiletag.data.dataset import index_dataset
    from mobiletag.data.sample import make_sample_dataset
    from mobiletag.data.tfrecords import build_tfrecords

    started = time.perf_counter()
    config = load_config(REPO / "configs" / "fast.yaml")
    sizes = {"teacher": config.teacher.image_size, "student": config.student.image_size}
    batch = config.student.batch_size
    results: dict = {}
    previous = json.loads(out_path.read_text()) if out_path.is_file() else {}
    if only:
        results = dict(previous)  # the other sections stay as they were
    elif "spread" in previous:
        results["spread"] = previous["spread"]  # make bench-spread's, which make bench does not measure
    results.update({"machine": machine(), "sizes": sizes, "batch": batch})
    with tempfile.TemporaryDirectory(prefix="mobiletag-bench-") as tmp:
        work = Path(tmp)

        def sample() -> tuple[Path, Path]:
            """The sample dataset and its TFRecords (fast.yaml sizes), built on first use."""
            if not (work / "tfrecords").is_dir():
                make_sample_dataset(work / "data", num_images=1000, seed=0)
                build_tfrecords(index_dataset(work / "data", config), config, work / "tfrecords")
            return work / "data", work / "tfrecords"

        measures: dict[str, Callable[[], object]] = {
            "input": lambda: bench_input(*sample(), config, sizes, batch),
            "host_input": lambda: bench_host_input(work),
            "training": lambda: bench_training(sample()[1], config, sizes, batch),
            "determinism": lambda: bench_determinism(sample()[1], work),
            "model": lambda: bench_model(240, work),
            "run": lambda: bench_run(sample()[0], work),
            "process_start": bench_process_start,
            "spread": lambda: bench_spread(sample()[0], work),
        }
        if only:
            keys = [only]
        elif skip_run:
            keys = [key for key in SECTIONS if key not in ("run", "process_start", "spread")]
        else:
            keys = [key for key in SECTIONS if key != "spread"]  # make bench-spread
        section_seconds = dict(results.get("bench_seconds", {})) if only else {}
        results.update(run_sections([(key, SECTIONS[key], measures[key]) for key in keys], section_seconds))
        results["bench_seconds"] = section_seconds
    if not only:
        results["bench_seconds"]["total"] = round(time.perf_counter() - started, 1)
    compare(previous, results, keys, only)
    return results


def compare(previous: dict, results: dict, measured: list[str], only: str | None) -> None:
    """Sets ``results["previous_run"]``: how the ratios of the ``measured`` sections agree with the
    run they replace (:func:`stats.agreement`), when that run came from the same CPU model; with
    ``only``, the other sections' rows stay as they were."""
    agreement = stats.agreement({k: previous.get(k, {}) for k in measured}, {k: results[k] for k in measured})
    if agreement["of"] and previous.get("machine", {}).get("cpu_model") == results["machine"]["cpu_model"]:
        rows = results.get("previous_run", {}).get("ratios", {}) if only else {}  # the other sections' rows
        rows = {path: row for path, row in rows.items() if path.split(".")[0] not in measured}
        rows.update(agreement["ratios"])
        results["previous_run"] = {
            "date": previous["machine"].get("date"),
            "ratios": dict(sorted(rows.items())),
            "agree": sum(row["agree"] for row in rows.values()),
            "of": len(rows),
        }


def run_sections(sections: list[tuple[str, str, Callable[[], object]]], seconds: dict[str, float]) -> dict:
    """Measures the sections in order, a blocked one's (:data:`Blocked`) first block in that order and
    its further blocks after every section has run (so, in `make bench`, after the whole run); adds
    each section's seconds to ``seconds`` and returns the results by section."""
    results: dict = {}
    blocked: dict[str, tuple[str, Blocked]] = {}
    for key, title, measure in sections:
        print(f"{title} ...", flush=True)
        start = time.perf_counter()
        result = measure()
        if inspect.isgenerator(result):
            next(result)  # set up and measure the first block
            blocked[key] = (title, result)
        else:
            results[key] = result
        seconds[key] = round(time.perf_counter() - start, 1)
    for key, (title, gen) in blocked.items():
        print(f"{title}: the other blocks ...", flush=True)
        start = time.perf_counter()
        while True:
            try:
                next(gen)
            except StopIteration as done:
                results[key] = done.value
                break
        seconds[key] = round(seconds[key] + time.perf_counter() - start, 1)
    return {key: results[key] for key, _, _ in sections}  # in the sections' order


if __name__ == "__main__":
    main()

"""`make bench-demo`: `make demo`'s pipeline time against the demo of an earlier commit, alternated.

Each side runs its own tree's `make demo` recipe lines (`make -n demo` there, with this virtual
environment's BIN, a DEMO_DIR of its own and no install step): the tree at ``--before`` (``git
archive`` into the work folder) and the tree at ``--after`` (default: this checkout as it is,
uncommitted changes included). Rounds alternate the sides A B, B A, A B, ... (``--rounds 2``: A B B A),
so a slow spell of a shared machine hits both. The pipeline's seconds come from the kfp.local log's
timestamps, from "Running pipeline" to "Pipeline ... finished" (the sample data and the validation
before it are not counted), and each task's seconds from its "Executing task" and "Task ... finished"
lines. Writes ``--out`` (bench/demo.json): every run, each side's median and spread, the ratio of the
medians against ``--goal``, the load before and after; then bench/README.md (when results.json is
beside it), whose demo rows come from that file only.

    python bench/demo.py --before cd5c461 [--after REF] [--rounds 2] [--work DIR] [--out bench/demo.json]
    python bench/demo.py --from-raw DIR/raw.json   # only write --out from a run's raw.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: stats, machine, readme
import stats
from machine import cpu, version

REPO = Path(__file__).resolve().parents[1]
# the demo the goal is measured against: configs/fast.yaml on 1,000 images
BEFORE = "cd5c461"
GOAL = 0.40  # the demo's pipeline time at most 40% of that demo's
SIDES = ("before", "after")

_STAMP = r"^(\d\d):(\d\d):(\d\d)\.(\d+) - \w+ - "


def _seconds(h: str, m: str, s: str, frac: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + float(f"0.{frac}")


def _plain(log: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", log)


def pipeline_seconds(log: str) -> float:
    """Seconds from the kfp.local log's "Running pipeline" line to its "Pipeline '...' finished" line
    (the clock passing midnight once is allowed for)."""
    found = re.findall(_STAMP + r"(Running pipeline|Pipeline '[\w-]+' finished)", _plain(log), flags=re.MULTILINE)
    starts = [_seconds(*stamp) for *stamp, event in found if event == "Running pipeline"]
    ends = [_seconds(*stamp) for *stamp, event in found if event != "Running pipeline"]
    if not starts or not ends:
        raise ValueError("no 'Running pipeline' and 'Pipeline ... finished' lines in the log: did the pipeline run?")
    return round((ends[-1] - starts[0]) % 86400, 1)


def task_seconds(log: str) -> dict[str, float]:
    """Each kfp.local task's seconds, from its "Executing task 'x'" line to its "Task 'x' finished" line."""
    started: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for *stamp, event, task in re.findall(
        _STAMP + r"(Executing task|Task) '([\w-]+)'", _plain(log), flags=re.MULTILINE
    ):
        t = _seconds(*stamp)
        if event == "Executing task":
            started[task] = t
        elif task in started:
            seconds[task] = round((t - started.pop(task)) % 86400, 1)
    return seconds


def order(rounds: int) -> list[tuple[int, str]]:
    """(round, side) in the order they run: before first in even rounds, after first in odd ones."""
    return [(r, side) for r in range(rounds) for side in (SIDES if r % 2 == 0 else SIDES[::-1])]


def recipe(tree: Path, bin_dir: Path, demo_dir: Path) -> list[str]:
    """The `mobiletag` command lines of ``tree``'s `make demo` recipe, with ``bin_dir``'s executables,
    ``demo_dir`` as DEMO_DIR and no install prerequisite."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    shown = subprocess.run(
        [
            "make",
            "-s",
            "-n",
            "--no-print-directory",
            "-C",
            str(tree),
            "demo",
            f"BIN={bin_dir}",
            f"DEMO_DIR={demo_dir}",
            "INSTALLED=",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    return recipe_lines(shown)


def recipe_lines(shown: str) -> list[str]:
    """The lines of `make -n demo`'s output that run the `mobiletag` command."""
    lines = [line.strip() for line in shown.splitlines()]
    found = [line for line in lines if line and Path(line.split()[0]).name == "mobiletag"]
    if not found:
        raise ValueError(f"`make -n demo` shows no mobiletag command:\n{shown}")
    return found


def recipe_facts(lines: list[str]) -> dict:
    """The config file and the number of sample images a demo recipe runs with."""
    text = " ".join(lines)
    config = re.search(r"--config\s+(\S+)", text)
    images = re.search(r"--images\s+(\d+)", text)
    return {"config": config.group(1) if config else None, "images": int(images.group(1)) if images else None}


def tree_at(ref: str, work: Path) -> Path:
    """The repository at ``ref`` (``git archive``) in ``work``: Makefile, configs, src, components, pipeline.py."""
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    out = work / f"tree-{commit[:12]}"
    if not (out / "Makefile").is_file():
        out.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()


def load() -> str:
    """The load averages over 1, 5 and 15 minutes."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_demo(tree: Path, bin_dir: Path, demo_dir: Path) -> dict:
    """``tree``'s demo recipe in ``demo_dir`` (emptied first): pipeline and task seconds, the load
    before it, its wall time and the test figure it printed into metrics.json."""
    shutil.rmtree(demo_dir, ignore_errors=True)
    demo_dir.mkdir(parents=True)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}",
        "TF_USE_LEGACY_KERAS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    lines = recipe(tree, bin_dir, demo_dir)
    before = load()
    start = time.perf_counter()
    with open(demo_dir / "console.txt", "w", encoding="utf-8") as console:
        for line in lines:
            done = subprocess.run(["bash", "-e", "-c", line], cwd=tree, env=env, stdout=console, stderr=console)
            if done.returncode != 0:
                raise SystemExit(f"{line}\nfailed ({done.returncode}); its output: {demo_dir / 'console.txt'}")
    wall = time.perf_counter() - start
    logs = sorted(demo_dir.glob("*.log"))
    if not logs:
        raise SystemExit(f"{demo_dir}: the demo left no log file")
    text = logs[0].read_text(encoding="utf-8", errors="replace")
    metrics_file = demo_dir / "output" / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    return {
        "pipeline_seconds": pipeline_seconds(text),
        "wall_seconds": round(wall, 1),
        "task_seconds": task_seconds(text),
        "test_map_macro_int8": metrics.get("test", {}).get("map_macro"),
        "load_before": before,
    }


def summary(raw: dict, goal: float = GOAL) -> dict:
    """demo.json from a run's raw record: each side's runs, median and spread, the tasks' medians,
    the ratio of the medians (after / before) against ``goal`` and the ratio per round."""
    runs = raw["runs"]
    by_side = {side: [run for run in runs if run["side"] == side] for side in SIDES}
    if not all(by_side.values()):
        raise ValueError("demo.json needs runs of both sides")
    sides = {}
    for side, own in by_side.items():
        tasks = dict.fromkeys(task for run in own for task in run["task_seconds"])  # in the pipeline's order
        sides[side] = {
            "commit": raw[side]["commit"],
            "recipe": raw[side]["recipe"],
            **recipe_facts(raw[side]["recipe"]),
            "pipeline_seconds": stats.summarize([run["pipeline_seconds"] for run in own], digits=1),
            "wall_seconds": stats.summarize([run["wall_seconds"] for run in own], digits=1),
            "task_seconds": {
                task: round(
                    statistics.median(run["task_seconds"][task] for run in own if task in run["task_seconds"]), 1
                )
                for task in tasks
            },
            "test_map_macro_int8": sorted({run["test_map_macro_int8"] for run in own}, key=str),
        }
    at = {(run["round"], run["side"]): run["pipeline_seconds"] for run in runs}
    rounds = sorted({r for r, _ in at})
    per_round = [at[r, "after"] / at[r, "before"] for r in rounds if (r, "after") in at and (r, "before") in at]
    ratio = sides["after"]["pipeline_seconds"]["median"] / sides["before"]["pipeline_seconds"]["median"]
    return {
        "date": raw["date"],
        "machine": raw["machine"],
        "order": [f"{run['round']}:{run['side']}" for run in runs],
        "runs": runs,
        **sides,
        "after_over_before": {
            "of_medians": round(ratio, 3),
            "goal": f"<= {goal:.2f}",
            "status": "met" if ratio <= goal else "missed",
            "per_round": stats.summarize(per_round, f"<= {goal:.2f}", digits=3) if per_round else None,
        },
        "load": raw["load"],
        "seconds": raw["seconds"],
    }


def measure(args: argparse.Namespace, work: Path) -> dict:
    """The alternated demo runs of both sides, as a raw record (``summary`` turns it into demo.json)."""
    bin_dir = Path(sys.executable).parent
    trees = {"before": tree_at(args.before, work)}
    if args.after:
        trees["after"] = tree_at(args.after, work)
        after_commit = git("rev-parse", args.after)
    else:
        trees["after"] = REPO
        after_commit = git("rev-parse", "HEAD") + (
            "-dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
        )
    raw: dict = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": {**cpu(), "tensorflow": version("tensorflow")},
        **{
            side: {"commit": commit, "recipe": recipe(trees[side], bin_dir, Path("DEMO_DIR"))}
            for side, commit in (("before", git("rev-parse", args.before)), ("after", after_commit))
        },
        "runs": [],
        "load": {"start": load()},
    }
    started = time.perf_counter()
    for r, side in order(args.rounds):
        one = run_demo(trees[side], bin_dir, work / f"demo-{r}-{side}")
        raw["runs"].append({"round": r, "side": side, **one})
        print(f"round {r} {side}: pipeline {one['pipeline_seconds']} s (load {one['load_before']})", flush=True)
        (work / "raw.json").write_text(json.dumps(raw, indent=1), encoding="utf-8")
    raw["load"]["end"] = load()
    raw["seconds"] = round(time.perf_counter() - started, 1)
    (work / "raw.json").write_text(json.dumps(raw, indent=1), encoding="utf-8")
    return raw


def write(report: dict, out: Path) -> None:
    """demo.json, and bench/README.md beside it when results.json is there."""
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    results_file = out.with_name("results.json")
    if results_file.is_file():
        import readme

        print("wrote", readme.write(results_file))
    ratio = report["after_over_before"]
    print(
        f"pipeline: before {report['before']['pipeline_seconds']['median']} s, after "
        f"{report['after']['pipeline_seconds']['median']} s: {ratio['of_medians']:.1%} (goal {ratio['goal']}: "
        f"{ratio['status']}); wrote {out}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default=BEFORE, help=f"the commit whose demo is 'before' (default {BEFORE})")
    parser.add_argument(
        "--after", default="", help="the commit whose demo is 'after' (default: this checkout as it is)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of one run per side, alternated (2: A B B A)")
    parser.add_argument("--goal", type=float, default=GOAL, help="after / before at most this (default %(default)s)")
    parser.add_argument("--out", default=str(REPO / "bench" / "demo.json"))
    parser.add_argument("--work", help="keep the trees, demo folders and raw.json here (default: a temporary folder)")
    parser.add_argument("--from-raw", help="only write --out from a run's raw.json")
    args = parser.parse_args()
    if args.from_raw:
        write(summary(json.loads(Path(args.from_raw).read_text()), args.goal), Path(args.out))
        return
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="mobiletag-bench-demo-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        raw = measure(args, work)
    write(summary(raw, args.goal), Path(args.out))


if __name__ == "__main__":
    main()

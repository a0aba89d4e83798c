"""A child of `make bench`'s model section: TFLite latency of two models in a fresh process.

    python bench/latency.py INT8.tflite FLOAT.tflite --rounds 5 --images 30 --pause 0.2

Prints one JSON line: per thread count (1 and 2), the milliseconds of each model over
``rounds`` alternated rounds (INT8, float, INT8, float ...), each sample the median of
``images`` single-image runs after a pause. It imports LiteRT and numpy only (no TensorFlow),
as an app's process would. Why a process of its own: a model's latency differs from one process
to the next by a few percent (INT8 at 1 thread: 7.3-7.6 ms in one `make bench` run, 7.6-8.5 ms
in the next, each steady within its run), so a spread taken in one process misses it.
"""

from __future__ import annotations

import argparse
import json

import stats  # bench/stats.py, beside this script (a script's folder is on sys.path)

from mobiletag.export.litert import TFLiteModel


def measure(models: dict[str, str], threads: int, rounds: int, images: int, pause: float) -> dict[str, list[float]]:
    runners = {name: TFLiteModel(path, threads) for name, path in models.items()}
    for runner in runners.values():
        runner.latency_ms(5)  # warm-up
    # a sample is latency_ms's own figure (the median of ``images`` runs), not the call's seconds
    samplers = {name: lambda runner=runner: runner.latency_ms(images) for name, runner in runners.items()}
    return stats.alternate(samplers, rounds, warm_up=False, pause=pause)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("int8")
    parser.add_argument("float")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--pause", type=float, default=0.2)
    args = parser.parse_args()
    models = {"int8": args.int8, "float": args.float}
    print(json.dumps({threads: measure(models, threads, args.rounds, args.images, args.pause) for threads in (1, 2)}))


if __name__ == "__main__":
    main()

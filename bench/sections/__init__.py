"""The sections of `make bench`, one module each, and what they share: how rounds are blocked.

Each ratio is measured in :data:`BLOCKS` blocks of :data:`ROUNDS` rounds: the first block before
the whole run, the second after it (about 9 minutes later, the machine in another state), so the
spread holds slow drift of a shared machine too and not only the noise of a minute (two runs'
medians moved 3-5%, outside one run's spread, when all 7 rounds were taken within a minute).
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
PAUSE = 0.2  # seconds between alternated samples: what one leaves running in the background ends off the clock
BLOCKS = 2
ROUNDS = 5
# A section measured in blocks: setup and its first block on the first next(), each further block on
# the next; the results dict is the generator's return value (see run.run_sections)
Blocked = Generator[None, None, dict]

# the determinism section's child processes (bench/run.py --determinism-child): op determinism off and
# on with TensorFlow's oneDNN kernels off (as `import mobiletag` sets them), and on with them on
DETERMINISM_MODES = ("off", "on", "onednn")

# every section, in the order `make bench` measures them and its table shows them, with its title
SECTIONS = {
    "input": "input pipeline",
    "host_input": "input pipeline per host core, production sizes (300/240 px, ~1 MP sources)",
    "training": "training steps",
    "determinism": "reproducible kernels: op determinism on / off, oneDNN off / on (three processes)",
    "model": "model",
    "run": "whole run (mobiletag train, configs/fast.yaml)",
    "process_start": "new process + imports",
    "spread": "run-to-run spread, reproducible: false (3 runs)",
}


def rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("inf")

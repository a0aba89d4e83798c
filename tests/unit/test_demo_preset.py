"""`make demo`'s preset is configs/fast.yaml with fewer training steps and nothing else changed."""

from __future__ import annotations

import re

import yaml

from mobiletag.config import load_config

from ..conftest import REPO
from .test_config import _flatten

# the keys configs/demo.yaml sets to other values than configs/fast.yaml (or the defaults)
DEMO_CUTS = {
    "teacher.image_size": 64,
    "teacher.head_epochs": 0,
    "teacher.fine_tune_epochs": 2,
    "student.head_epochs": 0,
    "student.epochs": 4,
    "student.lr_warmup_epochs": 0.0,
    "qat.epochs": 1,
}


def test_demo_preset_is_fast_yaml_with_fewer_steps():
    fast = _flatten(load_config(REPO / "configs" / "fast.yaml").to_dict())
    demo = _flatten(load_config(REPO / "configs" / "demo.yaml").to_dict())
    assert {k: v for k, v in demo.items() if fast[k] != v} == DEMO_CUTS
    # every key fast.yaml sets is spelled out in demo.yaml too (nothing falls back to the defaults)
    fast_keys = set(_flatten(yaml.safe_load((REPO / "configs" / "fast.yaml").read_text())))
    demo_keys = set(_flatten(yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())))
    assert demo_keys == fast_keys | set(DEMO_CUTS)


def test_make_demo_runs_the_demo_preset():
    recipe = re.search(r"^demo:.*?\n((?:\t.*\n)+)", (REPO / "Makefile").read_text(), re.M)
    assert recipe is not None
    lines = recipe.group(1)
    assert "sample-data --out-dir $(DEMO_DIR)/data --images 600" in lines
    assert lines.count("--config configs/demo.yaml") == 2  # validate and train
    assert "fast.yaml" not in lines

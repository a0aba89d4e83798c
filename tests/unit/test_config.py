from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from mobiletag.config import Config, describe, load_config, load_config_text
from mobiletag.errors import ConfigError

from ..conftest import REPO


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_default_yaml_equals_dataclass_defaults_and_documents_every_key():
    text = (REPO / "configs" / "default.yaml").read_text()
    data = yaml.safe_load(text)
    assert _flatten(data) == _flatten(Config().to_dict())
    assert load_config(REPO / "configs" / "default.yaml") == Config()
    for key, _default, help_text in describe():
        assert help_text, f"{key} has no help text"
        assert f"# {help_text}" in text, f"configs/default.yaml does not document {key}"


def test_production_defaults():
    c = Config()
    assert (c.teacher.image_size, c.teacher.batch_size, c.teacher.fine_tune_fraction) == (300, 64, 0.3)
    assert (c.student.image_size, c.student.batch_size, c.student.alpha) == (240, 128, 0.7)
    assert c.teacher.weights == "imagenet"
    assert c.stored_image_side == 345


def test_reproducible_and_gate_margin_defaults():
    c = Config()
    assert c.reproducible is True  # deterministic runs for a seed; the CPU cost is small (README)
    assert (c.gate.min_improvement, c.gate.require_distillation_gain) == (0.0, False)
    fast = load_config(REPO / "configs" / "fast.yaml")
    assert fast.reproducible is True  # the tests and the demo run with it on
    assert json.loads(c.section_json("seed", "reproducible")) == {"reproducible": True, "seed": 42}


def test_legacy_config_loads_unchanged(tmp_path):
    legacy = tmp_path / "legacy.yaml"
    legacy.write_text(
        yaml.safe_dump(
            {
                "num_classes": 7,
                "multi_gpu": {"enabled": True},
                "teacher": {"batch_size": 64},
                "student": {"batch_size": 128},
            }
        )
    )
    c = load_config(legacy)
    assert c.num_classes == 7 and c.multi_gpu.enabled and c.teacher.batch_size == 64 and c.student.batch_size == 128


def test_later_sources_override_earlier_ones(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("teacher: {image_size: 128, batch_size: 8}\nseed: 1\n")
    b.write_text("teacher: {image_size: 160}\n")
    c = load_config(REPO / "configs" / "default.yaml", a, b, {"seed": 9})
    assert c.teacher.image_size == 160
    assert c.teacher.batch_size == 8  # kept from a: merging is per key
    assert c.seed == 9
    assert c.teacher.head_epochs == Config().teacher.head_epochs


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("teachr: {batch_size: 2}", r"unknown config key 'teachr' \(did you mean 'teacher'\?\)"),
        (
            "teacher: {batchsize: 2}",
            r"unknown config key 'teacher.batchsize' \(did you mean 'teacher.batch_size'|batch_size",
        ),
        ("teacher: {batch_size: two}", r"'teacher.batch_size' must be an integer, got 'two'"),
        ("teacher: {batch_size: 2.5}", r"'teacher.batch_size' must be an integer"),
        ("teacher: {batch_size: true}", r"'teacher.batch_size' must be an integer"),
        ("student: {learning_rate: 1e-4}", r"PyYAML reads numbers like 1e-4 as text.*1.0e-4"),
        ("student: {alpha: 1.5}", r"'student.alpha' is 1.5; it must be between 0.0 and 1.0"),
        ("teacher: {batch_size: 0}", r"'teacher.batch_size' is 0; it must be >= 1"),
        (
            "thresholds: {strategy: best}",
            r"'thresholds.strategy' is 'best'; it must be one of 'f1', 'precision', 'global'",
        ),
        ("multi_gpu: true", r"'multi_gpu' must be a mapping"),
        ("multi_gpu: {enabled: 'yes'}", r"'multi_gpu.enabled' must be true or false"),
        (
            "multi_gpu: {mixed_precision: fp16}",
            r"'multi_gpu.mixed_precision' is 'fp16'; it must be one of 'auto', 'float32', 'bfloat16', 'float16'$",
        ),
        (
            "multi_gpu: {mixed_precision: true}",
            r"'multi_gpu.mixed_precision' is True; it must be one of 'auto', 'float32', 'bfloat16', 'float16'$",
        ),
        (
            "teacher: {warmup_epochs: 2}",
            r"config key 'teacher.warmup_epochs' is now 'teacher.head_epochs' \(the head-only phase; "
            r"'lr_warmup_epochs' is the learning-rate ramp\); rename it$",
        ),
        (
            "teacher: {warmup_learning_rate: 0.01}",
            r"'teacher.warmup_learning_rate' is now 'teacher.head_learning_rate'",
        ),
        ("student: {warmup_epochs: 0}", r"'student.warmup_epochs' is now 'student.head_epochs'"),
        (
            "student: {warmup_learning_rate: 0.01}",
            r"'student.warmup_learning_rate' is now 'student.head_learning_rate'",
        ),
        (
            "multi_gpu: {jit_compile: xla}",
            r"'multi_gpu.jit_compile' is 'xla'; it must be true or false or one of 'auto'$",
        ),
        ("multi_gpu: {steps_per_execution: 0}", r"'multi_gpu.steps_per_execution' is 0; it must be >= 1"),
        ("classes: [a, a]", r"lists \['a'\] more than once"),
        ("classes: [a, b]\nnum_classes: 3", r"'num_classes' is 3 but 'classes' lists 2"),
        ("thresholds: {grid_min: 0.9, grid_max: 0.1}", r"grid_min \(0.9\) is above thresholds.grid_max"),
        ("- a\n- b", r"must be a YAML mapping"),
        ("teacher: [", r"not valid YAML"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path, text, expected):
    path = tmp_path / "user.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_range_error_names_the_file_that_set_the_value(tmp_path):
    good = tmp_path / "good.yaml"
    bad = tmp_path / "bad.yaml"
    good.write_text("seed: 1\n")
    bad.write_text("student: {temperature: 0.0}\n")
    with pytest.raises(ConfigError, match=f"{bad}: config key 'student.temperature' is 0.0"):
        load_config(good, bad)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_override_text_and_section_json():
    data = load_config_text("student: {epochs: 3}\n")
    c = load_config(data)
    assert c.student.epochs == 3
    assert load_config_text("") == {}
    with pytest.raises(ConfigError, match="<config_overrides>: unknown config key 'bogus'"):
        load_config_text("bogus: 1")
    section = yaml.safe_load(c.section_json("student", "seed"))
    assert set(section) == {"student", "seed"} and section["student"]["epochs"] == 3
    with pytest.raises(ConfigError, match="unknown config section"):
        c.section_json("nope")


@pytest.mark.parametrize("value", ["auto", "float32", "bfloat16", "float16"])
def test_mixed_precision_modes(value):
    assert load_config({"multi_gpu": {"mixed_precision": value}}).multi_gpu.mixed_precision == value


@pytest.mark.parametrize("value", [True, False])
def test_mixed_precision_refuses_true_and_false(value):
    with pytest.raises(ConfigError, match=r"<overrides>: config key 'multi_gpu.mixed_precision' is (True|False); "):
        load_config({"multi_gpu": {"mixed_precision": value}})


def test_a_renamed_key_is_refused_in_override_text_too():
    with pytest.raises(
        ConfigError, match=r"<config_overrides>: config key 'student.warmup_epochs' is now 'student.head"
    ):
        load_config_text("student: {warmup_epochs: 1}")


def test_gpu_defaults():
    c = Config().multi_gpu
    assert (c.mixed_precision, c.jit_compile, c.require_gpu) == ("auto", "auto", False)
    assert c.steps_per_execution >= 1
    assert (Config().teacher.reference_batch_size, Config().student.reference_batch_size) == (64, 128)

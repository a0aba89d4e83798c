"""The stage table (mobiletag.stages.STAGES) against the compiled pipeline, resolve_config and the
in-process runner: the same stages, inputs, config JSON and outputs everywhere."""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from mobiletag.stages import CONFIG_OUTPUTS, CONFIG_STAGE, STAGE, STAGES, Stage

from ..conftest import REPO, resolve_configs

CONFIG_TASK = CONFIG_STAGE.replace("_", "-")


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    from pipeline import compile_pipeline

    path = tmp_path_factory.mktemp("stage_table") / "pipeline.yaml"
    compile_pipeline(str(path))
    return next(doc for doc in yaml.safe_load_all(path.read_text()) if doc)


def _tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of the pipeline (condition groups opened), its inputs resolved to where they come
    from: ("task", producer, output key) or ("pipeline", parameter) or ("constant", value)."""
    found: dict[str, dict[str, Any]] = {}

    def source(binding: dict[str, Any], outer: dict[str, Any]) -> tuple[str, ...]:
        if "taskOutputArtifact" in binding or "taskOutputParameter" in binding:
            ref = binding.get("taskOutputArtifact") or binding["taskOutputParameter"]
            key = ref.get("outputArtifactKey") or ref["outputParameterKey"]
            return ("task", ref["producerTask"], key)
        name = binding.get("componentInputArtifact") or binding.get("componentInputParameter")
        if name is not None:
            return outer.get(name, ("pipeline", name))
        return ("constant", str(binding.get("runtimeValue")))

    def walk(tasks: dict[str, Any], outer: dict[str, Any]) -> None:
        for name, task in tasks.items():
            inputs = {**task.get("inputs", {}).get("artifacts", {}), **task.get("inputs", {}).get("parameters", {})}
            resolved = {key: source(binding, outer) for key, binding in inputs.items()}
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:  # a dsl.If group: its tasks see its inputs
                walk(component["dag"]["tasks"], resolved)
            else:
                found[name] = {"inputs": resolved, "after": set(task.get("dependentTasks", [])), "component": component}

    walk(spec["root"]["dag"]["tasks"], {})
    return found


def _upstream(stage: Stage, by_name: dict[str, Stage]) -> dict[str, tuple[str, str]]:
    """Stage.upstream resolved in ``by_name`` (a changed copy of the table) rather than in STAGE."""
    out = {}
    for parameter, source in stage.inputs:
        name, _, output = source.partition(".")
        out[parameter] = (name, output or (by_name[name].outputs[0] if name in by_name else "?"))
    return out


def mismatches(spec: dict[str, Any], stages: tuple[Stage, ...]) -> list[str]:
    """How the compiled pipeline differs from ``stages`` (empty: they agree)."""
    table = {s.task: s for s in stages}
    by_name = {s.name: s for s in stages}
    tasks = _tasks(spec)
    errors = []
    if set(tasks) != {CONFIG_TASK, *table}:
        errors.append(f"tasks {sorted(tasks)} != stage table {sorted(table)} + {CONFIG_TASK}")
    seen: set[str] = set()
    for stage in stages:
        upstream = _upstream(stage, by_name)
        if late := ({up for up, _ in upstream.values()} | set(stage.after)) - seen:
            errors.append(f"{stage.name} comes before {sorted(late)} in the table")
        seen.add(stage.name)
        task = tasks.get(stage.task)
        if task is None:
            continue
        from_stages = {k: v[1:] for k, v in task["inputs"].items() if v[0] == "task" and v[1] != CONFIG_TASK}
        expected = {k: (up.replace("_", "-"), out) for k, (up, out) in upstream.items()}
        if from_stages != expected:
            errors.append(f"{stage.name}: inputs {from_stages} != table {expected}")
        config = task["inputs"].get("config_json")
        wanted = ("task", CONFIG_TASK, stage.config_key) if stage.config_key else None
        if config != wanted:
            errors.append(f"{stage.name}: config_json from {config}, the table says {wanted}")
        producers = {v[1] for v in task["inputs"].values() if v[0] == "task"}
        depends = {t for t in producers | task["after"] if t in tasks}
        needs = {up for up, _ in expected.values()} | {a.replace("_", "-") for a in stage.after}
        if stage.config_key:
            needs.add(CONFIG_TASK)
        if depends != needs:
            errors.append(f"{stage.name}: depends on {sorted(depends)}, the table on {sorted(needs)}")
        definitions = task["component"].get("outputDefinitions", {})
        outputs = {*definitions.get("artifacts", {}), *definitions.get("parameters", {})}
        if outputs != set(stage.outputs):
            errors.append(f"{stage.name}: outputs {sorted(outputs)} != table {sorted(stage.outputs)}")
        executor = spec["deploymentSpec"]["executors"][task["component"]["executorLabel"]]
        on_gpu = "accelerator" in executor["container"].get("resources", {})
        if on_gpu != stage.resources.startswith("gpu"):
            errors.append(f"{stage.name}: accelerator {on_gpu}, resources {stage.resources!r}")
    return errors


def test_pipeline_matches_stage_table(spec) -> None:
    assert mismatches(spec, STAGES) == []
    assert all(s.upstream == _upstream(s, STAGE) for s in STAGES)


@pytest.mark.parametrize(
    "broken",
    [
        "drop a stage",
        "swap two stages",
        "wrong input",
        "wrong config",
        "no after",
        "wrong resources",
        "extra output",
    ],
)
def test_mismatches_are_found(spec, broken) -> None:
    """The check above can fail: each change of the table gives a mismatch."""
    stages = list(STAGES)
    i = next(n for n, s in enumerate(stages) if s.name == "quantize")
    if broken == "drop a stage":
        del stages[i]
    elif broken == "swap two stages":
        stages[i], stages[i - 1] = stages[i - 1], stages[i]
    elif broken == "wrong input":
        stages[i] = dataclasses.replace(
            stages[i], inputs=(("dataset", "prepare_dataset"), ("teacher", "train_student"))
        )
    elif broken == "wrong config":
        j = next(n for n, s in enumerate(stages) if s.name == "train_student_baseline")
        stages[j] = dataclasses.replace(stages[j], config_of="")
    elif broken == "no after":
        j = next(n for n, s in enumerate(stages) if s.name == "train_student_baseline")
        stages[j] = dataclasses.replace(stages[j], after=())
    elif broken == "wrong resources":
        stages[i] = dataclasses.replace(stages[i], resources="cpu")
    elif broken == "extra output":
        stages[i] = dataclasses.replace(stages[i], outputs=(*stages[i].outputs, "extra"))
    assert mismatches(spec, tuple(stages)) != []


def test_timeouts_name_every_task_in_table_order() -> None:
    sys.path.insert(0, str(REPO))
    import pipeline

    assert list(pipeline.TIMEOUTS) == [CONFIG_TASK, *(s.task for s in STAGES)]


def test_resolve_config_outputs_match_stage_table(spec) -> None:
    """The NamedTuple of components/resolve_config.py (a literal: KFP compiles the source) starts
    with one JSON per stage of CONFIG_OUTPUTS, in table order, and has no other stage's name."""
    from components.resolve_config import resolve_config

    fields = typing.get_type_hints(resolve_config.python_func)["return"]._fields
    assert fields[: len(CONFIG_OUTPUTS)] == CONFIG_OUTPUTS
    assert not set(fields[len(CONFIG_OUTPUTS) :]) & set(STAGE)
    compiled = spec["components"]["comp-resolve-config"]["outputDefinitions"]["parameters"]
    assert set(compiled) == set(fields)
    # every stage that reads config reads one of them; a stage sharing another's config reads the same sections
    for stage in STAGES:
        if stage.config_key:
            assert stage.config_key in CONFIG_OUTPUTS
            assert stage.config_sections == STAGE[stage.config_key].config_sections, stage.name


def test_resolve_config_body_returns_the_annotation(sample_dir: Path, tmp_path: Path) -> None:
    """The body builds its NamedTuple from CONFIG_OUTPUTS: the same fields as the literal annotation,
    each the stage's JSON."""
    from components.resolve_config import resolve_config

    from mobiletag.config import load_config
    from mobiletag.stages.resolve_config import stage_config_json

    fields = typing.get_type_hints(resolve_config.python_func)["return"]._fields
    result = resolve_configs(sample_dir, tmp_path / "config.yaml")
    assert result._fields == fields
    config = load_config(str(tmp_path / "config.yaml"))
    for name in CONFIG_OUTPUTS:
        assert getattr(result, name) == stage_config_json(config, name)


def test_inprocess_runner_calls_every_stage() -> None:
    from mobiletag.runners import inprocess

    assert list(inprocess.CALLS) == [s.name for s in STAGES]


def _record_calls(monkeypatch, gate_passed: bool = True) -> list[tuple[str, tuple, dict]]:
    """Replace every stage's entry point by a recorder (publish answers with a version and the gate)."""
    from mobiletag.stages.common import StageResult

    calls: list[tuple[str, tuple, dict]] = []

    def entry(stage: Stage):
        def fn(*args, **kwargs):
            calls.append((stage.name, args, kwargs))
            if stage.name == "publish":
                return StageResult(details={"version": "v2", "previous_version": "v1", "gate_passed": gate_passed})
            return StageResult()

        return fn

    monkeypatch.setattr(Stage, "entry", entry)
    return calls


def test_inprocess_runner_calls_each_stage_as_its_component_does(monkeypatch, sample_dir, tiny_config, tmp_path):
    """Each entry point in table order, with the stage's own config (from its JSON, as on a cluster)
    and its upstream stages' folders; publish without promoting, then promote when the gate passed."""
    from mobiletag.runners import inprocess
    from mobiletag.stages.resolve_config import config_from_json, stage_config_json

    calls = _record_calls(monkeypatch)
    work, out, models = tmp_path / "work", tmp_path / "out", str(tmp_path / "models")
    inprocess.run_pipeline(tiny_config, sample_dir, out, work_dir=work, output_uri=models)
    assert [name for name, _, _ in calls] == [s.name for s in STAGES]
    args = {name: a for name, a, _ in calls}
    kwargs = {name: k for name, _, k in calls}
    for stage in STAGES:
        if stage.config_key:
            assert args[stage.name][0] == config_from_json(stage_config_json(tiny_config, stage.name)), stage.name
    assert args["train_student_baseline"][0] == args["train_student"][0]
    assert args["train_teacher"][0] != tiny_config  # the teacher's sections only, the rest defaults
    assert args["prepare_dataset"][1:] == (str(sample_dir.resolve()), work / "prepare_dataset")
    assert args["quantize"][1:] == tuple(
        work / s for s in ("prepare_dataset", "train_teacher", "select_student", "quantize")
    )
    backups = {"backup_uri": str(work / "backup"), "run_id": f"local-{work.name}"}
    assert kwargs["quantize"] == kwargs["bundle"] == backups
    assert kwargs["train_student_baseline"] == {**backups, "enabled": True}
    assert args["evaluate"][1:6] == tuple(
        work / s
        for s in ("prepare_dataset", "train_teacher", "select_student", "mediapipe_package", "optimize_thresholds")
    )
    assert kwargs["evaluate"] == {
        "distilled_dir": work / "train_student",
        "baseline_dir": work / "train_student_baseline",
        "qat_dir": work / "quantize",
    }
    assert args["bundle"][-1] == out
    assert args["publish"][1:] == (out, models, f"local-{work.name}") and kwargs["publish"] == {"promote": False}
    assert args["promote"] == (models, "v2", "v1")


@pytest.mark.parametrize(("output_uri", "gate_passed", "last"), [(None, True, "bundle"), ("m", False, "publish")])
def test_inprocess_runner_skips_what_the_pipeline_skips(
    monkeypatch, sample_dir, tiny_config, tmp_path, output_uri, gate_passed, last
):
    from mobiletag.runners import inprocess

    calls = _record_calls(monkeypatch, gate_passed)
    inprocess.run_pipeline(tiny_config, sample_dir, tmp_path / "out", output_uri=output_uri)
    names = [s.name for s in STAGES]
    assert [name for name, _, _ in calls] == names[: names.index(last) + 1]

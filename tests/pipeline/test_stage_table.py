"""The stage table (mobiletag.stages.STAGES) against the compiled pipeline, resolve_config and the
in-process runner: the same stages, inputs, config JSON, outputs and run conditions everywhere."""

from __future__ import annotations

import collections
import dataclasses
import functools
import importlib
import json
import operator
import os
import re
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


CONDITION = re.compile(r"inputs\.parameter_values\['(?P<input>[^']+)'\] (?P<operator>==|!=) (?P<value>.+)")


def _condition(group: dict[str, Any], inputs: dict[str, tuple[str, ...]]) -> tuple[str, tuple[str, ...], str, Any]:
    """A dsl.If group's condition: (group name, where its operand comes from, operator, value)."""
    match = CONDITION.fullmatch(group["triggerPolicy"]["condition"])
    assert match, group["triggerPolicy"]["condition"]
    value = yaml.safe_load(match["value"])  # the compiler writes '' for a string, true / false for a bool
    return (group["taskInfo"]["name"], inputs[match["input"]], match["operator"], value)


def _tasks(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every task of the pipeline (condition groups opened), its inputs resolved to where they come
    from: ("task", producer, output key) or ("pipeline", parameter) or ("constant", value); its
    conditions: the enclosing dsl.If groups' (see _condition), outermost first."""
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

    def walk(tasks: dict[str, Any], outer: dict[str, Any], conditions: tuple) -> None:
        for name, task in tasks.items():
            inputs = {**task.get("inputs", {}).get("artifacts", {}), **task.get("inputs", {}).get("parameters", {})}
            resolved = {key: source(binding, outer) for key, binding in inputs.items()}
            component = spec["components"][task["componentRef"]["name"]]
            if "dag" in component:  # a dsl.If group: its tasks see its inputs
                walk(component["dag"]["tasks"], resolved, (*conditions, _condition(task, resolved)))
            else:
                found[name] = {
                    "inputs": resolved,
                    "after": set(task.get("dependentTasks", [])),
                    "component": component,
                    "conditions": list(conditions),
                }

    walk(spec["root"]["dag"]["tasks"], {}, ())
    return found


def _table_conditions(stage: Stage, by_name: dict[str, Stage]) -> list[tuple[str, tuple[str, ...], str, Any]]:
    """The dsl.If groups the table puts the stage's task in, outermost first, as _condition gives them:
    its upstream stages' (a task that reads a conditional task's output sits in its group), then its own."""
    conditions: dict[tuple, None] = {}
    for upstream in [*(up for up, _ in _upstream(stage, by_name).values()), *stage.after]:
        if upstream in by_name:
            conditions.update(dict.fromkeys(_table_conditions(by_name[upstream], by_name)))
    if (when := stage.when) is not None:
        name, _, output = when.source.partition(".")
        source = ("task", name.replace("_", "-"), output) if output else ("pipeline", name)
        conditions[(when.group, source, when.operator, when.value)] = None
    return list(conditions)


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
        if task["conditions"] != (wanted := _table_conditions(stage, by_name)):
            errors.append(f"{stage.name}: runs under {task['conditions']}, the table says {wanted}")
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
        "no condition",
        "other condition value",
        "other condition operator",
        "other condition group",
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
    elif broken.startswith(("no condition", "other condition")):
        j = next(n for n, s in enumerate(stages) if s.name == ("publish" if broken == "no condition" else "promote"))
        when = stages[j].when
        assert when is not None
        changed = {
            "no condition": None,
            "other condition value": dataclasses.replace(when, value=False),
            "other condition operator": dataclasses.replace(when, operator="!="),
            "other condition group": dataclasses.replace(when, group="gate"),
        }[broken]
        stages[j] = dataclasses.replace(stages[j], when=changed)
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
    each the stage's JSON; a training step's with its step block (backups, its GPUs), no other's."""
    from components.resolve_config import resolve_config

    from mobiletag.config import load_config
    from mobiletag.stages.resolve_config import STEP, stage_config_json, training_steps

    fields = typing.get_type_hints(resolve_config.python_func)["return"]._fields
    result = resolve_configs(
        sample_dir, tmp_path / "config.yaml", backup_uri="gs://b/p", teacher_gpus=4, student_gpus=2
    )
    assert result._fields == fields
    config = load_config(str(tmp_path / "config.yaml"))
    steps = training_steps("gs://b/p", 4, 2)
    for name in CONFIG_OUTPUTS:
        assert getattr(result, name) == stage_config_json(config, name, steps)
    given = {name: json.loads(getattr(result, name)).get(STEP) for name in CONFIG_OUTPUTS}
    training = {"train_teacher": 4, "train_student": 2, "quantize": 1}  # QAT: one device
    assert given == {n: {"backup_uri": "gs://b/p", "gpus": training[n]} if n in training else None for n in given}
    assert {s.name for s in STAGES if s.resources.startswith("gpu")} == {"train_student_baseline", *training}


def test_a_training_step_refuses_a_config_json_without_its_step(tiny_config) -> None:
    """run_training reads backups and GPUs from the JSON's step block: a JSON without one (not resolve_config's)
    is refused with the fix, not run without backups; other stages read the same JSON with the block ignored."""
    from mobiletag.errors import ConfigError
    from mobiletag.stages.resolve_config import config_from_json, stage_config_json, step_from_json, training_steps

    with_step = stage_config_json(tiny_config, "train_student_baseline", training_steps("gs://b", 2, 3))
    assert step_from_json(with_step) == training_steps("gs://b", 2, 3)["train_student"]
    assert config_from_json(with_step) == config_from_json(stage_config_json(tiny_config, "train_student"))
    for text in (stage_config_json(tiny_config, "train_teacher"), json.dumps({"step": {"gpus": 1}})):
        with pytest.raises(ConfigError, match=r"no 'step' block of backup_uri and gpus .*training_steps"):
            step_from_json(text)


def _record_components(monkeypatch, gate_passed: bool = True) -> dict[str, dict[str, Any]]:
    """Replace every component's body by a recorder of its keyword arguments (its signature kept:
    the runner binds by it); publish answers with a version and the gate."""
    from mobiletag.runners import inprocess

    component_function = inprocess.component_function
    calls: dict[str, dict[str, Any]] = {}

    def recorder(stage: Stage):
        body = component_function(stage)

        @functools.wraps(body)
        def record(**kwargs):
            calls[stage.name] = kwargs
            if stage.name == "publish":
                return collections.namedtuple("Published", STAGE["publish"].outputs[1:])("v2", "v1", gate_passed)
            return None

        return record

    monkeypatch.setattr(inprocess, "component_function", recorder)
    return calls


def test_inprocess_runner_passes_what_the_pipeline_passes(spec, monkeypatch, sample_dir, tiny_config, tmp_path):
    """Each component gets, by name, what the compiled pipeline gives it in a run on one machine (the
    pipeline parameters of kfp_local.run_local): every input, from where the DAG takes it, and new
    output artifacts; the pipeline's result is the output folder."""
    from mobiletag.data.fingerprint import dataset_fingerprint
    from mobiletag.runners import inprocess
    from mobiletag.stages.resolve_config import stage_config_json, training_steps

    calls = _record_components(monkeypatch)
    work, out, models = tmp_path / "work", tmp_path / "out", str(tmp_path / "models")
    results = inprocess.run_pipeline(tiny_config, sample_dir, out, work_dir=work, output_uri=models)
    assert list(calls) == [s.name for s in STAGES]
    pipeline_parameters = {
        "data_uri": str(sample_dir.resolve()),
        "output_uri": models,
        "backup_uri": str(work / "backup"),
        "baseline_student": True,
        "teacher_gpus": 0,
        "student_gpus": 0,
    }
    steps = training_steps(*(pipeline_parameters[p] for p in ("backup_uri", "teacher_gpus", "student_gpus")))
    resolved = {key: stage_config_json(tiny_config, key, steps) for key in CONFIG_OUTPUTS}
    resolved.update(data_fingerprint=dataset_fingerprint(str(sample_dir.resolve())).digest)
    stage_of = {s.task: s.name for s in STAGES}
    for task_name, task in _tasks(spec).items():
        if task_name == CONFIG_TASK:
            continue
        name = stage_of[task_name]
        definitions = task["component"].get("inputDefinitions", {})
        inputs = {*definitions.get("artifacts", {}), *definitions.get("parameters", {})}
        outputs = set(task["component"].get("outputDefinitions", {}).get("artifacts", {}))
        assert set(calls[name]) == inputs | outputs, name
        for key in inputs:
            kind, *where = task["inputs"][key]
            if kind == "pipeline":
                expected = pipeline_parameters[where[0]]
            elif kind == "constant":
                assert "pipeline_job_uuid" in where[0], (name, key, where)
                expected = f"local-{work.name}"
            elif where[0] == CONFIG_TASK:
                expected = resolved[where[1]]
            else:
                expected = results[stage_of[where[0]]][where[1]]
            assert calls[name][key] == expected, (name, key)
        for key in outputs:
            assert calls[name][key] is results[name][key]
            if (name, key) != inprocess.RESULT:  # where `make bench-quality` finds a run's dataset and teacher
                assert results[name][key].path == str(inprocess.output_path(work, name, key)), (name, key)
    (selector,) = spec["root"]["dag"]["outputs"]["artifacts"]["Output"]["artifactSelectors"]
    assert (stage_of[selector["producerSubtask"]], selector["outputArtifactKey"]) == inprocess.RESULT
    assert results["bundle"]["output"].path == str(out)
    assert results["train_teacher"]["model"].path == str(work / "train_teacher" / "model")


def _record_calls(monkeypatch, tmp_path: Path) -> list[tuple[str, tuple, dict]]:
    """Replace every stage's entry point, the function its component calls, by a recorder; publish
    answers with a version and the passed gate, evaluate and optimize_thresholds with what their
    components read."""
    from mobiletag.stages.common import StageResult

    calls: list[tuple[str, tuple, dict]] = []
    (tmp_path / "report.html").write_text("<html></html>")
    answers = {
        "publish": StageResult(details={"version": "v2", "previous_version": "v1", "gate_passed": True}),
        "optimize_thresholds": StageResult(details={"strategy": "f1", "seconds": 0.0}),
        "evaluate": StageResult(
            files={"report_html": str(tmp_path / "report.html")},
            details={"roc": {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0], "thresholds": [1.0, 0.0]}, "report": "# r"},
        ),
    }

    def recorder(name: str):
        def record(*args, **kwargs):
            calls.append((name, args, kwargs))
            return answers.get(name, StageResult())

        return record

    for stage in STAGES:
        monkeypatch.setattr(importlib.import_module(stage.module), stage.function, recorder(stage.name))
    return calls


def test_inprocess_runner_calls_each_stage_as_its_component_does(monkeypatch, sample_dir, tiny_config, tmp_path):
    """The components' bodies reach each entry point in table order, with the stage's own config
    (from its JSON, as on a cluster), its upstream stages' artifacts and the run id of the
    training backups; publish without promoting, then promote when the gate passed."""
    from mobiletag.runners import inprocess
    from mobiletag.runners.kfp_local import RUN_ID_ENV
    from mobiletag.stages.resolve_config import config_from_json, stage_config_json

    monkeypatch.delenv(RUN_ID_ENV, raising=False)
    calls = _record_calls(monkeypatch, tmp_path)
    work, out, models = tmp_path / "work", tmp_path / "out", str(tmp_path / "models")
    inprocess.run_pipeline(tiny_config, sample_dir, out, work_dir=work, output_uri=models)
    assert RUN_ID_ENV not in os.environ  # set for the run only
    assert [name for name, _, _ in calls] == [s.name for s in STAGES]
    args = {name: a for name, a, _ in calls}
    kwargs = {name: k for name, _, k in calls}
    for stage in STAGES:
        if stage.config_key:
            assert args[stage.name][0] == config_from_json(stage_config_json(tiny_config, stage.name)), stage.name
    assert args["train_student_baseline"][0] == args["train_student"][0]
    assert args["train_teacher"][0] != tiny_config  # the teacher's sections only, the rest defaults

    def at(stage: str, output: str = "model") -> str:
        return str(work / stage / output)

    dataset = at("prepare_dataset", "dataset")
    assert args["prepare_dataset"][1:] == (str(sample_dir.resolve()), dataset)
    assert args["quantize"][1:] == (dataset, at("train_teacher"), at("select_student"), at("quantize"))
    backups = {"backup_uri": str(work / "backup"), "run_id": f"local-{work.name}"}
    assert kwargs["quantize"] == {**backups, "expected_gpus": 0}
    assert kwargs["bundle"] == backups
    assert kwargs["train_student_baseline"] == {**backups, "enabled": True, "expected_gpus": 0}
    assert args["evaluate"][1:6] == (
        dataset,
        at("train_teacher"),
        at("select_student"),
        at("mediapipe_package"),
        at("optimize_thresholds", "thresholds"),
    )
    assert kwargs["evaluate"] == {
        "distilled_dir": at("train_student"),
        "baseline_dir": at("train_student_baseline"),
        "qat_dir": at("quantize"),
    }
    assert args["bundle"][-1] == str(out)
    assert args["publish"][1:] == (str(out), models, f"local-{work.name}") and kwargs["publish"] == {"promote": False}
    assert args["promote"] == (models, "v2", "v1")


@pytest.mark.parametrize(
    ("output_uri", "gate_passed", "last"),
    [(None, True, "bundle"), ("", False, "bundle"), ("m", False, "publish"), ("m", True, "promote")],
)
def test_inprocess_runner_skips_what_the_pipeline_skips(
    spec, monkeypatch, sample_dir, tiny_config, tmp_path, output_uri, gate_passed, last
):
    """The runner runs the stages whose compiled dsl.If conditions hold on the same values."""
    from mobiletag.runners import inprocess

    calls = _record_components(monkeypatch, gate_passed)
    inprocess.run_pipeline(tiny_config, sample_dir, tmp_path / "out", output_uri=output_uri)
    names = [s.name for s in STAGES]
    assert list(calls) == names[: names.index(last) + 1]
    values = {("pipeline", "output_uri"): output_uri or "", ("task", "publish", "gate_passed"): gate_passed}
    compare = {"==": operator.eq, "!=": operator.ne}
    tasks = _tasks(spec)
    compiled = [
        s.name for s in STAGES if all(compare[op](values[src], v) for _, src, op, v in tasks[s.task]["conditions"])
    ]
    assert list(calls) == compiled

"""The stage table: every pipeline stage, in pipeline order, once.

pipeline.py (the KFP DAG), the in-process runner (mobiletag.runners.inprocess), resolve_config
(the per-stage config JSON) and the tests read it. Adding a stage is one row here, its module
``mobiletag.stages.<name>`` with a ``run(...)``, its component in components/, and its task in
pipeline.py (tests/pipeline/test_stage_table.py fails until the three agree).

Importing this module imports neither TensorFlow nor kfp: a stage's module is named here
(``Stage.module``, ``Stage.function``), imported by its component when it runs.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

CONFIG_STAGE = "resolve_config"  # the step that merges the config and hands each stage its JSON

RUN_SECTIONS = ("seed", "reproducible", "multi_gpu", "data")  # what every training stage reads


_OPERATORS: dict[str, Callable[[Any, Any], Any]] = {"==": operator.eq, "!=": operator.ne}


@dataclass(frozen=True)
class When:
    """The condition a stage runs under: ``source`` compared with ``value`` by ``operator``.

    group: the name of the condition's ``dsl.If`` group in the compiled pipeline.
    source: a pipeline parameter, or ``stage.output`` (a parameter output of an earlier stage).
    operator: "==" or "!=".
    """

    group: str
    source: str
    operator: str
    value: str | bool

    def __post_init__(self) -> None:
        if self.operator not in _OPERATORS:
            raise ValueError(f"When({self.group!r}): operator {self.operator!r} is not one of {sorted(_OPERATORS)}")

    def condition(self, outputs: Mapping[str, Mapping[str, Any]], parameters: Mapping[str, Any]) -> Any:
        """``source <operator> value``, the source taken from ``outputs`` (each stage's outputs by name)
        or ``parameters`` (the pipeline's): a bool on values; on KFP channels, a ``dsl.If`` condition."""
        stage, _, output = self.source.partition(".")
        source = outputs[stage][output] if output else parameters[stage]
        return _OPERATORS[self.operator](source, self.value)


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    name: the stage's module under mobiletag.stages and its component; KFP's task name is
        ``task`` (the name with dashes).
    config_sections: the config sections it reads (empty: it takes no config). Its JSON is
        resolve_config's output of the same name, or ``config_of``'s when that is set.
    inputs: (component parameter, upstream) pairs, upstream ``stage`` (that stage's first
        output) or ``stage.output``.
    outputs: the component's outputs (artifacts and parameters), the one other stages read first.
    resources: the class of machine it runs on: "gpu" (the GPU pool, as many GPUs as the run
        asks), "gpu-one" (the GPU pool, one device) or "cpu"; pipeline.py holds the quantities.
    after: stages it waits for without reading their outputs.
    entry_point: the function the component calls, ``module:function``, when it is not ``run`` of
        ``mobiletag.stages.<name>``.
    when: the condition it runs under (None: always, once its upstream stages ran). pipeline.py
        wraps its task in a ``dsl.If`` of it (inside the groups of its upstream stages); the
        in-process runner evaluates it.
    """

    name: str
    config_sections: tuple[str, ...]
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[str, ...]
    resources: str = "cpu"
    after: tuple[str, ...] = ()
    config_of: str = ""
    entry_point: str = ""
    when: When | None = None

    @property
    def task(self) -> str:
        return self.name.replace("_", "-")

    @property
    def module(self) -> str:
        return self.entry_point.partition(":")[0] if self.entry_point else f"mobiletag.stages.{self.name}"

    @property
    def function(self) -> str:
        return self.entry_point.partition(":")[2] if self.entry_point else "run"

    @property
    def config_key(self) -> str | None:
        """The resolve_config output this stage's config_json comes from (None: no config)."""
        if not self.config_sections:
            return None
        return self.config_of or self.name

    @property
    def upstream(self) -> dict[str, tuple[str, str]]:
        """Each input parameter's (stage, output)."""
        out = {}
        for parameter, source in self.inputs:
            stage, _, output = source.partition(".")
            out[parameter] = (stage, output or STAGE[stage].outputs[0])
        return out


_DATASET = ("dataset", "prepare_dataset")

STAGES: tuple[Stage, ...] = (
    # prepare_dataset also gets data.max_stored_side resolved (resolve_config.stage_config_json)
    Stage("prepare_dataset", ("num_classes", "classes", "seed", "data"), (), ("dataset", "metrics")),
    Stage(
        "train_teacher",
        (*RUN_SECTIONS, "teacher"),
        (_DATASET,),
        ("model", "metrics"),
        resources="gpu",
    ),
    Stage(
        "train_student",
        (*RUN_SECTIONS, "teacher", "student"),
        (_DATASET, ("teacher", "train_teacher")),
        ("model", "metrics"),
        resources="gpu",
    ),
    # the same student without the teacher: train_student's config; beside it, after the teacher
    Stage(
        "train_student_baseline",
        (*RUN_SECTIONS, "teacher", "student"),
        (_DATASET,),
        ("model", "metrics"),
        resources="gpu",
        after=("train_teacher",),
        config_of="train_student",
    ),
    # reads student.selection_margin: train_student's config
    Stage(
        "select_student",
        (*RUN_SECTIONS, "teacher", "student"),
        (("distilled", "train_student"), ("baseline", "train_student_baseline")),
        ("model", "metrics"),
        config_of="train_student",
    ),
    Stage(
        "quantize",
        (*RUN_SECTIONS, "teacher", "student", "qat"),
        (_DATASET, ("teacher", "train_teacher"), ("student", "select_student")),
        ("model", "metrics"),
        resources="gpu-one",
    ),
    Stage("export_tflite", ("student", "export"), (_DATASET, ("qat_model", "quantize")), ("model", "metrics")),
    Stage(
        "optimize_thresholds",
        ("thresholds", "export"),  # export.parity_min_agreement: checked at the thresholds it chooses
        (_DATASET, ("tflite_model", "export_tflite")),
        ("thresholds", "metrics"),
    ),
    Stage(
        "mediapipe_package",
        (),
        (_DATASET, ("tflite_model", "export_tflite"), ("thresholds", "optimize_thresholds")),
        ("model", "metrics"),
    ),
    # evaluate reads thresholds.compare_images from optimize_thresholds' JSON
    Stage(
        "evaluate",
        ("thresholds", "export"),
        (
            _DATASET,
            ("teacher", "train_teacher"),
            ("student", "select_student"),
            ("distilled_student", "train_student"),
            ("baseline_student", "train_student_baseline"),
            ("qat_model", "quantize"),
            ("tflite_model", "mediapipe_package"),
            ("thresholds", "optimize_thresholds"),
        ),
        ("evaluation", "metrics", "roc", "report", "report_html"),
        config_of="optimize_thresholds",
    ),
    Stage(
        "bundle",
        (),
        (
            ("teacher", "train_teacher"),
            ("student", "select_student"),
            ("qat_model", "quantize"),
            ("tflite_model", "mediapipe_package"),
            ("thresholds", "optimize_thresholds"),
            ("evaluation", "evaluate"),
        ),
        ("output",),
    ),
    # publish only when an output URI is given; promote only when publish's quality gate passed
    Stage(
        "publish",
        ("gate",),
        (("output", "bundle"),),
        ("metrics", "version", "previous_version", "gate_passed"),
        when=When("publish-requested", "output_uri", "!=", ""),
    ),
    Stage(
        "promote",
        (),
        (("version", "publish.version"), ("previous_version", "publish.previous_version")),
        (),
        entry_point="mobiletag.stages.publish:promote",
        when=When("gate-passed", "publish.gate_passed", "==", True),
    ),
)

STAGE: dict[str, Stage] = {stage.name: stage for stage in STAGES}

# resolve_config's per-stage outputs: one JSON per stage that reads config and not another's
CONFIG_OUTPUTS: tuple[str, ...] = tuple(s.name for s in STAGES if s.config_sections and not s.config_of)

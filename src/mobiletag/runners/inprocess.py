"""Run the stage table in this process: the quickest way to train on one machine.

Each stage runs its component's body (components/<stage>.py, the function KFP's
``@dsl.component`` keeps as ``python_func``) with what the pipeline gives it: kfp artifacts for
its inputs and outputs, its config JSON (resolve_config's) and the pipeline's parameters for one
machine (no GPU required, backups under the work folder). The stage table gives the order and
which upstream output feeds which input. Output ``<output>`` of stage ``<stage>`` is
``<work_dir>/<stage>/<output>``; the pipeline's result, bundle's output folder, is written at
``out_dir`` and appears only when every stage up to bundle succeeded.

Like the kfp.local runner, it needs the source checkout (components/ is not in the installed
package).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobiletag.config import Config
from mobiletag.errors import MobiletagError, PipelineRunError
from mobiletag.progress import report_result
from mobiletag.runners.kfp_local import checkout
from mobiletag.stages import STAGES, Stage
from mobiletag.stages.component_io import RUN_ID_ENV
from mobiletag.stages.resolve_config import stage_config_json, training_steps
from mobiletag.storage import is_gcs

log = logging.getLogger(__name__)

RESULT = ("bundle", "output")  # what pipeline.py's mobiletag_pipeline returns: the output folder

Outputs = dict[str, Any]  # a stage's outputs by name: kfp artifacts and parameter values


class StageFailed(MobiletagError):
    pass


def component_function(stage: Stage) -> Callable[..., Any]:
    """The body of the stage's component, ``components.<name>.<name>``, as KFP's executor calls it."""
    checkout()
    component = getattr(importlib.import_module(f"components.{stage.name}"), stage.name)
    return component.python_func


def output_path(work: Path, stage: str, output: str) -> Path:
    """Where the runner keeps output ``output`` of stage ``stage`` (a work folder's layout)."""
    return work / stage / output


def runs(stage: Stage, parameters: dict[str, Any], results: dict[str, Outputs]) -> bool:
    """Whether the stage runs: every upstream stage ran and its condition (the table's ``when``,
    pipeline.py's dsl.If) holds on the pipeline's parameters or the upstream stage's output."""
    if not all(upstream in results for upstream, _ in stage.upstream.values()):
        return False
    return stage.when is None or bool(stage.when.condition(results, parameters))


def arguments(
    stage: Stage,
    function: Callable[..., Any],
    parameters: dict[str, Any],
    results: dict[str, Outputs],
    work: Path,
    out_dir: Path,
) -> tuple[dict[str, Any], Outputs]:
    """The component's keyword arguments and its output artifacts.

    An input gets the upstream output the stage table names; an output, a new artifact at
    ``work/<stage>/<output>`` (the pipeline's result at ``out_dir``); any other parameter, its
    value in ``parameters``.
    """
    from kfp.dsl.types import type_annotations

    kwargs = {name: results[upstream][output] for name, (upstream, output) in stage.upstream.items()}
    outputs: Outputs = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if type_annotations.is_artifact_wrapped_in_Output(parameter.annotation):
            path = out_dir if (stage.name, name) == RESULT else output_path(work, stage.name, name)
            path.parent.mkdir(parents=True, exist_ok=True)  # the folder above it, as KFP's executor does
            artifact_class = type_annotations.get_io_artifact_class(parameter.annotation)
            outputs[name] = kwargs[name] = artifact_class(name=name, uri=str(path), metadata={})
        elif name not in kwargs:
            if name not in parameters:
                raise PipelineRunError(
                    f"component {stage.name} takes {name!r}, which is neither an input in the stage table "
                    f"(mobiletag.stages.STAGES) nor one of the in-process runner's parameters {sorted(parameters)}: "
                    "add it to the table's inputs or to mobiletag.runners.inprocess.run_pipeline"
                )
            kwargs[name] = parameters[name]
    return kwargs, outputs


def _parameter_outputs(returned: Any) -> Outputs:
    """A component's returned values by output name (KFP's: a NamedTuple's fields, else ``Output``)."""
    if returned is None:
        return {}
    return returned._asdict() if hasattr(returned, "_asdict") else {"Output": returned}


def run_stage(
    stage: Stage, parameters: dict[str, Any], results: dict[str, Outputs], work: Path, out_dir: Path
) -> Outputs:
    """Call the stage's component body with :func:`arguments`; its outputs: the output artifacts (with
    the metadata the body wrote) and its returned values, by output name.

    Raises:
        StageFailed: the body raised a MobiletagError (chained).
    """
    function = component_function(stage)
    kwargs, outputs = arguments(stage, function, parameters, results, work, out_dir)
    try:
        returned = function(**kwargs)
    except MobiletagError as exc:
        raise StageFailed(f"stage {stage.name} failed: {exc}") from exc
    return {**outputs, **_parameter_outputs(returned)}


def run_pipeline(
    config: Config,
    data_dir: str | Path,
    out_dir: str | Path,
    work_dir: str | Path | None = None,
    keep_work: bool = False,
    output_uri: str | None = None,
    baseline_student: bool = True,
) -> dict[str, Outputs]:
    """The stage table's stages in this process, in table order (``baseline_student``: also train
    the student without the teacher and ship the one with the better validation mAP); each stage's
    outputs (artifacts with their metadata, returned values)."""
    from mobiletag.data.fingerprint import dataset_fingerprint

    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="mobiletag-run-"))
    data_uri = str(data_dir) if is_gcs(str(data_dir)) else str(Path(data_dir).resolve())
    run_id = f"local-{work.name}"
    backup_uri = str(work / "backup")
    # the pipeline's values on one machine, by the name of the component parameter that gets them
    parameters: dict[str, Any] = {
        "data_uri": data_uri,
        "data_fingerprint": dataset_fingerprint(data_uri).digest,
        "backup_uri": backup_uri,  # bundle's: it deletes <backup_uri>/<run id>/
        "enabled": baseline_student,
        "output_uri": output_uri or "",
        "run_id": run_id,  # publish's version name
    }
    # the training steps' backups under the work folder; no GPU required: TensorFlow uses the GPUs it sees
    steps = training_steps(backup_uri, teacher_gpus=0, student_gpus=0)
    results: dict[str, Outputs] = {}
    timings: dict[str, float] = {}
    # the training stages' and bundle's backup folder is named by the run id: on a cluster the pod's label
    previous_run_id = os.environ.get(RUN_ID_ENV)
    os.environ[RUN_ID_ENV] = run_id
    try:
        for stage in STAGES:
            if not runs(stage, parameters, results):
                continue
            config_json = {"config_json": stage_config_json(config, stage.name, steps)} if stage.config_key else {}
            log.info("=== stage %s ===", stage.name)
            start = time.perf_counter()
            results[stage.name] = run_stage(stage, {**parameters, **config_json}, results, work, Path(out_dir))
            timings[stage.name] = time.perf_counter() - start
            log.info("=== stage %s done in %.1f s ===", stage.name, timings[stage.name])
    finally:
        if previous_run_id is None:
            os.environ.pop(RUN_ID_ENV, None)
        else:
            os.environ[RUN_ID_ENV] = previous_run_id
        if not keep_work and work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    report_result(log, "stage times: %s", ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    return results

"""What the components in components/ share around a stage's ``run``: the training stages' call
and the bookkeeping of a StageResult on the step's KFP artifacts.

KFP runs a component's function source in its container, so a component reaches shared code
only through the package, imported inside its body. The artifacts are taken by what they offer
(``path``, ``metadata``, ``log_metric``): the package does not import kfp.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from mobiletag.stages.common import StageResult
from mobiletag.stages.resolve_config import config_from_json, step_from_json

# The run's id on a cluster: pipeline.py sets it from the pod's pipeline/runid label (the local runners,
# from their own run id). Backups live under <backup_uri>/<run id>/<task>/.
RUN_ID_ENV = "MOBILETAG_RUN_ID"


def run_id() -> str:
    """This run's id (:data:`RUN_ID_ENV`), "" when it is not set."""
    return os.environ.get(RUN_ID_ENV, "")


class Artifact(Protocol):
    @property
    def path(self) -> str: ...

    metadata: dict[str, Any]


class Metrics(Protocol):
    def log_metric(self, metric: str, value: float) -> None: ...


def record(result: StageResult, artifact: Artifact | None = None, metrics: Metrics | None = None) -> None:
    """The stage's details as ``artifact``'s metadata, and each of its figures as a metric of the KFP UI."""
    if artifact is not None:
        artifact.metadata.update(result.details)
    if metrics is not None:
        for name, value in result.metrics.items():
            metrics.log_metric(name, value)


def run_training(
    run: Callable[..., StageResult],
    config_json: str,
    inputs: Sequence[Artifact],
    model: Artifact,
    metrics: Metrics,
    **options: Any,
) -> StageResult:
    """Run a training stage (``run``: train_teacher, train_student, train_student_baseline or
    quantize) as its component does, and record its result on ``model`` and ``metrics``.

    The stage gets its config from ``config_json``, the folders of ``inputs`` in order, then
    ``model``'s folder; from the JSON's step block (resolve_config's), backups under
    ``<backup_uri>/<run id>/<task>/`` (``backup_uri`` empty: none; run id: :func:`run_id`) and
    the GPUs the step was given (above 0 it fails at once when TensorFlow sees no GPU);
    ``options``, the stage's own keyword arguments.
    """
    step = step_from_json(config_json)
    result = run(
        config_from_json(config_json),
        *(artifact.path for artifact in inputs),
        model.path,
        backup_uri=step.backup_uri or None,
        run_id=run_id(),
        expected_gpus=step.gpus,
        **options,
    )
    record(result, model, metrics)
    return result

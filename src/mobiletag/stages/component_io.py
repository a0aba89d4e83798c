"""What the components in components/ share around a stage's ``run``: the training stages' call
and the bookkeeping of a StageResult on the step's KFP artifacts.

KFP runs a component's function source in its container, so a component reaches shared code
only through the package, imported inside its body. The artifacts are taken by what they offer
(``path``, ``metadata``, ``log_metric``): the package does not import kfp.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from mobiletag.stages.common import StageResult
from mobiletag.stages.resolve_config import config_from_json


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
    *,
    backup_uri: str,
    gpus: int,
    run_id: str,
    **options: Any,
) -> StageResult:
    """Run a training stage (``run``: train_teacher, train_student, train_student_baseline or
    quantize) as its component does, and record its result on ``model`` and ``metrics``.

    The stage gets its config from ``config_json``, the folders of ``inputs`` in order, then
    ``model``'s folder; backups under ``<backup_uri>/<run_id>/<task>/`` (``backup_uri`` empty:
    none); ``gpus``, the GPUs the step was given (above 0 it fails at once when TensorFlow sees
    no GPU); ``options``, the stage's own keyword arguments.
    """
    result = run(
        config_from_json(config_json),
        *(artifact.path for artifact in inputs),
        model.path,
        backup_uri=backup_uri or None,
        run_id=run_id,
        expected_gpus=gpus,
        **options,
    )
    record(result, model, metrics)
    return result

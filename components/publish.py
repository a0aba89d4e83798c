from typing import NamedTuple

from kfp import dsl

from components.base import component


@component()
def publish(
    output: dsl.Input[dsl.Artifact],
    output_uri: str,
    run_id: str,
    config_json: str,
    metrics: dsl.Output[dsl.Metrics],
) -> NamedTuple("Published", [("version", str), ("previous_version", str), ("gate_passed", bool)]):
    """Uploads the output folder to <output_uri>/<UTC time>-<run id>/ and applies the quality gate.

    Args:
        output: The output folder from bundle.
        output_uri: Where models are published (gs:// prefix or local folder).
        run_id: The pipeline run's id (names the version).
        config_json: The gate section of the config (from resolve_config).
        metrics: promoted (1 when the gate passed and the next step moves LATEST, else 0).

    Returns:
        The version written, the version LATEST pointed to, and whether the gate passed.
    """
    from collections import namedtuple

    from mobiletag.stages import publish as stage
    from mobiletag.stages.component_io import record
    from mobiletag.stages.resolve_config import config_from_json

    result = stage.run(config_from_json(config_json), output.path, output_uri, run_id, promote=False)
    record(result, metrics=metrics)
    published = namedtuple("Published", ["version", "previous_version", "gate_passed"])
    return published(result.details["version"], result.details["previous_version"], result.details["gate_passed"])

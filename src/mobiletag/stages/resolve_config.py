"""Stage: merge the default config, the dataset's config.yaml and the run's overrides, check
them, and give each stage only the JSON of the sections it reads (so KFP's cache re-runs
only what a change touches)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from mobiletag.artifacts import SourceDataset
from mobiletag.config import Config, load_config, load_config_text, read_yaml_mapping
from mobiletag.data.fingerprint import dataset_fingerprint
from mobiletag.errors import ConfigError
from mobiletag.stages import CONFIG_OUTPUTS, STAGE
from mobiletag.storage import is_gcs, join, read_text_if_exists

# What each stage reads (the stage table's config_sections), one JSON per resolve_config output.
# prepare_dataset gets the stored image side resolved, not the model sections it is derived from,
# so changing an epoch count does not rebuild the TFRecords.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {name: STAGE[name].config_sections for name in CONFIG_OUTPUTS}

# A training step's config JSON also holds, under this key, what the run gives the step besides the
# config: {"backup_uri": prefix for its backups ("" none), "gpus": GPUs it was given}.
STEP = "step"


@dataclass(frozen=True)
class Step:
    """What a training step gets from the run: ``backup_uri`` ("" none) and the ``gpus`` it was given
    (above 0 the step fails at once when TensorFlow sees no GPU)."""

    backup_uri: str
    gpus: int


def training_steps(backup_uri: str, teacher_gpus: int, student_gpus: int) -> dict[str, Step]:
    """The :class:`Step` of each training config output: the teacher's GPUs, the student's (the baseline
    student reads train_student's JSON), one for QAT (see :func:`gpu_limits`); backups under ``backup_uri``."""
    gpus = gpu_limits(teacher_gpus, student_gpus)
    counts = {"train_teacher": teacher_gpus, "train_student": student_gpus, "quantize": gpus["qat_gpus"]}
    return {stage: Step(backup_uri, count) for stage, count in counts.items()}


def stage_config_json(config: Config, stage: str, steps: Mapping[str, Step] | None = None) -> str:
    """The JSON config that ``stage`` gets: its sections (a stage that reads another's config, its),
    and its :class:`Step` under :data:`STEP` when ``steps`` (by config output) has one."""
    stage = STAGE[stage].config_key or stage
    data = json.loads(config.section_json(*STAGE_SECTIONS[stage]))
    if stage == "prepare_dataset":
        data["data"]["max_stored_side"] = config.stored_image_side
    if steps and stage in steps:
        data[STEP] = asdict(steps[stage])
    return json.dumps(data, sort_keys=True)


def _parse(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"stage config is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"stage config is JSON {type(data).__name__}, not an object of config sections")
    return data


def config_from_json(text: str) -> Config:
    """A stage's Config from its JSON (sections it does not read keep their defaults; its step apart)."""
    data = _parse(text)
    data.pop(STEP, None)
    return load_config(data)


def step_from_json(text: str) -> Step:
    """The :class:`Step` in a training step's config JSON."""
    step = _parse(text).get(STEP)
    if not isinstance(step, dict) or set(step) != {f.name for f in fields(Step)}:
        raise ConfigError(
            f"the training step's config JSON has no {STEP!r} block of backup_uri and gpus (it has {step!r}): "
            "give the step the JSON resolve_config writes for it (mobiletag.stages.resolve_config.stage_config_json "
            "with training_steps)"
        )
    return Step(**step)


def dataset_config_source(data_uri: str) -> str | dict[str, Any] | None:
    """The dataset's config.yaml (a local file path, or the parsed gs:// object), if it has one."""
    location = join(data_uri, SourceDataset.CONFIG)
    if not is_gcs(location):
        return location if Path(location).is_file() else None
    text = read_text_if_exists(location)
    return load_config_text(text, location) if text is not None else None


def run(
    data_uri: str,
    config_overrides: str = "",
    defaults_file: str | None = None,
    steps: Mapping[str, Step] | None = None,
) -> dict[str, str]:
    """Each stage's JSON config (``steps``: the training steps', see :func:`training_steps`), the
    merged config as YAML (``full``) and the dataset's fingerprint.

    ``data_fingerprint`` changes exactly when a file under ``images/``, a CSV or ``config.yaml``
    changes (see mobiletag.data.fingerprint); it is an input of prepare_dataset, so KFP's cache
    rebuilds the TFRecords, and retrains, when new data arrive under the same ``data_uri``.
    """
    sources: list[Any] = [defaults_file]
    sources.append(dataset_config_source(data_uri))
    sources.append(load_config_text(config_overrides) if config_overrides.strip() else None)
    if defaults_file is not None:
        read_yaml_mapping(Path(defaults_file))  # fail early with the file name
    config = load_config(*sources)
    out = {stage: stage_config_json(config, stage, steps) for stage in STAGE_SECTIONS}
    out["full"] = config.to_yaml()
    out["data_fingerprint"] = dataset_fingerprint(data_uri).digest
    return out


def gpu_node_selector(node_pool: str, accelerator: str) -> dict[str, str]:
    """The nodeSelector of the GPU training steps (GKE labels); empty values are left out."""
    selector = {}
    if node_pool.strip():
        selector["cloud.google.com/gke-nodepool"] = node_pool.strip()
    if accelerator.strip():
        selector["cloud.google.com/gke-accelerator"] = accelerator.strip()
    return selector


def gpu_limits(teacher_gpus: int, student_gpus: int) -> dict[str, Any]:
    """The GPU counts of the three GPU steps, checked, and their accelerator limits as text.

    The KFP driver reads the value behind a resource placeholder with ``GetStringValue()``
    (backend/src/v2/driver, 2.4.0 to 2.17): an integer pipeline parameter would resolve to ''
    and the pod would get no GPU at all, so the limits are passed as strings. QAT runs on one
    device (tfmot does not support tf.distribute): one GPU when the student trains on GPUs, none
    when it trains on the CPU (kfp.local on a machine without a GPU).
    """
    for name, value in (("teacher_gpus", teacher_gpus), ("student_gpus", student_gpus)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(
                f"pipeline parameter {name}={value!r} is not a number of GPUs; give a whole number >= 0 "
                "(0 trains on the CPU)"
            )
    qat_gpus = 1 if student_gpus > 0 else 0
    return {
        "teacher_gpu_limit": str(teacher_gpus),
        "student_gpu_limit": str(student_gpus),
        "qat_gpus": qat_gpus,
        "qat_gpu_limit": str(qat_gpus),
    }

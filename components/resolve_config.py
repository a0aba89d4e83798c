from typing import NamedTuple

from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def resolve_config(
    data_uri: str,
    config_overrides: str,
    gpu_node_pool: str,
    gpu_accelerator: str,
    config: dsl.Output[dsl.Artifact],
) -> NamedTuple(
    "StageConfigs",
    [
        ("prepare_dataset", str),
        ("train_teacher", str),
        ("train_student", str),
        ("quantize", str),
        ("export_tflite", str),
        ("optimize_thresholds", str),
        ("publish", str),
        ("gpu_node_selector", dict),
    ],
):
    """Merges the default config, the dataset's config.yaml and the run's overrides.

    Args:
        data_uri: Dataset folder (local path or gs:// URI) whose config.yaml is read if present.
        config_overrides: YAML text of config overrides for this run (may be empty).
        gpu_node_pool: GKE node pool for the training steps (empty: no node-pool selector).
        gpu_accelerator: GKE accelerator label of that pool (empty: no accelerator selector).
        config: The merged configuration as YAML, for the record.

    Returns:
        The JSON config of each stage (only the sections it reads) and the GPU node selector.
    """
    from mobiletag.stages import resolve_config as stage

    result = stage.run(data_uri, config_overrides)
    with open(config.path, "w", encoding="utf-8") as fh:
        fh.write(result["full"])
    from collections import namedtuple

    stages = [
        "prepare_dataset",
        "train_teacher",
        "train_student",
        "quantize",
        "export_tflite",
        "optimize_thresholds",
        "publish",
    ]
    outputs = namedtuple("StageConfigs", [*stages, "gpu_node_selector"])
    return outputs(*[result[s] for s in stages], stage.gpu_node_selector(gpu_node_pool, gpu_accelerator))

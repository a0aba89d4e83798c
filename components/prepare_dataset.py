from kfp import dsl

from components.base import component


@component()
def prepare_dataset(
    data_uri: str,
    data_fingerprint: str,
    config_json: str,
    dataset: dsl.Output[dsl.Dataset],
    metrics: dsl.Output[dsl.Metrics],
):
    """Validates the dataset and writes its TFRecord shards, labels.txt and stats.json.

    Args:
        data_uri: Dataset folder (local path or gs:// URI): images/, train/val/test_labels.csv.
        data_fingerprint: The dataset's fingerprint (from resolve_config): new files under data_uri miss the cache.
        dataset: TFRecord shards per split, labels.txt, stats.json.
        metrics: Images per split and number of classes.
    """
    from mobiletag.stages import prepare_dataset as stage
    from mobiletag.stages.component_io import record
    from mobiletag.stages.resolve_config import config_from_json

    result = stage.run(config_from_json(config_json), data_uri, dataset.path, data_fingerprint=data_fingerprint)
    record(result, dataset, metrics)

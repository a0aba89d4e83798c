"""Precision policy: choose and set it, and turn mixed-precision models into float32 ones.

Under a mixed policy (``mixed_bfloat16`` / ``mixed_float16``) layers compute in 16 bits and keep
float32 variables. Two kinds of layers always stay float32: the input normalisation
(``Rescaling`` / ``Normalization``, where 16-bit rounding of [0, 255] pixels and of the
ImageNet statistics would cost accuracy for no speed) and the ``logits`` layer (the losses and
the sigmoid read float32 outputs).

A model saved under a mixed policy carries it: each layer's dtype policy is in its config, so
``load_model`` gives back a mixed model whatever the global policy. QAT (tfmot does not quantize
mixed-precision layers), TFLite export and the CPU evaluation need float32:
:func:`load_float32` / :func:`float32_copy` rebuild the model from its config with float32
layers and copy the weights in (the variables of a mixed model are float32 already, so nothing
is lost).
"""

from __future__ import annotations

import logging
from pathlib import Path

import tensorflow as tf
import tf_keras as keras

from mobiletag.errors import ConfigError

log = logging.getLogger(__name__)

MODES = ("auto", "float32", "bfloat16", "float16")
# mode -> Keras policy name ('auto' is decided by the GPUs present)
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# Layers that stay float32 under any policy: the input normalisation (by kind) and the output.
FLOAT32_KINDS = ("InputLayer", "Rescaling", "Normalization")
FLOAT32_NAMES = ("logits",)
# bfloat16 needs Ampere (compute capability 8.0) or newer to be fast; older GPUs get float16
BFLOAT16_CAPABILITY = (8, 0)


def _gpu_capabilities() -> list[tuple[int, int]]:
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capabilities.append(tuple(details.get("compute_capability") or (0, 0)))
    return capabilities


def choose_policy(mode: str) -> str:
    """The Keras policy name for a ``multi_gpu.mixed_precision`` mode.

    Args:
        mode: ``auto`` (``mixed_bfloat16`` when every visible GPU has compute capability >= 8.0,
            ``mixed_float16`` on older GPUs, ``float32`` without a GPU), or ``float32``,
            ``bfloat16``, ``float16``, which force ``float32``, ``mixed_bfloat16``,
            ``mixed_float16`` on any device, the CPU included.

    Returns:
        ``float32``, ``mixed_bfloat16`` or ``mixed_float16``.

    Raises:
        ConfigError: for any other mode.
    """
    text = str(mode).strip().lower()
    if text in POLICIES:
        return POLICIES[text]
    if text != "auto":
        raise ConfigError(f"config key 'multi_gpu.mixed_precision' is {mode!r}; choose one of {', '.join(MODES)}")
    capabilities = _gpu_capabilities()
    if not capabilities:
        return "float32"
    lowest = min(capabilities)
    policy = "mixed_bfloat16" if lowest >= BFLOAT16_CAPABILITY else "mixed_float16"
    log.info("precision auto: %d GPU(s), lowest compute capability %d.%d -> %s", len(capabilities), *lowest, policy)
    return policy


def set_precision(mode: str) -> str:
    """Set the global Keras policy for ``mode`` (see :func:`choose_policy`); returns its name."""
    policy = choose_policy(mode)
    keras.mixed_precision.set_global_policy(policy)
    log.info("precision policy %s (multi_gpu.mixed_precision: %s)", policy, mode)
    return policy


def keeps_float32(layer_config: dict) -> bool:
    """Whether a layer (an entry of a model config's ``layers``) stays float32 under any policy."""
    name = layer_config.get("config", {}).get("name", layer_config.get("name"))
    return layer_config.get("class_name") in FLOAT32_KINDS or name in FLOAT32_NAMES


def layer_policies(model: keras.Model) -> dict[str, str]:
    """Layer name -> its dtype policy name (what a test or a log wants to see)."""
    return {layer.name: layer.dtype_policy.name for layer in model.layers}


def cast_model(model: keras.Model, policy: str) -> keras.Model:
    """A copy of a functional or Sequential model whose layers use ``policy``, with the same weights.

    The input normalisation layers and ``logits`` stay float32 (see the module docstring).
    The model is rebuilt from its config, so it needs no custom objects beyond what
    ``from_config`` of the original needs; trainable flags and names are kept.

    Args:
        model: a functional or Sequential tf_keras model (e.g. the teacher or the student).
        policy: a Keras policy name: ``float32``, ``mixed_bfloat16``, ``mixed_float16``.

    Returns:
        The new model; the original is unchanged.
    """
    name = keras.mixed_precision.Policy(policy).name  # raises on an unknown name
    config = model.get_config()
    for layer in config["layers"]:
        if "dtype" not in layer.get("config", {}) or layer.get("class_name") == "InputLayer":
            continue
        layer["config"]["dtype"] = "float32" if keeps_float32(layer) else name
    cls = keras.Sequential if isinstance(model, keras.Sequential) else keras.Model
    rebuilt = cls.from_config(config)
    for layer in model.layers:
        if layer.weights:
            # set_weights casts each array to the variable's dtype, and re-finalises Normalization
            rebuilt.get_layer(layer.name).set_weights(layer.get_weights())
    return rebuilt


def float32_copy(model: keras.Model) -> keras.Model:
    """A float32 copy of ``model`` (every layer float32, the same weights)."""
    return cast_model(model, "float32")


def is_float32(model: keras.Model) -> bool:
    """Whether every layer of ``model`` computes and stores in float32."""
    return all(layer.dtype_policy.name == "float32" for layer in model.layers)


def load_float32(path: str | Path) -> keras.Model:
    """Load a model file (``.h5``, uncompiled) as a float32 model, whatever policy it was saved under.

    A checkpoint saved under ``mixed_bfloat16`` or ``mixed_float16`` keeps that policy in each
    layer's config; it is rebuilt here with float32 layers and the same weights.
    """
    model = keras.models.load_model(str(path), compile=False)
    if is_float32(model):
        return model
    mixed = sorted({p for p in layer_policies(model).values() if p != "float32"})
    log.info("%s was saved under %s; loading it as float32", path, ", ".join(mixed))
    return float32_copy(model)

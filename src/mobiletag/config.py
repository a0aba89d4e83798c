"""Configuration: frozen dataclasses whose defaults are the production settings.

YAML files only hold overrides. They are applied in order (``configs/default.yaml``, the
dataset's ``config.yaml``, then a user's file); every key is checked against the dataclasses,
and an unknown key, a wrong type or an out-of-range value is a :class:`ConfigError` naming
the key, the file it came from and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from mobiletag.errors import ConfigError

WEIGHTS_HELP = "'imagenet', 'none', a local file path or a gs:// URI"


def _f(default: Any, help: str, **rules: Any) -> Any:
    """A dataclass field with its documentation and validation rules (min, max).

    A list default becomes a factory (a fresh copy per instance)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **rules})
    return field(default=default, metadata={"help": help, **rules})


PRECISION_MODES = ("auto", "float32", "bfloat16", "float16")
HardLoss = Literal["bce", "asymmetric", "weighted_bce"]  # training/losses.py

# keys that were renamed: an old key is refused with a message naming its new one
RENAMED_KEYS = {
    "teacher.warmup_epochs": "teacher.head_epochs",
    "teacher.warmup_learning_rate": "teacher.head_learning_rate",
    "student.warmup_epochs": "student.head_epochs",
    "student.warmup_learning_rate": "student.head_learning_rate",
}


@dataclass(frozen=True)
class MultiGpuConfig:
    enabled: bool = _f(True, "train with MirroredStrategy when more than one GPU is visible")
    mixed_precision: Literal["auto", "float32", "bfloat16", "float16"] = _f(
        "auto",
        "precision policy of the teacher and student steps: auto = mixed_bfloat16 on GPUs of compute capability "
        ">= 8.0 (A100, L4, H100), mixed_float16 on older GPUs, float32 without a GPU; bfloat16 / float16 force "
        "mixed_bfloat16 / mixed_float16 on any device (CPU included); float32 turns mixed precision off. "
        "Input normalisation and outputs stay float32, and every checkpoint handed on is float32",
    )
    jit_compile: bool | Literal["auto"] = _f(
        "auto", "XLA-compile the training step: auto = on GPU only (XLA on CPU is much slower)"
    )
    steps_per_execution: int = _f(
        8, "training steps run per call into the graph (fewer host round trips; callbacks see epochs only)", min=1
    )
    require_gpu: bool = _f(
        False,
        "stop with an error when TensorFlow sees no GPU (the pipeline's GPU steps check this by themselves)",
    )


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = _f(
        True,
        "random horizontal flip; turn it off when a mirror image changes a label "
        "(text, digits, signs, left/right classes)",
    )
    random_resized_crop: bool = _f(True, "random crop of area crop_area_min..1, then resize")
    crop_area_min: float = _f(
        0.85,
        "smallest crop, as a share of the image area. Multi-label: a crop that cuts a labelled object "
        "out keeps its label (label noise); 0.85 keeps an object 8% from two edges whole in 85% of crops, "
        "0.5 (ImageNet-style) in 27%",
        min=0.05,
        max=1.0,
    )
    crop_aspect_ratio_max: float = _f(
        4 / 3, "crops are at most this much wider or taller than the image's own shape", min=1.0
    )
    color_jitter: bool = _f(True, "random brightness, contrast and saturation")
    brightness: float = _f(0.2, "max brightness change, as a share of 255", min=0.0, max=1.0)
    contrast: float = _f(0.2, "max relative contrast change", min=0.0, max=1.0)
    saturation: float = _f(0.2, "max relative saturation change", min=0.0, max=1.0)
    resize_methods: list[Literal["bilinear", "mediapipe", "nearest", "bilinear_antialias", "area"]] = _f(
        ["bilinear"],
        "how a training image is resized from its random crop to the training size (in the input pipeline) "
        "and to each smaller view (in the step), drawn per example with equal odds (a method listed twice is "
        "drawn twice as often), so the model does not depend on how an app resizes: bilinear = TensorFlow's "
        "(half-pixel centres, no antialiasing); mediapipe = top-left aligned bilinear without antialiasing, as "
        "MediaPipe Tasks (and OpenCV's warp) resize; nearest = nearest neighbour (the aliasing of a large "
        "un-antialiased downscale); bilinear_antialias = bilinear with antialiasing (as PIL); area = box "
        "average. In the step, bilinear_antialias and area run as matrix products (XLA has no kernel for "
        "them) and cost more on CPU. Default bilinear alone: [bilinear, mediapipe, nearest] cost 4.3 points of "
        "test mAP through the app's input path on 2-6 MP photos (docs/recipe.md)",
    )


@dataclass(frozen=True)
class DataConfig:
    max_stored_side: int | None = _f(
        None,
        "longest side of images stored in the TFRecords; null = 15% above the largest training resolution",
        min=16,
    )
    jpeg_quality: int = _f(95, "JPEG quality of the stored images", min=50, max=100)
    images_per_shard: int = _f(1024, "images per TFRecord shard (about 30-60 MB at the default sizes)", min=1)
    shuffle_buffer: int = _f(2048, "records in the training shuffle buffer", min=1)
    cache_train: bool = _f(False, "cache the training records (encoded JPEGs) in memory (small datasets only)")
    cache_eval: bool = _f(
        True, "cache the validation/test records (encoded JPEGs) in memory; images are decoded and resized each pass"
    )
    max_errors: int = _f(50, "stop listing dataset problems after this many", min=1)
    workers: int = _f(0, "threads that decode images while validating; 0 = one per core", min=0)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# help of the keys TeacherConfig and StudentConfig both declare (with their own defaults)
PATIENCE_HELP = (
    "epochs without validation mAP gain before stopping, counted once the cosine rate has decayed to half "
    "its peak (never a stop at a high rate); 0 = off"
)
BN_MOMENTUM_HELP = "BatchNormalization moving-average momentum; 0.9 for short runs from scratch"


@dataclass(frozen=True)
class OptimizationConfig:
    """The optimisation recipe keys the teacher and student sections share (docs/recipe.md)."""

    optimizer: Literal["adam", "adamw"] = _f(
        "adam",
        "adam, or adamw: weight decay apart from the gradient (Loshchilov & Hutter, 2019); biases and "
        "BatchNormalization weights are not decayed",
    )
    weight_decay: float = _f(
        0.0, "adamw: decay per step, times the learning rate (as torch.optim.AdamW); e.g. 0.05", min=0.0
    )
    ema_half_life_epochs: float = _f(
        0.0,
        "a moving average of the weights (EMA) is validated, checkpointed and shipped instead of the last "
        "step's: its half-life in epochs (the decay per step follows from the steps per epoch); not in head "
        "phases; 0 = off",
        min=0.0,
    )
    loss: HardLoss = _f(
        "bce",
        "hard-label loss: bce, asymmetric (Ridnik et al., 2021: easy negatives down-weighted; smaller than bce, "
        "so alpha's balance with the distillation term shifts), or weighted_bce (each class's positives weighted by "
        "sqrt(negatives / positives) of the training split: rare classes count more)",
    )


@dataclass(frozen=True)
class TeacherConfig(OptimizationConfig):
    architecture: Literal["efficientnet_b3"] = _f("efficientnet_b3", "teacher backbone")
    image_size: int = _f(300, "input resolution (pixels, square)", min=32)
    batch_size: int = _f(64, "global batch size, split across replicas", min=1)
    weights: str = _f("imagenet", f"backbone weights: {WEIGHTS_HELP}")
    dropout: float = _f(0.3, "dropout before the classification head", min=0.0, max=0.9)
    head_epochs: int = _f(3, "head phase: epochs training the head with the backbone frozen", min=0)
    head_learning_rate: float = _f(1.0e-3, "head phase learning rate", min=0.0)
    fine_tune_epochs: int = _f(12, "fine-tuning phase: epochs fine-tuning the top of the backbone", min=0)
    fine_tune_learning_rate: float = _f(1.0e-4, "fine-tuning peak learning rate (cosine decay)", min=0.0)
    fine_tune_fraction: float = _f(0.3, "share of backbone layers unfrozen in the fine-tuning", min=0.0, max=1.0)
    reference_batch_size: int = _f(
        64,
        "the batch size the learning rates above are set for: the rates used are scaled by "
        "batch_size / reference_batch_size (linear scaling rule)",
        min=1,
    )
    lr_warmup_epochs: float = _f(
        1.0, "linear learning-rate warmup from 0 at the start of each phase, in epochs", min=0.0
    )
    early_stopping_patience: int = _f(4, PATIENCE_HELP, min=0)
    batch_norm_momentum: float = _f(0.99, BN_MOMENTUM_HELP, min=0.0, max=1.0)


@dataclass(frozen=True)
class StudentConfig(OptimizationConfig):
    architecture: Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"] = _f(
        "efficientnet_lite1", "student backbone"
    )
    image_size: int = _f(240, "input resolution (pixels, square)", min=32)
    batch_size: int = _f(128, "global batch size, split across replicas", min=1)
    weights: str = _f(
        "imagenet",
        "backbone weights: 'imagenet' (the official EfficientNet-Lite weights, converted into "
        "$MOBILETAG_CACHE_DIR on first use), 'none', or a file from `mobiletag weights import` (path or gs:// URI)",
    )
    dropout: float = _f(0.2, "dropout before the classification head", min=0.0, max=0.9)
    head_epochs: int = _f(
        2,
        "head phase: epochs training only the classification head on the frozen pretrained "
        "backbone before the full fine-tuning (skipped with weights: none)",
        min=0,
    )
    head_learning_rate: float = _f(1.0e-3, "head phase learning rate (constant; scaled like learning_rate)", min=0.0)
    epochs: int = _f(20, "full fine-tuning (distillation) epochs, after the head phase", min=0)
    learning_rate: float = _f(1.0e-3, "peak learning rate of the full fine-tuning (cosine decay)", min=0.0)
    reference_batch_size: int = _f(
        128,
        "the batch size learning_rate is set for: the rate used is learning_rate * batch_size / "
        "reference_batch_size (linear scaling rule)",
        min=1,
    )
    lr_warmup_epochs: float = _f(1.0, "linear learning-rate warmup from 0, in epochs", min=0.0)
    alpha: float = _f(0.7, "weight of the hard-label loss; 1 - alpha goes to the distillation term", min=0.0, max=1.0)
    temperature: float = _f(2.0, "distillation temperature T (soft term is scaled by T^2)", min=0.01)
    early_stopping_patience: int = _f(5, PATIENCE_HELP, min=0)
    batch_norm_momentum: float = _f(0.99, BN_MOMENTUM_HELP, min=0.0, max=1.0)
    freeze_batch_norm: bool = _f(
        False,
        "fine-tuning keeps BatchNormalization in inference mode (pretrained statistics, scale and offset "
        "untouched), as the teacher's fine-tuning does; ignored with weights: none",
    )
    selection_margin: float = _f(
        0.0,
        "select-student: the baseline (no teacher) ships only when its validation macro mAP exceeds the "
        "distilled student's by more than this; e.g. the seed-to-seed spread of your recipe",
        min=0.0,
        max=1.0,
    )


@dataclass(frozen=True)
class QatConfig:
    epochs: int = _f(3, "quantization-aware fine-tuning epochs", min=0)
    learning_rate: float = _f(1.0e-5, "QAT learning rate", min=0.0)
    batch_size: int = _f(64, "QAT batch size (QAT runs on one device)", min=1)
    reference_batch_size: int = _f(
        64, "the batch size learning_rate is set for (scaled by batch_size / reference_batch_size)", min=1
    )
    distill: bool = _f(True, "keep distilling from the teacher during QAT")


@dataclass(frozen=True)
class ThresholdsConfig:
    strategy: Literal["f1", "precision", "global"] = _f(
        "f1",
        "f1: best F1 per class; precision: highest recall with precision >= min_precision; "
        "global: one threshold for all classes (best micro F1)",
    )
    grid_min: float = _f(0.02, "lowest threshold tried", min=0.0, max=1.0)
    grid_max: float = _f(0.98, "highest threshold tried", min=0.0, max=1.0)
    grid_step: float = _f(0.01, "grid step", min=0.001, max=0.5)
    min_precision: float = _f(0.9, "with strategy 'precision': the precision each class must reach", min=0.0, max=1.0)
    fallback: float = _f(0.5, "threshold of a class with no validation positives", min=0.0, max=1.0)
    compare_images: int = _f(
        2000,
        "evaluate: test images the float teacher and students are scored on, and validation images the students' "
        "own thresholds are tuned on; a split with more gets a seeded sample of this many (0 = every image). "
        "The INT8 model is scored on every test image",
        min=0,
    )


@dataclass(frozen=True)
class ExportConfig:
    representative_samples: int = _f(256, "training images used to calibrate the INT8 converter", min=1)
    input_dtype: Literal["uint8", "int8", "float32"] = _f("uint8", "TFLite input type")
    output_dtype: Literal["uint8", "int8", "float32"] = _f("uint8", "TFLite output type")
    parity_max_mean_abs_diff: float = _f(
        0.015,
        "export check: mean |p_tflite - p_qat| allowed on 64 validation images (demo runs: 0.0017-0.0100, "
        "median 0.0038; 4x the median trips it)",
        min=0.0,
        max=1.0,
    )
    parity_min_agreement: float = _f(
        0.95,
        "optimize_thresholds check: share of (image, class) decisions at the shipped thresholds on which the "
        "exported model agrees with the QAT model, on export's parity images",
        min=0.0,
        max=1.0,
    )


@dataclass(frozen=True)
class GateConfig:
    min_f1_micro: float = _f(0.0, "publish: lowest test micro F1 a model needs to be promoted", min=0.0, max=1.0)
    min_map_macro: float = _f(0.0, "publish: lowest test macro mAP a model needs to be promoted", min=0.0, max=1.0)
    require_improvement: bool = _f(False, "publish: promote only a model that beats the one LATEST points to")
    metric: Literal["map_macro", "map_micro", "f1_micro", "f1_macro"] = _f(
        "map_macro", "publish: the test figure compared with the published model"
    )
    min_improvement: float = _f(
        0.0,
        "publish, with require_improvement: the new model's test figure (gate.metric) must exceed the published "
        "one's by at least this much (0.02 = 2 points of mAP); set it above the run-to-run spread of test mAP "
        "(README) so that noise neither promotes nor refuses a model",
        min=0.0,
        max=1.0,
    )
    require_distillation_gain: bool = _f(
        False,
        "publish: promote only a model whose distilled student beat the student trained without the teacher "
        "(metrics.json 'distillation' block, shipped: distilled); needs a run with the baseline student",
    )


@dataclass(frozen=True)
class Config:
    num_classes: int | None = _f(
        None, "number of classes; null = inferred from train (an error when it differs)", min=1
    )
    classes: list[str] | None = _f(None, "explicit class names in output order; null = sorted train labels")
    seed: int = _f(42, "seed for shuffling, augmentation and initialisation", min=0)
    reproducible: bool = _f(
        True,
        "deterministic training for a given seed: input order fixed (tf.data deterministic), TensorFlow op "
        "determinism on (tf.config.experimental.enable_op_determinism, also cuDNN / XLA on GPU), the seed set "
        "in every stage; the same data, seed, machine and software give the same weights and metrics",
    )
    multi_gpu: MultiGpuConfig = field(default_factory=MultiGpuConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    thresholds: ThresholdsConfig = field(default_factory=ThresholdsConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    gate: GateConfig = field(default_factory=GateConfig)

    # --- derived values -------------------------------------------------------------

    @property
    def stored_image_side(self) -> int:
        """Longest side of images in the TFRecords: a little above the largest resolution."""
        if self.data.max_stored_side is not None:
            return self.data.max_stored_side
        return int(round(max(self.teacher.image_size, self.student.image_size) * 1.15))

    # --- serialisation --------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def section_json(self, *sections: str) -> str:
        """JSON of the named top-level keys only: a stage's cache key changes with what it reads."""
        full = self.to_dict()
        unknown = [s for s in sections if s not in full]
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}; sections are {sorted(full)}")
        return json.dumps({s: full[s] for s in sections}, sort_keys=True)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


# ======================================================================================
# Loading
# ======================================================================================


def load_config(*sources: str | Path | dict[str, Any] | None) -> Config:
    """Build a Config from override sources applied in order (later wins).

    Each source is a YAML file path, a dict (named ``<overrides>`` in errors) or None (skipped).
    """
    merged: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for source in sources:
        if source is None:
            continue
        if isinstance(source, dict):
            data, name = source, "<overrides>"
        else:
            data, name = read_yaml_mapping(Path(source)), str(source)
        _check_keys_and_types(Config, data, (), name)
        _merge(merged, data, (), name, origin)
    config = _build(Config, merged, (), origin)
    object.__setattr__(config, "_sources", {_key(k): v for k, v in origin.items()})
    return config


def source_of(config: Config, key: str) -> str:
    """The file that set a config key (for error messages), or 'the default config'."""
    sources: dict[str, str] = getattr(config, "_sources", {})
    return sources.get(key, "the default config")


def load_config_text(text: str, name: str = "<config_overrides>") -> dict[str, Any]:
    """Parse YAML override text (for example a pipeline parameter) into a checked mapping."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: must be a YAML mapping of config keys, got {type(data).__name__}")
    _check_keys_and_types(Config, data, (), name)
    return data


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a YAML mapping of config keys, got {type(data).__name__}")
    return data


def _merge(
    into: dict[str, Any],
    data: dict[str, Any],
    prefix: tuple[str, ...],
    name: str,
    origin: dict[tuple[str, ...], str],
) -> None:
    for key, value in data.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, path, name, origin)
        else:
            into[key] = copy.deepcopy(value)
            _mark(origin, path, value, name)


def _mark(origin: dict[tuple[str, ...], str], path: tuple[str, ...], value: Any, name: str) -> None:
    origin[path] = name
    if isinstance(value, dict):
        for key, sub in value.items():
            _mark(origin, (*path, key), sub, name)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _key(path: tuple[str, ...]) -> str:
    return ".".join(path)


def _check_keys_and_types(cls: type, data: dict[str, Any], prefix: tuple[str, ...], name: str) -> None:
    hints = _hints(cls)
    for key, value in data.items():
        path = (*prefix, str(key))
        if key not in hints and _key(path) in RENAMED_KEYS:
            raise ConfigError(
                f"{name}: config key '{_key(path)}' is now '{RENAMED_KEYS[_key(path)]}' (the head-only phase; "
                f"'lr_warmup_epochs' is the learning-rate ramp); rename it"
            )
        if key not in hints:
            close = difflib.get_close_matches(str(key), list(hints), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            where = f"section '{_key(prefix)}'" if prefix else "the top level"
            raise ConfigError(
                f"{name}: unknown config key '{_key(path)}'{hint}; keys allowed in {where}: {', '.join(hints)}"
            )
        tp = hints[key]
        if _is_dataclass_type(tp):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{name}: config key '{_key(path)}' must be a mapping of {', '.join(_hints(tp))}, got {value!r}"
                )
            _check_keys_and_types(tp, value, path, name)
        else:
            _coerce(tp, value, path, name)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(tp))
        return " or ".join(_type_name(a) for a in args) + (" or null" if nullable else "")
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(tp: Any, value: Any, path: tuple[str, ...], name: str) -> Any:
    """Return value as type tp, or raise a ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        for arg in args:
            try:
                return _coerce(arg, value, path, name)
            except ConfigError:
                continue
        raise ConfigError(f"{name}: config key '{_key(path)}' is {value!r}; it must be {_type_name(tp)}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{name}: config key '{_key(path)}' is {value!r}; it must be {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{name}: config key '{_key(path)}' must be {_type_name(tp)}, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(item_tp, v, (*path, f"[{i}]"), name) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                pass
            else:
                raise ConfigError(
                    f"{name}: config key '{_key(path)}' is the text {value!r}, not a number: PyYAML reads "
                    f"numbers like 1e-4 as text; write it with a dot and a signed exponent (1.0e-4) or as 0.0001"
                )
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{name}: config key '{_key(path)}' must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: tuple[str, ...], origin: dict[tuple[str, ...], str]) -> Any:
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        path = (*prefix, f.name)
        name = origin.get(path, "<config>")
        tp = hints[f.name]
        value = data[f.name]
        if _is_dataclass_type(tp):
            kwargs[f.name] = _build(tp, value, path, origin)
            continue
        value = _coerce(tp, value, path, name)
        low, high = f.metadata.get("min"), f.metadata.get("max")
        numbers = value if isinstance(value, list) else [value]
        for number in numbers:
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                if (low is not None and number < low) or (high is not None and number > high):
                    allowed = f">= {low}" if high is None else f"between {low} and {high}"
                    raise ConfigError(f"{name}: config key '{_key(path)}' is {number}; it must be {allowed}")
        kwargs[f.name] = value
    config = cls(**kwargs)
    _check_consistency(config, origin)
    return config


def _check_consistency(config: Any, origin: dict[tuple[str, ...], str]) -> None:
    if isinstance(config, AugmentConfig) and not config.resize_methods:
        src = origin.get(("data", "augment", "resize_methods"), "<config>")
        raise ConfigError(f"{src}: config key 'data.augment.resize_methods' is empty; list at least one (bilinear)")
    if isinstance(config, ThresholdsConfig) and config.grid_min > config.grid_max:
        src = origin.get(("thresholds", "grid_min"), "<config>")
        raise ConfigError(
            f"{src}: thresholds.grid_min ({config.grid_min}) is above thresholds.grid_max ({config.grid_max}); "
            "swap them"
        )
    if isinstance(config, Config):
        for name in ("teacher", "student"):
            section = getattr(config, name)
            if section.weight_decay > 0 and section.optimizer != "adamw":
                src = origin.get((name, "weight_decay"), "<config>")
                raise ConfigError(
                    f"{src}: {name}.weight_decay is {section.weight_decay} but {name}.optimizer is "
                    f"{section.optimizer!r}, which does not decay weights; set {name}.optimizer: adamw"
                )
    if isinstance(config, Config) and config.classes is not None:
        names = [c.strip() for c in config.classes]
        src = origin.get(("classes",), "<config>")
        if any(not c for c in names):
            raise ConfigError(f"{src}: config key 'classes' has an empty class name; remove it")
        dupes = sorted({c for c in names if names.count(c) > 1})
        if dupes:
            raise ConfigError(f"{src}: config key 'classes' lists {dupes} more than once; list each class once")
        if any("|" in c for c in names):
            raise ConfigError(f"{src}: config key 'classes' has a name with '|', which separates labels in the CSVs")
        if config.num_classes is not None and config.num_classes != len(names):
            raise ConfigError(
                f"{src}: 'num_classes' is {config.num_classes} but 'classes' lists {len(names)} names; "
                "make them agree or drop num_classes"
            )


# ======================================================================================
# Documentation of the defaults (used to check configs/default.yaml)
# ======================================================================================


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for every leaf key, in declaration order."""
    rows: list[tuple[str, Any, str]] = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if _is_dataclass_type(hints[f.name]):
            rows.extend(describe(hints[f.name], key + "."))
        else:
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            rows.append((key, default, f.metadata.get("help", "")))
    return rows

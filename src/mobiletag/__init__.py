"""mobiletag: train mobile multi-label image classifiers and ship them as INT8 TFLite models.

Importing the package selects Keras 2 (``tf_keras``) for TensorFlow, which quantization-aware
training requires, and turns TensorFlow's oneDNN CPU kernels off (unless TF_ENABLE_ONEDNN_OPTS is
set), which reproducible runs require. This is the one place that does both, and it must happen
before TensorFlow is imported anywhere in the process.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

if "tensorflow" in _sys.modules and _os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    # Too late to switch: tf.keras may already be Keras 3. Warn instead of failing on import,
    # the first QAT call reports the real problem.
    import warnings as _warnings

    _warnings.warn(
        "tensorflow was imported before mobiletag without TF_USE_LEGACY_KERAS=1; "
        "import mobiletag first (or set TF_USE_LEGACY_KERAS=1) so tf.keras is tf_keras",
        RuntimeWarning,
        stacklevel=2,
    )
_os.environ["TF_USE_LEGACY_KERAS"] = "1"
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow's oneDNN CPU kernels off unless the environment asks for them: they are not
# reproducible under load (docs/configuration.md, "Reproducible runs"). Read once, at import.
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

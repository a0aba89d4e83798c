"""What the components share: the decorator that makes a function a component on the project's
image, and the descriptions of parameters that several components mean the same thing by, each
written once.

KFP reads a component's description and the description of each input and output from the
function's Google-style docstring when ``@dsl.component`` is applied; the Kubeflow UI shows them.
A component's docstring describes its own parameters; :func:`documented` adds the shared ones,
so that ``Args:`` lists every parameter in signature order. KFP embeds the function's source
from its ``def`` line on, without the decorator, so the body runs in its container without this
module.
"""

import inspect
import re
from collections.abc import Callable
from typing import TypeVar

from kfp import dsl
from kfp.dsl.python_component import PythonComponent

from components.image import IMAGE

F = TypeVar("F", bound=Callable)

# A parameter's description where several components mean the same thing by it.
SHARED = {
    "dataset": "TFRecords from prepare_dataset.",
    "config_json": (
        "This stage's config sections (from resolve_config); a training step's also has its step block: "
        "backup_uri (backups in <backup_uri>/<run id>/<task>/, run id: the pod's pipeline/runid label) and "
        "the GPUs it gets (above 0 it fails at once when TensorFlow sees no GPU)."
    ),
    "thresholds": "threshold_recommendation.json.",
}

# The metrics of both student trainings (distilled and baseline): @component(metrics=STUDENT_METRICS).
STUDENT_METRICS = "Validation mAP, training images/second, parameter count."

_ENTRY = re.compile(r"    (\w+): (.*)")


def component(image: str = IMAGE, **sentences: str) -> Callable[[Callable], PythonComponent]:
    """``@dsl.component`` on ``image``, which has kfp installed, of the function with the
    docstring :func:`documented` completes with ``sentences``."""

    def apply(func: Callable) -> PythonComponent:
        return dsl.component(documented(**sentences)(func), base_image=image, install_kfp_package=False)

    return apply


def documented(**sentences: str) -> Callable[[F], F]:
    """Rewrites ``func.__doc__`` with ``Args:`` in signature order, a parameter's description
    taken from the docstring's ``Args:``, else ``sentences`` (for a sentence of this module under
    a name SHARED gives another meaning), else ``SHARED``.

    The docstring's ``Args:`` entries take one line each; what follows them (``Returns:``) is
    kept. A TypeError names the fix for: no summary, a parameter with no description or with two,
    a description of something that is not a parameter.
    """

    def apply(func: F) -> F:
        where = f"component {func.__name__}"
        summary, _, rest = inspect.cleandoc(func.__doc__ or "").partition("\n\nArgs:\n")
        entries, after = {}, rest.splitlines()
        while after and after[0].strip():
            match = _ENTRY.fullmatch(after.pop(0))
            if match is None:
                raise TypeError(f"{where}: write each Args: entry on one line, '    name: description'")
            entries[match[1]] = match[2]
        names = list(inspect.signature(func).parameters)
        unknown = sorted((set(entries) | set(sentences)) - set(names))
        if unknown:
            raise TypeError(f"{where}: describes {unknown}, which are not among its parameters {names}")
        twice = sorted(set(entries) & set(sentences)) or sorted(n for n in entries if SHARED.get(n) == entries[n])
        if twice:
            raise TypeError(f"{where}: {twice} described twice: drop the docstring's entry (components/base.py has it)")
        descriptions = {**SHARED, **sentences, **entries}
        missing = [name for name in names if name not in descriptions]
        if not summary or "Returns:" in summary or missing:
            raise TypeError(
                f"{where}: no summary before Args: or no description for {missing}: describe a parameter under "
                "Args: in the docstring or, when several components mean the same by it, in SHARED (components/base.py)"
            )
        args = [f"    {name}: {descriptions[name]}" for name in names]
        func.__doc__ = "\n".join([summary, "", "Args:", *args, *after])
        return func

    return apply

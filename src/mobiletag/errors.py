"""Error kinds. Every message says what is wrong, where, and how to fix it."""

from __future__ import annotations


class MobiletagError(Exception):
    """Base of every error mobiletag raises on purpose; the CLI prints it as one line."""


class ConfigError(MobiletagError):
    """A configuration key is unknown, has the wrong type, or is out of range."""


class DataError(MobiletagError):
    """The dataset is malformed: CSV, labels or images.

    ``problems`` holds every problem found (each one line with file and line), so a user can
    fix them all in one go instead of one per run.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            shown = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{message}\n{shown}"
        super().__init__(message)


class PipelineRunError(MobiletagError):
    """A pipeline run (kfp.local) or a call to the Kubeflow Pipelines server failed or cannot start."""


class TrainingError(MobiletagError):
    """Training cannot go on (for example the loss became NaN)."""


class ExportError(MobiletagError):
    """The exported TFLite model failed a check."""


class StorageError(MobiletagError):
    """Reading from or writing to a local path or gs:// URI failed."""


class Preempted(MobiletagError):
    """Training stopped on SIGTERM (the node is shutting down) after saving a backup; a retry resumes.

    Not a deterministic failure: the exit is non-zero so the pod ends ``Failed`` and is retried.
    """

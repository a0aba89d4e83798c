"""Run the KFP pipeline (pipeline.py) on this machine with kfp.local: every component in a
subprocess of this interpreter, or in its container image (docker)."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

from mobiletag.artifacts import atomic_dir
from mobiletag.errors import PipelineRunError
from mobiletag.stages.component_io import RUN_ID_ENV

REPO = Path(__file__).resolve().parents[3]


def checkout() -> Path:
    """The source checkout this package runs from, on ``sys.path``: pipeline.py and components/
    are there, not in the installed package."""
    for needed in (REPO / "pipeline.py", REPO / "components" / "__init__.py"):
        if not needed.is_file():
            raise PipelineRunError(
                f"{needed} not found: `mobiletag train` runs the pipeline and components of a source checkout; "
                "install mobiletag from one (`make install`, an editable install)"
            )
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return REPO


def load_pipeline_module() -> ModuleType:
    """pipeline.py of the source checkout (components/ beside it)."""
    spec = importlib.util.spec_from_file_location("mobiletag_pipeline_module", checkout() / "pipeline.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_local(
    data_dir: str,
    out_dir: str,
    config_text: str = "",
    runner: str = "subprocess",
    work_dir: str | None = None,
    gpus: int = 0,
    output_uri: str = "",
    baseline_student: bool = True,
) -> Path:
    """Run the pipeline function with kfp.local and copy its output folder to out_dir.

    Nothing is written to out_dir unless every stage succeeded.
    """
    import kfp.local

    root = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="mobiletag-kfp-"))
    root.mkdir(parents=True, exist_ok=True)
    # Components run as `python3 -m kfp.dsl.executor_main`: make it this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # On a cluster the training steps read the run id from their pod's pipeline/runid label
    # (pipeline.py); kfp.local has no pods: each local run gets an id of its own.
    run_id = os.environ[RUN_ID_ENV] = f"local-{uuid.uuid4().hex[:12]}"
    if runner == "docker":
        # containers do not inherit this process's environment: hand them the run id
        local_runner: Any = kfp.local.DockerRunner(environment={RUN_ID_ENV: run_id})
    else:
        local_runner = kfp.local.SubprocessRunner(use_venv=False)
    kfp.local.init(runner=local_runner, pipeline_root=str(root / "pipeline_root"), raise_on_error=True)
    module = load_pipeline_module()
    try:
        result = module.mobiletag_pipeline(
            data_uri=str(Path(data_dir).resolve()),
            config_overrides=config_text,
            output_uri=output_uri,
            backup_uri=str(root / "backup"),
            teacher_gpus=gpus,
            student_gpus=gpus,
            gpu_node_pool="",
            gpu_accelerator="",
            baseline_student=baseline_student,
        )
    except RuntimeError as exc:
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # kfp.local colours task names
        raise PipelineRunError(
            f"the local pipeline run failed: {message} The failed task's log (its end is shown above) ends "
            f"with the reason; its artifacts are in {root}"
        ) from exc
    bundle_dir = Path(result.output.path)  # the pipeline returns the bundle folder
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        shutil.copytree(bundle_dir, tmp, dirs_exist_ok=True)
    if work_dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return out

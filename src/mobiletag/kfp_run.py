"""Running the compiled pipeline: on this machine with kfp.local, or on a Kubeflow server.

The only module (with the CLI) that imports kfp.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from mobiletag.errors import MobiletagError

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


class PipelineRunError(MobiletagError):
    pass


def load_pipeline_module() -> ModuleType:
    """pipeline.py of the source checkout (components/ beside it)."""
    path = REPO / "pipeline.py"
    if not path.is_file():
        raise PipelineRunError(f"{path} not found: run `mobiletag train` from a source checkout of mobiletag")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location("mobiletag_pipeline_module", path)
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
) -> Path:
    """Run the pipeline function with kfp.local and copy its output folder to out_dir.

    Nothing is written to out_dir unless every stage succeeded.
    """
    import kfp.local

    root = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="mobiletag-kfp-"))
    root.mkdir(parents=True, exist_ok=True)
    # Components run as `python3 -m kfp.dsl.executor_main`: make it this interpreter.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if runner == "docker":
        local_runner: Any = kfp.local.DockerRunner()
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
        )
    except RuntimeError as exc:
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # kfp.local colours task names
        raise PipelineRunError(
            f"the local pipeline run failed: {message} The failed task's log above ends with the reason; "
            f"its artifacts are in {root}"
        ) from exc
    bundle_dir = Path(result.output.path)  # the pipeline returns the bundle folder
    out = Path(out_dir)
    tmp = out.parent / f".{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bundle_dir, tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    if work_dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return out


# ======================================================================================
# A Kubeflow Pipelines server: upload, submit, schedule
# ======================================================================================

PARAMETER_ENV = {
    "data_uri": "MOBILETAG_DATA_URI",
    "config_overrides": "MOBILETAG_CONFIG_OVERRIDES",
    "output_uri": "MOBILETAG_OUTPUT_URI",
    "backup_uri": "MOBILETAG_BACKUP_URI",
    "teacher_gpus": "MOBILETAG_TEACHER_GPUS",
    "student_gpus": "MOBILETAG_STUDENT_GPUS",
    "gpu_node_pool": "MOBILETAG_GPU_NODE_POOL",
    "gpu_accelerator": "MOBILETAG_GPU_ACCELERATOR",
}
INT_PARAMETERS = ("teacher_gpus", "student_gpus")


def run_parameters(given: dict[str, str | None], env: dict[str, str]) -> dict[str, Any]:
    """Pipeline arguments: flags first, then MOBILETAG_* environment (the CronJob's ConfigMap).

    Parameters given nowhere keep the pipeline's defaults; data_uri is required.
    """
    params: dict[str, Any] = {}
    for name, variable in PARAMETER_ENV.items():
        value = given.get(name)
        if value is None:
            value = env.get(variable)
        if value is None or (value == "" and name in INT_PARAMETERS):
            continue
        if name in INT_PARAMETERS:
            try:
                params[name] = int(value)
            except ValueError as exc:
                raise PipelineRunError(f"{name} (flag or {variable}) is {value!r}; it must be a whole number") from exc
        else:
            params[name] = value
    if not params.get("data_uri"):
        raise PipelineRunError("no dataset: pass --data-uri or set MOBILETAG_DATA_URI")
    return params


def client(host: str | None, namespace: str | None) -> Any:
    import kfp

    try:
        return kfp.Client(host=host or None, namespace=namespace)
    except Exception as exc:
        raise PipelineRunError(f"cannot reach the Kubeflow Pipelines API at {host or '(default)'}: {exc}") from exc


def upload(package: str, pipeline_name: str, version: str, host: str | None, namespace: str | None) -> str:
    """Upload the compiled pipeline (a new pipeline, or a new version of an existing one)."""
    kfp_client = client(host, namespace)
    pipeline_id = kfp_client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        result = kfp_client.upload_pipeline(package, pipeline_name=pipeline_name, namespace=namespace)
        return str(result.pipeline_id)
    result = kfp_client.upload_pipeline_version(package, pipeline_version_name=version, pipeline_id=pipeline_id)
    return str(result.pipeline_version_id)


def submit(
    params: dict[str, Any],
    *,
    pipeline_name: str,
    package: str | None,
    experiment: str,
    run_name: str,
    cron: str | None,
    host: str | None,
    namespace: str | None,
) -> str:
    """Start a run (or, with cron, a KFP recurring run) of the uploaded pipeline or a package."""
    kfp_client = client(host, namespace)
    experiment_id = kfp_client.create_experiment(experiment, namespace=namespace).experiment_id
    source: dict[str, Any]
    if package:
        source = {"pipeline_package_path": package}
    else:
        pipeline_id = kfp_client.get_pipeline_id(pipeline_name)
        if pipeline_id is None:
            raise PipelineRunError(f"no pipeline named {pipeline_name!r} on the server; run `make upload` first")
        versions = kfp_client.list_pipeline_versions(pipeline_id, sort_by="created_at desc", page_size=1)
        version_id = versions.pipeline_versions[0].pipeline_version_id
        source = {"pipeline_id": pipeline_id, "version_id": version_id}
    if cron:
        job = kfp_client.create_recurring_run(
            experiment_id, run_name, cron_expression=cron, params=params, max_concurrency=1, **source
        )
        return str(job.recurring_run_id)
    run = kfp_client.run_pipeline(experiment_id, run_name, params=params, **source)
    return str(run.run_id)

"""The compiled pipeline: golden YAML, the protos a KFP server parses, and the DAG's policy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.kubernetes import kubernetes_executor_config_pb2
from kfp.pipeline_spec import pipeline_spec_pb2

from ..conftest import REPO

GOLDEN = Path(__file__).parent / "golden" / "pipeline.yaml"
TRAINING = {"train-teacher", "train-student"}


def compile_to(path: Path) -> list[dict]:
    sys.path.insert(0, str(REPO))
    from pipeline import compile_pipeline

    compile_pipeline(str(path))
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def normalise(docs: list[dict]) -> list[dict]:
    """Drop what changes without a change of ours: the SDK version and the embedded sources."""
    spec = docs[0]
    spec.pop("sdkVersion", None)
    for executor in spec["deploymentSpec"]["executors"].values():
        container = executor["container"]
        container["command"] = ["<embedded component source>"]
    return docs


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> list[dict]:
    return compile_to(tmp_path_factory.mktemp("compiled") / "pipeline.yaml")


def test_matches_golden(compiled):
    got = normalise(compiled)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(yaml.safe_dump_all(got, sort_keys=True))
    expected = list(yaml.safe_load_all(GOLDEN.read_text()))
    assert got == expected, "pipeline changed: review, then regenerate with UPDATE_GOLDEN=1 make test"


def test_loads_into_the_protos_a_server_uses(compiled):
    spec = json_format.ParseDict(compiled[0], pipeline_spec_pb2.PipelineSpec())
    assert spec.pipeline_info.name == "mobiletag"
    platform = json_format.ParseDict(compiled[1], pipeline_spec_pb2.PlatformSpec())
    executors = platform.platforms["kubernetes"].deployment_spec.executors
    for name, config in executors.items():
        k8s = json_format.ParseDict(
            json_format.MessageToDict(config), kubernetes_executor_config_pb2.KubernetesExecutorConfig()
        )
        assert k8s.tolerations, name


def test_kfp_cli_compiles_the_same(compiled, tmp_path):
    out = tmp_path / "cli.yaml"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "kfp"),
            "dsl",
            "compile",
            "--py",
            str(REPO / "pipeline.py"),
            "--output",
            str(out),
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
        timeout=300,
    )
    assert normalise([d for d in yaml.safe_load_all(out.read_text()) if d]) == normalise(compiled)


def _tasks(compiled):
    """Every container task, also those inside condition sub-DAGs (publish, promote)."""
    spec = compiled[0]
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return {
        name: task
        for dag in dags
        for name, task in dag["tasks"].items()
        if "executorLabel" in spec["components"][task["componentRef"]["name"]]
    }


def _executor(compiled, task):
    label = _tasks(compiled)[task]["componentRef"]["name"].replace("comp-", "exec-")
    return label, compiled[0]["deploymentSpec"]["executors"][label]["container"]


def _by_display_name(tasks: dict, name: str) -> dict:
    (task,) = [t for t in tasks.values() if t["taskInfo"]["name"] == name]
    return task


def test_publish_only_when_asked_and_promote_only_past_the_gate(compiled):
    spec = compiled[0]
    requested = _by_display_name(spec["root"]["dag"]["tasks"], "publish-requested")
    assert requested["triggerPolicy"]["condition"] == ("inputs.parameter_values['pipelinechannel--output_uri'] != ''")
    assert "bundle" in requested["dependentTasks"]
    inner = spec["components"][requested["componentRef"]["name"]]["dag"]["tasks"]
    assert inner["publish"]["cachingOptions"] == {}  # never cached: LATEST may have moved
    gate = _by_display_name(inner, "gate-passed")
    assert gate["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--publish-gate_passed'] == true"
    )
    promote = spec["components"][gate["componentRef"]["name"]]["dag"]["tasks"]["promote"]
    assert promote["cachingOptions"] == {}
    assert promote["inputs"]["parameters"]["version"] == {"componentInputParameter": "pipelinechannel--publish-version"}


def test_dag_order(compiled):
    tasks = _tasks(compiled)
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert deps["prepare-dataset"] == {"resolve-config"}
    assert deps["train-teacher"] == {"prepare-dataset", "resolve-config"}
    assert "train-teacher" in deps["train-student"]
    assert {"train-student", "train-teacher"} <= deps["quantize"]
    assert "quantize" in deps["export-tflite"]
    assert "export-tflite" in deps["optimize-thresholds"]
    assert {"optimize-thresholds", "export-tflite"} <= deps["evaluate"]
    assert "evaluate" in deps["bundle"]


def test_gpus_only_on_training_and_qat(compiled):
    for task in _tasks(compiled):
        _, container = _executor(compiled, task)
        accelerator = container.get("resources", {}).get("accelerator")
        if task in TRAINING:
            assert accelerator["resourceType"] == "nvidia.com/gpu"
            param = "teacher_gpus" if task == "train-teacher" else "student_gpus"
            assert accelerator["resourceCount"] == f"{{{{$.inputs.parameters['pipelinechannel--{param}']}}}}"
        elif task == "quantize":
            assert accelerator["resourceCount"] == "1"  # QAT on one device
        else:
            assert accelerator is None, task
        assert float(container["resources"]["resourceCpuRequest"]) >= 1


def test_gpu_pool_placement_shm_and_retries(compiled):
    platform = compiled[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    gpu_tasks = TRAINING | {"quantize"}
    assert {_executor(compiled, t)[0] for t in gpu_tasks} == set(platform)
    for task in gpu_tasks:
        config = platform[_executor(compiled, task)[0]]
        assert config["nodeSelector"]["nodeSelectorJson"]["taskOutputParameter"] == {
            "outputParameterKey": "gpu_node_selector",
            "producerTask": "resolve-config",
        }
        assert config["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
        assert config["emptyDirMounts"] == [
            {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "16Gi", "volumeName": "dshm"}
        ]
        assert _tasks(compiled)[task]["retryPolicy"]["maxRetryCount"] == 3
    assert "retryPolicy" not in _tasks(compiled)["export-tflite"]


def test_every_component_uses_the_one_image_without_installing_kfp(compiled):
    from components.image import IMAGE

    for label, executor in compiled[0]["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["image"] == IMAGE, label
        assert "pip install" not in " ".join(container["command"]), label


def test_parameters_and_descriptions(compiled):
    params = compiled[0]["root"]["inputDefinitions"]["parameters"]
    assert params["teacher_gpus"]["defaultValue"] == 4 and params["student_gpus"]["defaultValue"] == 4
    assert params["config_overrides"]["defaultValue"] == ""
    assert "data_uri" in params and "defaultValue" not in params["data_uri"]
    for name, p in params.items():
        assert p.get("description"), name  # shown in the Kubeflow UI
    assert not compiled[0]["root"]["dag"]["tasks"]["resolve-config"]["cachingOptions"].get("enableCache", False)


def test_node_selector_from_parameters():
    from mobiletag.stages.resolve_config import gpu_node_selector

    assert gpu_node_selector("gpu-pool", "nvidia-l4") == {
        "cloud.google.com/gke-nodepool": "gpu-pool",
        "cloud.google.com/gke-accelerator": "nvidia-l4",
    }
    assert gpu_node_selector("", " ") == {}


def test_stage_configs_hold_only_what_each_stage_reads():
    import json

    from mobiletag.stages.resolve_config import run

    base = run("/nonexistent-dataset", "")
    changed = run("/nonexistent-dataset", "student: {epochs: 3}\nthresholds: {strategy: global}")
    assert base["prepare_dataset"] == changed["prepare_dataset"]
    assert base["train_teacher"] == changed["train_teacher"]  # the teacher is cached
    assert base["train_student"] != changed["train_student"]
    assert base["optimize_thresholds"] != changed["optimize_thresholds"]
    assert json.loads(base["prepare_dataset"])["data"]["max_stored_side"] == 345
    assert re.search(r"epochs: 3", changed["full"])

"""The compiled pipeline: golden YAML, the protos a KFP server parses, and the DAG's policy."""

from __future__ import annotations

import copy
import json
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
TRAINING = {"train-teacher", "train-student", "train-student-baseline"}
GPU_TASKS = TRAINING | {"quantize"}
HOUR = 3600


def compile_to(path: Path) -> list[dict]:
    sys.path.insert(0, str(REPO))
    from pipeline import compile_pipeline

    compile_pipeline(str(path))
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def normalise(docs: list[dict]) -> list[dict]:
    """Drop what changes without a change of ours: the SDK version, the embedded sources and the
    image reference (its tag follows the version and the git commit). Works on a copy."""
    docs = copy.deepcopy(docs)
    spec = docs[0]
    spec.pop("sdkVersion", None)
    for executor in spec["deploymentSpec"]["executors"].values():
        container = executor["container"]
        container["command"] = ["<embedded component source>"]
        container["image"] = "<image>"
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
    assert set(executors) == set(compiled[0]["deploymentSpec"]["executors"])  # every step has a timeout
    for name, config in executors.items():
        k8s = json_format.ParseDict(
            json_format.MessageToDict(config), kubernetes_executor_config_pb2.KubernetesExecutorConfig()
        )
        assert k8s.active_deadline_seconds > 0, name
        assert bool(k8s.tolerations) == (name in {f"exec-{t}" for t in GPU_TASKS}), name


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
    assert deps["train-student-baseline"] == {"prepare-dataset", "resolve-config", "train-teacher"}
    assert deps["select-student"] == {"resolve-config", "train-student", "train-student-baseline"}
    assert {"select-student", "train-teacher"} <= deps["quantize"] and "train-student" not in deps["quantize"]
    assert "quantize" in deps["export-tflite"]
    assert "export-tflite" in deps["optimize-thresholds"]
    assert deps["mediapipe-package"] == {"prepare-dataset", "export-tflite", "optimize-thresholds"}
    assert {"optimize-thresholds", "mediapipe-package"} <= deps["evaluate"]
    assert "mediapipe-package" in deps["bundle"]
    assert "evaluate" in deps["bundle"]
    assert {"select-student", "train-student", "train-student-baseline"} <= deps["evaluate"]


def test_evaluate_and_bundle_take_the_model_with_mediapipe_metadata(compiled):
    tasks = _tasks(compiled)
    for name in ("evaluate", "bundle"):
        assert tasks[name]["inputs"]["artifacts"]["tflite_model"]["taskOutputArtifact"] == {
            "outputArtifactKey": "model",
            "producerTask": "mediapipe-package",
        }, name
    package = tasks["mediapipe-package"]["inputs"]["artifacts"]
    assert package["tflite_model"]["taskOutputArtifact"]["producerTask"] == "export-tflite"
    assert package["thresholds"]["taskOutputArtifact"]["producerTask"] == "optimize-thresholds"


def _model_from(task: dict, name: str) -> dict:
    return task["inputs"]["artifacts"][name]["taskOutputArtifact"]


def test_the_better_student_goes_on_and_evaluate_sees_both(compiled):
    """QAT, export (through QAT) and bundle take select-student's model; evaluate also gets both students."""
    tasks = _tasks(compiled)
    selected = {"outputArtifactKey": "model", "producerTask": "select-student"}
    assert _model_from(tasks["select-student"], "distilled") == {
        "outputArtifactKey": "model",
        "producerTask": "train-student",
    }
    assert _model_from(tasks["select-student"], "baseline") == {
        "outputArtifactKey": "model",
        "producerTask": "train-student-baseline",
    }
    assert _model_from(tasks["quantize"], "student") == selected
    assert _model_from(tasks["bundle"], "student") == selected
    assert _model_from(tasks["evaluate"], "student") == selected
    assert _model_from(tasks["evaluate"], "distilled_student")["producerTask"] == "train-student"
    assert _model_from(tasks["evaluate"], "baseline_student")["producerTask"] == "train-student-baseline"
    # the baseline trains from the same stage config as the distilled student (alpha is set to 1 in the step)
    for task in ("train-student", "train-student-baseline"):
        assert tasks[task]["inputs"]["parameters"]["config_json"] == {
            "taskOutputParameter": {"outputParameterKey": "train_student", "producerTask": "resolve-config"}
        }


def test_baseline_student_is_a_parameter_and_off_it_asks_for_no_gpu(compiled):
    """No dsl.If (a branch's artifact cannot reach select-student on backend 2.5.0): the step always runs,
    trains only when enabled, and its GPU limit, node selector, CPU and memory come from resolve-config,
    which gives it no GPU when baseline_student is false."""
    from mobiletag.stages.train_student_baseline import baseline_resources

    spec = compiled[0]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["baseline_student"]["parameterType"] == "BOOLEAN"
    assert params["baseline_student"]["defaultValue"] is True
    tasks = _tasks(compiled)
    assert "train-student-baseline" in spec["root"]["dag"]["tasks"]  # top level: not inside a condition
    assert tasks["train-student-baseline"]["inputs"]["parameters"]["enabled"] == {
        "componentInputParameter": "baseline_student"
    }
    resolve = tasks["resolve-config"]["inputs"]["parameters"]
    for name in ("baseline_student", "student_cpu", "student_memory", "student_gpus"):
        assert resolve[name] == {"componentInputParameter": name}
    _, container = _executor(compiled, "train-student-baseline")
    resources = container["resources"]
    assert resources["resourceCpuRequest"] == "{{$.inputs.parameters['pipelinechannel--resolve-config-baseline_cpu']}}"
    assert (
        resources["resourceMemoryRequest"]
        == "{{$.inputs.parameters['pipelinechannel--resolve-config-baseline_memory']}}"
    )
    platform = compiled[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    selector = platform[_executor(compiled, "train-student-baseline")[0]]["nodeSelector"]["nodeSelectorJson"]
    assert selector == {
        "taskOutputParameter": {"outputParameterKey": "baseline_node_selector", "producerTask": "resolve-config"}
    }
    off = baseline_resources(False, 4, {"cloud.google.com/gke-nodepool": "gpu-pool"}, "14", "48Gi")
    assert off["gpu_limit"] == "0" and off["node_selector"] == {}  # no GPU, any (CPU) node
    assert _quantity(off["cpu"]) <= 1 and _quantity(off["memory"]) <= 1


def test_baseline_step_has_the_student_step_policy(compiled):
    tasks = _tasks(compiled)
    platform = compiled[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    student, baseline = (platform[_executor(compiled, t)[0]] for t in ("train-student", "train-student-baseline"))
    assert tasks["train-student-baseline"]["retryPolicy"] == tasks["train-student"]["retryPolicy"]
    assert baseline["activeDeadlineSeconds"] == student["activeDeadlineSeconds"]
    assert baseline["tolerations"] == student["tolerations"] and baseline["emptyDirMounts"] == student["emptyDirMounts"]
    assert baseline["fieldPathAsEnv"] == student["fieldPathAsEnv"]
    student_res = _executor(compiled, "train-student")[1]["resources"]
    baseline_res = _executor(compiled, "train-student-baseline")[1]["resources"]
    assert baseline_res["accelerator"]["resourceType"] == student_res["accelerator"]["resourceType"]
    assert tasks["train-student-baseline"]["inputs"]["parameters"]["config_json"] == {
        "taskOutputParameter": {"outputParameterKey": "train_student", "producerTask": "resolve-config"}
    }


def test_gpus_only_on_training_and_qat(compiled):
    for task in _tasks(compiled):
        _, container = _executor(compiled, task)
        accelerator = container.get("resources", {}).get("accelerator")
        if task in GPU_TASKS:
            assert accelerator["resourceType"] == "nvidia.com/gpu"
            limit = {
                "train-teacher": "teacher",
                "train-student": "student",
                "train-student-baseline": "baseline",
                "quantize": "qat",
            }[task] + "_gpu_limit"
            assert (
                accelerator["resourceCount"]
                == f"{{{{$.inputs.parameters['pipelinechannel--resolve-config-{limit}']}}}}"
            )
            assert _tasks(compiled)[task]["inputs"]["parameters"][f"pipelinechannel--resolve-config-{limit}"] == {
                "taskOutputParameter": {"outputParameterKey": limit, "producerTask": "resolve-config"}
            }
        else:
            assert accelerator is None, task
            assert float(container["resources"]["resourceCpuRequest"]) >= 1


def test_training_steps_get_their_gpu_count_and_the_run_id_outside_the_cache_key(compiled):
    """A training step's GPU count and backup prefix come in its config JSON (resolve_config's, from the
    pipeline's parameters); the run id (for per-run backups) from the pod's pipeline/runid label as an
    environment variable: an input would change KFP's cache key every run, and no training step would be cached."""
    tasks = _tasks(compiled)
    for task, config in (
        ("train-teacher", "train_teacher"),
        ("train-student", "train_student"),
        ("train-student-baseline", "train_student"),
        ("quantize", "quantize"),
    ):
        params = tasks[task]["inputs"]["parameters"]
        assert params["config_json"] == {
            "taskOutputParameter": {"outputParameterKey": config, "producerTask": "resolve-config"}
        }, task
        assert not {"run_id", "gpus", "backup_uri"} & set(params), task
        assert not any("pipeline_job" in json.dumps(p) for p in params.values()), task
    given = tasks["resolve-config"]["inputs"]["parameters"]
    for name in ("backup_uri", "teacher_gpus", "student_gpus"):
        assert given[name] == {"componentInputParameter": name}, name


def test_training_pods_get_the_run_id_from_their_label(compiled):
    """The training steps keep their backups under the run id; bundle deletes them under the same one."""
    platform = compiled[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for task in sorted(GPU_TASKS | {"bundle"}):
        config = platform[_executor(compiled, task)[0]]
        assert config["fieldPathAsEnv"] == [
            {"name": "MOBILETAG_RUN_ID", "fieldPath": "metadata.labels['pipeline/runid']"}
        ], task


def test_bundle_gets_the_backup_prefix_and_gpu_steps_no_node_pool_by_default(compiled):
    root = compiled[0]["root"]
    assert root["dag"]["tasks"]["bundle"]["inputs"]["parameters"]["backup_uri"] == {
        "componentInputParameter": "backup_uri"
    }
    params = root["inputDefinitions"]["parameters"]
    assert params["gpu_node_pool"]["defaultValue"] == ""
    assert params["gpu_max_pending_minutes"]["defaultValue"] == 60


def test_resource_placeholders_name_string_parameters(compiled):
    """The KFP driver substitutes a resource placeholder with the parameter's GetStringValue()
    (backend/src/v2/driver resolvePodSpecInputRuntimeParameter, 2.4.0 to 2.17.0): an integer
    parameter gives '' and the pod silently gets no GPU. Every placeholder must name a string."""
    spec = compiled[0]
    root_params = spec["root"]["inputDefinitions"]["parameters"]
    resolve_outputs = spec["components"]["comp-resolve-config"]["outputDefinitions"]["parameters"]
    placeholder = re.compile(r"^\{\{\$\.inputs\.parameters\['pipelinechannel--(.+)'\]\}\}$")
    seen = set()
    for task in _tasks(compiled):
        _, container = _executor(compiled, task)
        resources = container.get("resources", {})
        values = [v for k, v in resources.items() if k.startswith("resource")]
        values += [v for k, v in resources.get("accelerator", {}).items() if k.startswith("resource")]
        for value in values:
            match = placeholder.match(value)
            if not match:
                continue
            name = match.group(1)
            seen.add(name)
            if name.startswith("resolve-config-"):
                assert resolve_outputs[name.removeprefix("resolve-config-")]["parameterType"] == "STRING", name
            else:
                assert root_params[name]["parameterType"] == "STRING", name
    assert seen == {
        "teacher_cpu",
        "teacher_memory",
        "student_cpu",
        "student_memory",
        "qat_cpu",
        "qat_memory",
        "resolve-config-teacher_gpu_limit",
        "resolve-config-student_gpu_limit",
        "resolve-config-qat_gpu_limit",
        "resolve-config-baseline_gpu_limit",
        "resolve-config-baseline_cpu",
        "resolve-config-baseline_memory",
    }


# GKE node allocatable, from the reservation formula GKE documents (cloud.google.com/kubernetes-engine/
# docs/concepts/plan-node-sizes): CPU 6% of the first core, 1% of the second, 0.5% of cores 3-4,
# 0.25% above; memory 25% of the first 4 GiB, 20% of the next 4, 10% of the next 8, 6% of the next 112,
# 2% above 128 GiB, plus a 100 MiB eviction threshold. Machine shapes (vCPU, GiB) from Compute Engine.
NODE_SHAPES = {
    "n1-standard-16 + 4 x T4": (16, 60),
    "g2-standard-48 + 4 x L4": (48, 192),
    "a2-highgpu-4g (4 x A100 40GB)": (48, 340),
}
ONE_GPU_SHAPES = {"n1-standard-8 + 1 x T4": (8, 30), "g2-standard-8 + 1 x L4": (8, 32)}
# Left for what else runs on a GPU node: DaemonSets (kube-proxy, fluentbit, gke-metrics-agent,
# nvidia-gpu-device-plugin, pdcsi, netd) and Argo's wait container in the same pod.
SYSTEM_CPU, SYSTEM_GIB = 0.5, 1.5


def _allocatable(vcpus: int, gib: float) -> tuple[float, float]:
    cpu_reserved = 0.06 + 0.01 * min(max(vcpus - 1, 0), 1) + 0.005 * min(max(vcpus - 2, 0), 2)
    cpu_reserved += 0.0025 * max(vcpus - 4, 0)
    tiers = [(4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (float("inf"), 0.02)]
    left, mem_reserved = gib, 0.0
    for size, share in tiers:
        mem_reserved += min(left, size) * share
        left -= min(left, size)
    return vcpus - cpu_reserved, gib - mem_reserved - 100 / 1024


def _quantity(text: str) -> float:
    """Kubernetes quantity -> cores or GiB (the forms used here)."""
    units = {"Gi": 1.0, "Mi": 1 / 1024, "G": 1e9 / 2**30, "m": 1e-3}
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def test_default_requests_fit_common_gpu_nodes(compiled):
    assert _allocatable(16, 60) == pytest.approx((15.89, 54.66), abs=0.01)  # n1-standard-16's allocatable CPU and GiB
    params = compiled[0]["root"]["inputDefinitions"]["parameters"]
    for step, shapes in (("teacher", NODE_SHAPES), ("student", NODE_SHAPES), ("qat", NODE_SHAPES | ONE_GPU_SHAPES)):
        cpu = _quantity(params[f"{step}_cpu"]["defaultValue"])
        memory = _quantity(params[f"{step}_memory"]["defaultValue"])
        for shape, (vcpus, gib) in shapes.items():
            free_cpu, free_gib = _allocatable(vcpus, gib)
            assert cpu + SYSTEM_CPU <= free_cpu, (step, shape)
            assert memory + SYSTEM_GIB <= free_gib, (step, shape)
    assert _quantity(params["teacher_cpu"]["defaultValue"]) >= 12  # still most of the node: the input pipeline


def test_every_step_has_a_timeout_and_training_can_retry_within_its_window(compiled):
    platform = compiled[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for task in _tasks(compiled):
        seconds = int(platform[_executor(compiled, task)[0]]["activeDeadlineSeconds"])
        if task in GPU_TASKS:
            assert seconds == 48 * HOUR, task
            retry = _tasks(compiled)[task]["retryPolicy"]
            # Argo stops retrying once backoff.maxDuration has passed since the first attempt started
            assert int(retry["backoffMaxDuration"].rstrip("s")) >= seconds + 12 * HOUR, task
        else:
            assert 0 < seconds <= 12 * HOUR, task


def test_prepare_dataset_is_keyed_on_the_fingerprint_from_resolve_config(compiled):
    tasks = _tasks(compiled)
    assert tasks["prepare-dataset"]["inputs"]["parameters"]["data_fingerprint"] == {
        "taskOutputParameter": {"outputParameterKey": "data_fingerprint", "producerTask": "resolve-config"}
    }
    assert tasks["prepare-dataset"]["cachingOptions"] == {"enableCache": True}  # cached, on a key that moves
    assert tasks["resolve-config"]["cachingOptions"] == {}  # never cached: it fingerprints the data every run
    outputs = compiled[0]["components"]["comp-resolve-config"]["outputDefinitions"]["parameters"]
    assert outputs["data_fingerprint"]["parameterType"] == "STRING"


# The fields of the kubernetes platform spec that the minimum backend understands: KFP 2.5.0
# (Kubeflow 1.10.1), from kubernetes_platform/proto/kubernetes_executor_config.proto at tag 2.5.0
# of github.com/kubeflow/pipelines (backend/go.mod replaces the module with that directory), and
# ml_pipelines.TaskInputsSpec.InputParameterSpec from api/v2alpha1/pipeline_spec.proto at 2.5.0.
# Field names as proto3 JSON (lowerCamelCase); a message name maps to its fields, a field to the
# message it holds (None: a scalar, a string map or a google.protobuf value).
# Before 2.5.0: 2.4.0 and older drivers parse this JSON strictly and fail on nodeSelectorJson
# ("unknown field"); 2.4.1 (Kubeflow 1.10.0) ignores unknown fields and drops the node selector.
KFP_2_5_0_PLATFORM_FIELDS: dict[str, dict[str, str | None]] = {
    "KubernetesExecutorConfig": {
        "secretAsVolume": "SecretAsVolume",
        "secretAsEnv": "SecretAsEnv",
        "pvcMount": "PvcMount",
        "nodeSelector": "NodeSelector",
        "podMetadata": "PodMetadata",
        "imagePullSecret": "ImagePullSecret",
        "imagePullPolicy": None,
        "configMapAsVolume": "ConfigMapAsVolume",
        "configMapAsEnv": "ConfigMapAsEnv",
        "activeDeadlineSeconds": None,
        "fieldPathAsEnv": "FieldPathAsEnv",
        "tolerations": "Toleration",
        "genericEphemeralVolume": "GenericEphemeralVolume",
        "nodeAffinity": "NodeAffinityTerm",
        "podAffinity": "PodAffinityTerm",
        "enabledSharedMemory": "EnabledSharedMemory",
        "emptyDirMounts": "EmptyDirMount",
    },
    "NodeSelector": {"labels": None, "nodeSelectorJson": "InputParameterSpec"},
    "Toleration": {
        "key": None,
        "operator": None,
        "value": None,
        "effect": None,
        "tolerationSeconds": None,
        "tolerationJson": "InputParameterSpec",
    },
    "EmptyDirMount": {"volumeName": None, "mountPath": None, "medium": None, "sizeLimit": None},
    "EnabledSharedMemory": {"volumeName": None, "size": None},
    "PodMetadata": {"labels": None, "annotations": None},
    "FieldPathAsEnv": {"name": None, "fieldPath": None},
    "SecretAsVolume": {
        "secretName": None,
        "mountPath": None,
        "optional": None,
        "secretNameParameter": "InputParameterSpec",
    },
    "SecretAsEnv": {"secretName": None, "keyToEnv": "SecretKeyToEnvMap", "secretNameParameter": "InputParameterSpec"},
    "SecretKeyToEnvMap": {"secretKey": None, "envVar": None},
    "ConfigMapAsVolume": {
        "configMapName": None,
        "mountPath": None,
        "optional": None,
        "configMapNameParameter": "InputParameterSpec",
    },
    "ConfigMapAsEnv": {
        "configMapName": None,
        "keyToEnv": "ConfigMapKeyToEnvMap",
        "configMapNameParameter": "InputParameterSpec",
    },
    "ConfigMapKeyToEnvMap": {"configMapKey": None, "envVar": None},
    "PvcMount": {
        "taskOutputParameter": "TaskOutputParameterSpec",
        "constant": None,
        "componentInputParameter": None,
        "mountPath": None,
        "pvcNameParameter": "InputParameterSpec",
    },
    "ImagePullSecret": {"secretName": None, "secretNameParameter": "InputParameterSpec"},
    "GenericEphemeralVolume": {
        "volumeName": None,
        "mountPath": None,
        "accessModes": None,
        "size": None,
        "defaultStorageClass": None,
        "storageClassName": None,
        "metadata": "PodMetadata",
    },
    "SelectorRequirement": {"key": None, "operator": None, "values": None},
    "NodeAffinityTerm": {
        "matchExpressions": "SelectorRequirement",
        "matchFields": "SelectorRequirement",
        "weight": None,
    },
    "PodAffinityTerm": {
        "matchPodExpressions": "SelectorRequirement",
        "matchPodLabels": None,
        "topologyKey": None,
        "namespaces": None,
        "matchNamespaceExpressions": "SelectorRequirement",
        "matchNamespaceLabels": None,
        "weight": None,
        "anti": None,
    },
    "InputParameterSpec": {
        "taskOutputParameter": "TaskOutputParameterSpec",
        "runtimeValue": None,
        "componentInputParameter": None,
        "taskFinalStatus": "TaskFinalStatus",
        "parameterExpressionSelector": None,
    },
    "TaskOutputParameterSpec": {"producerTask": None, "outputParameterKey": None},
    "TaskFinalStatus": {"producerTask": None},
}


def _unknown_fields(value, message: str, path: str) -> list[str]:
    if isinstance(value, list):
        return [e for i, item in enumerate(value) for e in _unknown_fields(item, message, f"{path}[{i}]")]
    fields = KFP_2_5_0_PLATFORM_FIELDS[message]
    problems = []
    for key, item in value.items():
        if key not in fields:
            problems.append(f"{path}.{key} (not a field of {message} in KFP 2.5.0)")
        elif fields[key] is not None:
            problems += _unknown_fields(item, fields[key], f"{path}.{key}")
    return problems


def test_platform_spec_uses_only_fields_the_minimum_backend_knows(compiled):
    executors = compiled[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    problems = [
        p for name, config in executors.items() for p in _unknown_fields(config, "KubernetesExecutorConfig", name)
    ]
    assert problems == []
    used = {key for config in executors.values() for key in config}
    assert used == {"activeDeadlineSeconds", "emptyDirMounts", "fieldPathAsEnv", "nodeSelector", "tolerations"}
    # the check itself: a field that 2.5.0 lacks is found
    newer = {"exec-x": {"nodeSelector": {"nodeSelectorJson": {"componentInputParameter": "a"}}, "workspaceMount": {}}}
    assert _unknown_fields(newer["exec-x"], "KubernetesExecutorConfig", "exec-x") == [
        "exec-x.workspaceMount (not a field of KubernetesExecutorConfig in KFP 2.5.0)"
    ]


def test_every_component_uses_the_one_image_without_installing_kfp(compiled):
    from components.image import IMAGE, MEDIAPIPE_IMAGE

    for label, executor in compiled[0]["deploymentSpec"]["executors"].items():
        container = executor["container"]
        # mediapipe==0.10.21 needs protobuf < 5: its step has an image of its own
        assert container["image"] == (MEDIAPIPE_IMAGE if label == "exec-mediapipe-package" else IMAGE), label
        assert "pip install" not in " ".join(container["command"]), label


def test_parameters_and_descriptions(compiled):
    params = compiled[0]["root"]["inputDefinitions"]["parameters"]
    assert params["teacher_gpus"]["defaultValue"] == 4 and params["student_gpus"]["defaultValue"] == 4
    assert {name: params[name]["defaultValue"] for name in params if name.endswith(("_cpu", "_memory"))} == {
        "teacher_cpu": "14",
        "teacher_memory": "48Gi",
        "student_cpu": "14",
        "student_memory": "48Gi",
        "qat_cpu": "6",
        "qat_memory": "20Gi",
    }
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


def test_gpu_limits_are_text_and_qat_follows_the_student():
    from mobiletag.errors import ConfigError
    from mobiletag.stages.resolve_config import gpu_limits

    assert gpu_limits(4, 2) == {"teacher_gpu_limit": "4", "student_gpu_limit": "2", "qat_gpus": 1, "qat_gpu_limit": "1"}
    assert gpu_limits(0, 0) == {"teacher_gpu_limit": "0", "student_gpu_limit": "0", "qat_gpus": 0, "qat_gpu_limit": "0"}
    with pytest.raises(ConfigError, match=r"teacher_gpus=-2 is not a number of GPUs; give a whole number >= 0"):
        gpu_limits(-2, 4)


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
    assert base["data_fingerprint"] == changed["data_fingerprint"]  # overrides are not data
    assert base["data_fingerprint"].startswith("sha256:")

"""Kubernetes manifests and the component image, checked without a cluster or a Docker engine."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from ..conftest import REPO

BIN = Path(sys.executable).parent
K8S_VERSION = "1.30.0"


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert path, f"{name} is installed by `make install` (dev extra)"
    return path


def _rendered() -> list[dict]:
    out = subprocess.run(
        [_tool("kubectl"), "kustomize", str(REPO / "manifests")], capture_output=True, text=True, check=True, timeout=60
    )
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def test_kustomization_renders_every_resource():
    docs = _rendered()
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == [
        ("ConfigMap", "mobiletag-run-params"),
        ("CronJob", "mobiletag-retrain"),
        ("Role", "mobiletag-scheduler"),
        ("RoleBinding", "mobiletag-scheduler"),
        ("ServiceAccount", "mobiletag-scheduler"),
    ]
    assert {d["metadata"]["namespace"] for d in docs} == {"kubeflow-user-example-com"}


@pytest.mark.parametrize("index", range(5))
def test_each_resource_is_valid_against_the_kubernetes_schema(index):
    doc = _rendered()[index]
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_cronjob_runs_submit_with_the_run_parameters():
    docs = {d["kind"]: d for d in _rendered()}
    job = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = job["containers"][0]
    assert container["command"] == ["mobiletag", "submit"]
    assert container["image"] == "us-docker.pkg.dev/my-project/mobiletag/mobiletag:0.1.0"
    assert job["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert container["envFrom"][0]["configMapRef"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    from mobiletag.kfp_run import PARAMETER_ENV

    assert set(PARAMETER_ENV.values()) <= set(docs["ConfigMap"]["data"])
    token = job["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "pipelines.kubeflow.org"
    binding = docs["RoleBinding"]
    assert (
        binding["subjects"][0]["name"] == "mobiletag-scheduler" and binding["roleRef"]["name"] == "mobiletag-scheduler"
    )


def test_image_tag_matches_package_version():
    import mobiletag

    kustomization = yaml.safe_load((REPO / "manifests" / "kustomization.yaml").read_text())
    assert kustomization["images"][0]["newTag"] == mobiletag.__version__
    sys.path.insert(0, str(REPO))
    from components.image import IMAGE, VERSION

    assert mobiletag.__version__ == VERSION and IMAGE.endswith(f"/mobiletag:{VERSION}")


def test_dockerfile_lints_clean():
    result = subprocess.run(
        [_tool("hadolint"), str(REPO / "images" / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_what_pyproject_pins():
    dockerfile = (REPO / "images" / "Dockerfile").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    pins = dict(re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', pyproject))
    base = re.search(r"^FROM tensorflow/tensorflow:([0-9.]+)-gpu", dockerfile, flags=re.MULTILINE)
    assert base and base.group(1) == pins["tensorflow"]
    for package in ("kfp", "kfp-kubernetes"):
        assert f'"{package}=={pins[package]}"' in dockerfile
    assert re.search(r"^USER 1000", dockerfile, flags=re.MULTILINE)  # never root
    assert "TF_USE_LEGACY_KERAS=1" in dockerfile
    assert "pip install --no-cache-dir ." in dockerfile  # the package with its pinned dependencies


def test_image_bakes_converted_student_weights_without_torch_at_runtime():
    dockerfile = (REPO / "images" / "Dockerfile").read_text()
    build, runtime = re.split(r"^FROM tensorflow/tensorflow:", dockerfile, flags=re.MULTILINE)
    assert re.search(r"^FROM \S+ AS weights$", build, flags=re.MULTILINE)
    for variant in ("lite0", "lite1", "lite2"):
        assert f"mobiletag weights import --variant {variant}" in build
    assert "[weights]" not in runtime and "torch" not in runtime.replace(
        "# student.weights: imagenet reads these; no torch", ""
    )
    assert "COPY --from=weights /weights /opt/mobiletag/weights" in runtime
    assert "MOBILETAG_CACHE_DIR=/opt/mobiletag/weights" in runtime
    assert "KERAS_HOME=/opt/keras" in runtime and "EfficientNetB3(include_top=False, weights='imagenet')" in runtime

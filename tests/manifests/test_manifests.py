"""Kubernetes manifests and the component image, checked without a cluster or a Docker engine."""

from __future__ import annotations

import os
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
    assert container["command"] == ["mobiletag", "submit", "--wait"]  # a run that fails fails the Job
    # the small submit image (placeholder registry; `make schedule` puts in the one of `make images`)
    assert container["image"] == "us-docker.pkg.dev/my-project/mobiletag/mobiletag-submit:0.1.0"
    assert job["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
    assert container["envFrom"][0]["configMapRef"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    from mobiletag.kfp_server.client import PARAMETER_ENV

    assert set(PARAMETER_ENV.values()) <= set(docs["ConfigMap"]["data"])
    token = job["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "pipelines.kubeflow.org"
    binding = docs["RoleBinding"]
    assert (
        binding["subjects"][0]["name"] == "mobiletag-scheduler" and binding["roleRef"]["name"] == "mobiletag-scheduler"
    )


def test_cronjob_is_istio_safe_and_restricted():
    """In a profile namespace with Istio injection the Job must end when `mobiletag submit` does."""
    docs = {d["kind"]: d for d in _rendered()}
    template = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]
    # A native sidecar (Istio >= 1.24, Kubernetes >= 1.29) stops after the container exits.
    assert template["metadata"]["annotations"]["sidecar.istio.io/nativeSidecar"] == "true"
    pod = template["spec"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    # the Kubernetes API token, for --wait's pod list (the account itself mounts none by default)
    assert pod["automountServiceAccountToken"] is True
    assert docs["ServiceAccount"]["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    env = {e["name"]: e for e in container["env"]}
    assert env["MOBILETAG_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_the_cronjob_watches_its_run_and_may_read_its_pods():
    """`submit --wait` needs pods get/list/watch and the KFP verb terminate; the Job must outlast a run
    of days, end before the next weekly trigger, and never resubmit."""
    docs = {d["kind"]: d for d in _rendered()}
    rules = docs["Role"]["rules"]
    granted = {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert {("", "pods", verb) for verb in ("get", "list", "watch")} <= granted
    assert ("pipelines.kubeflow.org", "runs", "terminate") in granted
    assert ("pipelines.kubeflow.org", "runs", "get") in granted
    assert not any(
        resource in ("pods", "pods/exec", "secrets") and verb not in ("get", "list", "watch")
        for _, resource, verb in granted
    )
    cronjob = docs["CronJob"]["spec"]
    job = cronjob["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0  # a new pod would submit a second run
    week = 7 * 24 * 3600
    assert 5 * 24 * 3600 <= job["activeDeadlineSeconds"] < week  # weekly schedule: over before the next trigger
    assert cronjob["schedule"] == "0 3 * * 1" and cronjob["concurrencyPolicy"] == "Forbid"


def test_the_configmap_sets_a_pipeline_root_and_no_gpu_node_pool():
    from mobiletag.kfp_server.client import check_pipeline_root

    data = {d["kind"]: d for d in _rendered()}["ConfigMap"]["data"]
    assert data["MOBILETAG_GPU_NODE_POOL"] == ""  # no node-pool selector: accelerator and GPU request decide
    root = data["MOBILETAG_PIPELINE_ROOT"]
    assert check_pipeline_root(root, "MOBILETAG_PIPELINE_ROOT") == root and root.startswith("gs://")
    assert data["MOBILETAG_GPU_MAX_PENDING_MINUTES"] == ""  # the pipeline's default


def test_workload_identity_is_not_on_the_scheduler():
    """Pipeline pods run as the profile's default-editor: Workload Identity goes there (README), not here."""
    for doc in _rendered():
        annotations = doc["metadata"].get("annotations") or {}
        assert not any(key.startswith("iam.gke.io/") for key in annotations), doc["metadata"]["name"]
        # default-editor belongs to the Kubeflow profile: deleting these manifests must never delete it
        assert doc["metadata"]["name"] != "default-editor"


# ======================================================================================
# Image names: the tag follows the code; make refuses the placeholder registry
# ======================================================================================


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    return subprocess.run([*command, *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def _image_names(repo: Path, what: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("MOBILETAG_REGISTRY", "MOBILETAG_IMAGE_TAG")}
    result = subprocess.run(
        [sys.executable, str(repo / "components" / "image.py"), what],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def small_repo(tmp_path: Path) -> Path:
    """A git checkout with the parts of this repository that name the image."""
    repo = tmp_path / "repo"
    (repo / "components").mkdir(parents=True)
    (repo / "src" / "mobiletag").mkdir(parents=True)
    shutil.copy(REPO / "components" / "image.py", repo / "components" / "image.py")
    (repo / "pyproject.toml").write_text('[project]\nname = "mobiletag"\nversion = "1.2.3"\n')
    (repo / "src" / "mobiletag" / "__init__.py").write_text("x = 1\n")
    (repo / "tests").mkdir()
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    return repo


def test_image_tag_is_version_and_commit_and_changes_with_the_code(small_repo: Path):
    repo = small_repo
    commit = _git(repo, "rev-parse", "HEAD")[:12]
    clean = _image_names(repo, "tag")
    assert clean == f"1.2.3-{commit}"
    assert _image_names(repo, "image") == f"us-docker.pkg.dev/my-project/mobiletag/mobiletag:{clean}"
    assert _image_names(repo, "submit-image", MOBILETAG_REGISTRY="r.example/team/") == (
        f"r.example/team/mobiletag-submit:{clean}"
    )

    # Uncommitted edits: a tag per content, never the clean one.
    (repo / "src" / "mobiletag" / "__init__.py").write_text("x = 2\n")
    dirty = _image_names(repo, "tag")
    assert re.fullmatch(rf"1\.2\.3-{commit}-dirty-[0-9a-f]{{8}}", dirty)
    (repo / "src" / "mobiletag" / "new.py").write_text("y = 1\n")  # an untracked module goes into the image too
    dirtier = _image_names(repo, "tag")
    assert dirtier != dirty and dirtier.startswith(f"1.2.3-{commit}-dirty-")
    (repo / "src" / "mobiletag" / "new.py").unlink()
    assert _image_names(repo, "tag") == dirty  # same content, same tag

    # Committed: the new commit. A commit outside the image's inputs keeps the tag.
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "second")
    second = _git(repo, "rev-parse", "HEAD")[:12]
    assert _image_names(repo, "tag") == f"1.2.3-{second}"
    (repo / "tests" / "test_x.py").write_text("pass\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "tests only")
    assert _image_names(repo, "tag") == f"1.2.3-{second}"

    assert _image_names(repo, "tag", MOBILETAG_IMAGE_TAG="ci-42") == "ci-42"


def test_image_tag_outside_a_git_checkout_is_the_version(small_repo: Path):
    shutil.rmtree(small_repo / ".git")
    assert _image_names(small_repo, "tag") == "1.2.3"
    assert _image_names(small_repo, "tag", MOBILETAG_IMAGE_TAG="1.2.3-abc") == "1.2.3-abc"


def test_this_checkouts_image_matches_the_package_version_and_head():
    import mobiletag

    sys.path.insert(0, str(REPO))
    from components.image import IMAGE, TAG, VERSION

    assert mobiletag.__version__ == VERSION and IMAGE.endswith(f"/mobiletag:{TAG}")
    if (REPO / ".git").exists() and not os.environ.get("MOBILETAG_IMAGE_TAG"):
        assert re.fullmatch(rf"{re.escape(VERSION)}-[0-9a-f]{{12}}(-dirty-[0-9a-f]{{8}})?", TAG)


def _make(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`make` of this repository, without REGISTRY settings inherited from a `make test` around it."""
    dropped = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "REGISTRY", "MOBILETAG_REGISTRY", "MOBILETAG_IMAGE_TAG")
    clean = {k: v for k, v in os.environ.items() if k not in dropped}
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    return subprocess.run(
        [make, "-s", "-C", str(REPO), *args], capture_output=True, text=True, env={**clean, **env}, timeout=120
    )


def test_make_upload_refuses_the_placeholder_registry(tmp_path: Path):
    result = _make("upload", f"REGISTRY_FILE={tmp_path / 'none'}", "DOCKER=false", "KUBECTL=false")
    assert result.returncode != 0
    assert "the image registry is the placeholder us-docker.pkg.dev/my-project/mobiletag" in result.stderr
    assert "make images REGISTRY=<your registry>" in result.stderr
    assert "mobiletag upload" not in result.stdout  # refused before compiling or uploading
    result = _make("schedule", f"REGISTRY_FILE={tmp_path / 'none'}", "KUBECTL=false")
    assert result.returncode != 0 and "placeholder" in result.stderr


def test_make_images_remembers_the_registry_for_the_next_targets(tmp_path: Path):
    registry_file = tmp_path / "registry"
    result = _make("images", "REGISTRY=r.example/team", f"REGISTRY_FILE={registry_file}", "DOCKER=echo docker")
    assert result.returncode == 0, result.stderr
    assert registry_file.read_text() == "r.example/team\n"
    tag = _image_names(REPO, "tag")
    assert f"docker build -f images/Dockerfile -t r.example/team/mobiletag:{tag} ." in result.stdout
    assert f"docker push r.example/team/mobiletag-submit:{tag}" in result.stdout
    assert f"docker build -f images/submit.Dockerfile -t r.example/team/mobiletag-submit:{tag} ." in result.stdout
    assert f"docker build -f images/mediapipe.Dockerfile -t r.example/team/mobiletag-mediapipe:{tag} ." in result.stdout
    assert f"docker push r.example/team/mobiletag-mediapipe:{tag}" in result.stdout

    # make schedule (without REGISTRY) reads it: the CronJob runs the submit image just pushed.
    overlay = tmp_path / "schedule"
    result = _make(
        "schedule", f"REGISTRY_FILE={registry_file}", f"SCHEDULE_DIR={overlay}", "NAMESPACE=team-vision", "KUBECTL=true"
    )
    assert result.returncode == 0, result.stderr
    rendered = subprocess.run(
        [_tool("kubectl"), "kustomize", str(overlay)], capture_output=True, text=True, check=True, timeout=60
    )
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert {d["metadata"]["namespace"] for d in docs} == {"team-vision"}
    (cronjob,) = [d for d in docs if d["kind"] == "CronJob"]
    kubernetes_validate.validate(cronjob, K8S_VERSION, strict=True)
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == f"r.example/team/mobiletag-submit:{tag}"


# ======================================================================================
# Dockerfiles
# ======================================================================================

DOCKERFILES = ("Dockerfile", "submit.Dockerfile", "mediapipe.Dockerfile")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_lints_clean(name):
    result = subprocess.run(
        [_tool("hadolint"), str(REPO / "images" / name)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if any(w.startswith("--from=") for w in words[1:]):
            continue  # from another build stage, not from the context
        sources += args[:-1]
    return sources


def _dockerignore_patterns() -> list[str]:
    path = REPO / ".dockerignore"
    assert path.is_file(), "the build context is the repository root: .dockerignore keeps .venv, .git... out of it"
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: a path is out if it or a parent matches the last matching pattern ('!' re-includes)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(os.path.normpath(pattern.lstrip("!").strip()).lstrip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_matcher_follows_dockers_rules():
    patterns = [".venv", "**/__pycache__", "tests", "docs/*.md", "!docs/keep.md"]
    assert _dockerignored(".venv/bin/python", patterns) and _dockerignored("src/a/__pycache__/x.pyc", patterns)
    assert _dockerignored("docs/a.md", patterns) and not _dockerignored("docs/keep.md", patterns)
    assert not _dockerignored("src/tests_helper.py", patterns) and not _dockerignored("src/a.py", patterns)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_copy_source_is_tracked_and_in_the_build_context(name):
    """A build from a clean clone has only tracked files; .dockerignore must not drop any a COPY needs."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    ).stdout.split("\0")
    tracked = [path for path in tracked if path]
    patterns = _dockerignore_patterns()
    for ignored in (".venv", ".git", "demo", "pipeline.yaml", "tests"):
        assert _dockerignored(ignored, patterns), f"{ignored} belongs out of the build context"
    sources = _copy_sources(REPO / "images" / name)
    assert sources, name
    for source in sources:
        source = source.rstrip("/").removeprefix("./")
        files = [p for p in tracked if p == source or p.startswith(source + "/")]
        assert files, f"images/{name}: COPY {source}: not in git ls-files (a clean clone has no such file)"
        dropped = [p for p in files if _dockerignored(p, patterns)]
        assert dropped == [], f"images/{name}: COPY {source}: .dockerignore drops {dropped}"


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


def test_submit_image_is_small_and_installs_what_pyproject_pins():
    dockerfile = (REPO / "images" / "submit.Dockerfile").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    pins = dict(re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', pyproject))
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, flags=re.MULTILINE)
    for package in ("kfp", "kfp-kubernetes", "pyyaml"):
        assert f'"{package}=={pins[package]}"' in dockerfile
    assert "pip install --no-cache-dir --no-deps ." in dockerfile  # no TensorFlow: the submit path needs none
    instructions = "\n".join(line for line in dockerfile.splitlines() if not line.startswith("#"))
    assert "tensorflow" not in instructions.lower() and "torch" not in instructions.lower()
    assert re.search(r"^USER 1000", dockerfile, flags=re.MULTILINE)


def test_mediapipe_image_keeps_mediapipe_apart_and_installs_what_pyproject_pins():
    from mobiletag.export.mediapipe import IMAGE_INTERPRETER, MEDIAPIPE_VERSION

    dockerfile = (REPO / "images" / "mediapipe.Dockerfile").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    pins = dict(re.findall(r'"([A-Za-z0-9_.-]+)==([^"]+)"', pyproject))
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, flags=re.MULTILINE)
    venv = str(IMAGE_INTERPRETER.parent.parent)  # /opt/mediapipe: where mobiletag.export.mediapipe looks first
    assert f"python -m venv {venv}" in dockerfile
    assert f'{venv}/bin/pip install --no-cache-dir "mediapipe=={MEDIAPIPE_VERSION}"' in dockerfile
    for package in ("kfp", "pyyaml", "pillow", "ai-edge-litert"):
        assert f'"{package}=={pins[package]}"' in dockerfile
    assert "pip install --no-cache-dir --no-deps ." in dockerfile  # no TensorFlow: the stage imports none
    instructions = "\n".join(line for line in dockerfile.splitlines() if not line.startswith("#"))
    assert "tensorflow" not in instructions.lower()
    assert re.search(r"^USER 1000", dockerfile, flags=re.MULTILINE)


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


def test_image_bakes_the_teachers_weights_where_uid_1000_reads_them():
    """tf_keras' get_file ignores KERAS_HOME: the weights go to $MOBILETAG_CACHE_DIR, readable by all."""
    runtime = (REPO / "images" / "Dockerfile").read_text().split("FROM tensorflow/tensorflow:")[1]
    assert "KERAS_HOME" not in runtime and "weights='imagenet'" not in runtime
    line = 'RUN python -c "from mobiletag.models.teacher import download_imagenet_weights; download_imagenet_weights()"'
    assert line in runtime
    after = runtime.split(line)[1]
    assert re.match(r" \\\n\s+&& chmod -R a\+rX /opt/mobiletag/weights\n", after)
    assert runtime.index(line) < runtime.index("USER 1000")

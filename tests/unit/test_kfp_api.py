"""`mobiletag upload` and `submit` (with `--wait`) against stand-in KFP and Kubernetes APIs on loopback.

The stand-in is a real HTTP server speaking the v2beta1 REST endpoints kfp 2.17's Client calls;
it records every request (method, path, query, headers, JSON or multipart body) and, like a
multi-user KFP, refuses requests without the expected bearer token. The tests run the CLI as a
cluster would (projected token file, KF_PIPELINES_ENDPOINT from the ConfigMap) and as a user
outside it would (--token / MOBILETAG_KFP_TOKEN, --cookies).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from mobiletag.cli import main
from mobiletag.kfp_server import watch as kfp_watch

from ..conftest import REPO

API = "/apis/v2beta1"
SA_TOKEN = "projected-sa-token-1"
USER_TOKEN = "user-token-from-outside"
COOKIE = "oauth2_proxy_kubeflow=session-abc"
NAMESPACE = "team-vision"


# ======================================================================================
# The stand-in KFP API
# ======================================================================================


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any = None
    files: dict[str, bytes] = field(default_factory=dict)


class StandIn:
    """An HTTP API on loopback that records every request and answers with JSON from respond()."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                request = Request(self.command, url.path, query, {k.lower(): v for k, v in self.headers.items()})
                ctype = self.headers.get("Content-Type", "")
                if raw and ctype.startswith("multipart/form-data"):
                    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        f"Content-Type: {ctype}\r\n\r\n".encode() + raw
                    )
                    for part in message.iter_parts():
                        request.files[part.get_param("name", header="content-disposition")] = part.get_payload(
                            decode=True
                        )
                elif raw:
                    request.json = json.loads(raw)
                with fake._lock:
                    fake.requests.append(request)
                    status, body = fake.respond(request)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def respond(self, r: Request) -> tuple[int, dict[str, Any]]:
        raise NotImplementedError


class FakeKfp(StandIn):
    """A KFP v2beta1 API with pipelines, versions, experiments, runs and recurring runs in memory."""

    def __init__(self, *, tokens: tuple[str, ...] = (SA_TOKEN,), cookie: str | None = None, multi_user: bool = True):
        super().__init__()
        self.tokens, self.cookie, self.multi_user = tokens, cookie, multi_user
        self.pipelines: list[dict[str, Any]] = []
        self.versions: dict[str, list[dict[str, Any]]] = {}
        self.experiments: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []
        self.recurring_runs: list[dict[str, Any]] = []
        # run states that GET /runs/{id} answers in turn (the last one repeats); terminate: CANCELING
        self.run_states: list[str] = ["RUNNING"]
        self.terminated: list[str] = []
        self._clock = 0

    # --- state -------------------------------------------------------------------------

    def _now(self) -> str:
        self._clock += 1
        return f"2026-01-01T00:00:{self._clock:02d}Z"

    def add_pipeline(self, name: str, namespace: str = "", versions: int = 1) -> dict[str, Any]:
        pipeline = {
            "pipeline_id": f"p{len(self.pipelines) + 1}",
            "display_name": name,
            "namespace": namespace,
            "created_at": self._now(),
        }
        self.pipelines.append(pipeline)
        self.versions[pipeline["pipeline_id"]] = []
        for i in range(versions):
            self.add_version(pipeline["pipeline_id"], name if i == 0 else f"{name}-v{i + 1}")
        return pipeline

    def add_version(self, pipeline_id: str, name: str, spec: dict[str, Any] | None = None) -> dict[str, Any]:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": f"{pipeline_id}-v{len(self.versions[pipeline_id]) + 1}",
            "display_name": name,
            "created_at": self._now(),
        }
        if spec is not None:
            version["pipeline_spec"] = spec
        self.versions[pipeline_id].append(version)
        return version

    # --- the API -----------------------------------------------------------------------

    def respond(self, r: Request) -> tuple[int, dict[str, Any]]:
        auth = r.headers.get("authorization", "")
        if not any(auth == f"Bearer {t}" for t in self.tokens) and not (
            self.cookie and self.cookie in r.headers.get("cookie", "")
        ):
            return 401, {"code": 16, "message": "Unauthenticated: no valid bearer token or session cookie"}
        path, q = r.path, r.query
        if r.method == "GET" and path == f"{API}/healthz":
            return 200, {"multi_user": self.multi_user}
        if r.method == "GET" and path == f"{API}/pipelines":
            namespace = q.get("namespace", "")
            found = [p for p in self.pipelines if p["namespace"] == namespace and _matches(q, p)]
            return 200, {"pipelines": found, "total_size": len(found)}
        if r.method == "POST" and path == f"{API}/pipelines/upload":
            name, namespace = q["name"], q.get("namespace", "")
            if any(p["display_name"] == name and p["namespace"] == namespace for p in self.pipelines):
                return 409, {"code": 6, "message": f"pipeline {name} already exists in namespace '{namespace}'"}
            return 200, self.add_pipeline(name, namespace)
        if r.method == "POST" and path == f"{API}/pipelines/upload_version":
            if q.get("pipelineid") not in self.versions:
                return 404, {"code": 5, "message": "no such pipeline"}
            return 200, self.add_version(q["pipelineid"], q["name"])
        if r.method == "GET" and path.startswith(f"{API}/pipelines/") and "/versions/" in path:
            pipeline_id, version_id = path.split("/")[-3], path.split("/")[-1]
            found = [v for v in self.versions.get(pipeline_id, []) if v["pipeline_version_id"] == version_id]
            return (200, found[0]) if found else (404, {"code": 5, "message": "no such version"})
        if r.method == "GET" and path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
            versions = self.versions.get(path.split("/")[-2])
            if versions is None:
                return 404, {"code": 5, "message": "no such pipeline"}
            ordered = sorted(versions, key=lambda v: v["created_at"], reverse="desc" in q.get("sort_by", ""))
            size = int(q.get("page_size") or 10)
            return 200, {"pipeline_versions": ordered[:size], "total_size": len(versions)}
        if r.method == "GET" and path == f"{API}/experiments":
            namespace = q.get("namespace", "")
            found = [e for e in self.experiments if e["namespace"] == namespace and _matches(q, e)]
            return 200, {"experiments": found, "total_size": len(found)}
        if r.method == "POST" and path == f"{API}/experiments":
            experiment = {**r.json, "experiment_id": f"e{len(self.experiments) + 1}"}
            experiment.setdefault("namespace", "")
            self.experiments.append(experiment)
            return 200, experiment
        if r.method == "POST" and path == f"{API}/runs":
            run = {**r.json, "run_id": f"r{len(self.runs) + 1}"}
            self.runs.append(run)
            return 200, run
        if r.method == "GET" and path.startswith(f"{API}/runs/"):
            found = [run for run in self.runs if run["run_id"] == path.split("/")[-1]]
            if not found:
                return 404, {"code": 5, "message": "no such run"}
            state = self.run_states.pop(0) if len(self.run_states) > 1 else self.run_states[0]
            found[0]["state"] = state
            return 200, found[0]
        if r.method == "POST" and path.startswith(f"{API}/runs/") and path.endswith(":terminate"):
            run_id = path.split("/")[-1].removesuffix(":terminate")
            self.terminated.append(run_id)
            self.run_states = ["CANCELING"]
            return 200, {}
        if r.method == "POST" and path == f"{API}/recurringruns":
            recurring = {**r.json, "recurring_run_id": f"rr{len(self.recurring_runs) + 1}"}
            self.recurring_runs.append(recurring)
            return 200, recurring
        return 404, {"code": 5, "message": f"no route {r.method} {path}"}


def _matches(query: dict[str, str], item: dict[str, Any]) -> bool:
    if not query.get("filter"):
        return True
    for predicate in json.loads(query["filter"]).get("predicates", []):
        assert predicate["operation"] in ("EQUALS", 1), predicate
        if item.get(predicate["key"]) != predicate["stringValue"]:
            return False
    return True


@pytest.fixture
def kfp_api() -> Iterator[FakeKfp]:
    fake = FakeKfp()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No KFP / mobiletag settings from the machine running the tests."""
    for name in list(os.environ):
        if (name.startswith(("MOBILETAG_", "KF_PIPELINES_")) and name != "MOBILETAG_CACHE_DIR") or name in (
            "KUBERNETES_SERVICE_HOST",
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MOBILETAG_DATA_URI", "gs://bucket/photos")
    return monkeypatch


@pytest.fixture
def in_cluster(clean_env: pytest.MonkeyPatch, kfp_api: FakeKfp, tmp_path: Path) -> Path:
    """The CronJob's environment: KF_PIPELINES_ENDPOINT from the ConfigMap, the projected token file."""
    token = tmp_path / "kubeflow-token"
    token.write_text(SA_TOKEN + "\n")
    clean_env.setenv("KF_PIPELINES_ENDPOINT", kfp_api.url)
    clean_env.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    return token


@pytest.fixture
def package(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text("# compiled pipeline stand-in\npipelineInfo: {name: mobiletag}\n")
    return path


def _api_requests(fake: FakeKfp) -> list[Request]:
    return [r for r in fake.requests if r.path.startswith(API)]


def _assert_all_authenticated(fake: FakeKfp, header: str = f"Bearer {SA_TOKEN}") -> None:
    requests = _api_requests(fake)
    assert requests, "no request reached the API"
    unauthenticated = [f"{r.method} {r.path}" for r in requests if r.headers.get("authorization") != header]
    assert unauthenticated == [], f"sent without {header!r}"


# ======================================================================================
# In the cluster: the projected service-account token
# ======================================================================================


def test_upload_in_cluster_sends_the_token_and_finds_the_private_pipeline_again(in_cluster, kfp_api, package):
    assert main(["upload", "--package", str(package), "--namespace", NAMESPACE, "--version", "v1"]) == 0
    first = [r for r in kfp_api.requests if r.path == f"{API}/pipelines/upload"]
    assert len(first) == 1
    assert first[0].query == {"name": "mobiletag", "namespace": NAMESPACE}
    assert first[0].files["uploadfile"] == package.read_bytes()
    assert kfp_api.pipelines[0]["namespace"] == NAMESPACE  # private to the profile

    # The second upload must find the private pipeline (kfp's get_pipeline_id lists shared ones only).
    assert main(["upload", "--package", str(package), "--namespace", NAMESPACE, "--version", "v2"]) == 0
    second = [r for r in kfp_api.requests if r.path == f"{API}/pipelines/upload_version"]
    assert len(second) == 1
    assert second[0].query == {"name": "v2", "pipelineid": "p1"}
    assert [v["display_name"] for v in kfp_api.versions["p1"]] == ["mobiletag", "v2"]
    lookups = [r.query.get("namespace") for r in kfp_api.requests if r.path == f"{API}/pipelines"]
    assert lookups[0] == NAMESPACE
    _assert_all_authenticated(kfp_api)


def test_token_file_is_read_again_for_every_request(in_cluster, kfp_api, package):
    """The kubelet rotates the projected token: the client must not keep the first one."""
    kfp_api.tokens = (SA_TOKEN, "rotated-token")
    original = kfp_api.respond

    def rotate_after_first(request: Request) -> tuple[int, dict[str, Any]]:
        in_cluster.write_text("rotated-token")
        return original(request)

    kfp_api.respond = rotate_after_first  # type: ignore[method-assign]
    assert main(["upload", "--package", str(package), "--namespace", NAMESPACE]) == 0
    headers = [r.headers["authorization"] for r in _api_requests(kfp_api)]
    assert headers[0] == f"Bearer {SA_TOKEN}" and set(headers[1:]) == {"Bearer rotated-token"}


def test_submit_in_cluster_runs_the_newest_version_in_the_namespace(in_cluster, kfp_api):
    kfp_api.add_pipeline("mobiletag", namespace="", versions=1)  # a shared one of the same name
    private = kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE, versions=3)
    assert main(["submit", "--namespace", NAMESPACE, "--run-name", "weekly"]) == 0
    _assert_all_authenticated(kfp_api)
    (experiment,) = kfp_api.experiments
    assert experiment["namespace"] == NAMESPACE and experiment["display_name"] == "mobiletag"
    (run,) = kfp_api.runs
    assert run["experiment_id"] == experiment["experiment_id"] and run["display_name"] == "weekly"
    assert run["pipeline_version_reference"] == {
        "pipeline_id": private["pipeline_id"],
        "pipeline_version_id": kfp_api.versions[private["pipeline_id"]][-1]["pipeline_version_id"],
    }
    assert run["runtime_config"]["parameters"] == {"data_uri": "gs://bucket/photos"}


def test_submit_cron_follows_the_newest_version_without_catch_up(in_cluster, kfp_api):
    pipeline = kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE, versions=2)
    assert main(["submit", "--namespace", NAMESPACE, "--cron", "0 0 3 * * 1", "--run-name", "weekly"]) == 0
    _assert_all_authenticated(kfp_api)
    (recurring,) = kfp_api.recurring_runs
    # Only the pipeline id: KFP >= 2.5 runs the newest version at every trigger.
    assert recurring["pipeline_version_reference"] == {"pipeline_id": pipeline["pipeline_id"]}
    assert recurring["no_catchup"] is True
    assert int(recurring["max_concurrency"]) == 1
    assert recurring["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert recurring["mode"] == "ENABLE"
    assert recurring["experiment_id"] == kfp_api.experiments[0]["experiment_id"]
    assert kfp_api.experiments[0]["namespace"] == NAMESPACE
    assert recurring["runtime_config"]["parameters"] == {"data_uri": "gs://bucket/photos"}
    assert not any(r.path.endswith("/versions") for r in kfp_api.requests)  # nothing pinned


def test_submit_cron_pin_version_keeps_the_newest_version_of_today(in_cluster, kfp_api):
    pipeline = kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE, versions=3)
    newest = kfp_api.versions[pipeline["pipeline_id"]][-1]["pipeline_version_id"]
    assert main(["submit", "--namespace", NAMESPACE, "--cron", "0 0 3 * * 1", "--pin-version"]) == 0
    _assert_all_authenticated(kfp_api)
    (recurring,) = kfp_api.recurring_runs
    assert recurring["pipeline_version_reference"] == {
        "pipeline_id": pipeline["pipeline_id"],
        "pipeline_version_id": newest,
    }
    assert recurring["no_catchup"] is True and int(recurring["max_concurrency"]) == 1


def test_submit_cron_of_a_package_sends_its_spec_without_catch_up(in_cluster, kfp_api, tmp_path):
    package = tmp_path / "tiny.yaml"  # a pipeline spec as kfp's compiler writes one, smallest form
    package.write_text(
        "pipelineInfo: {name: tiny}\n"
        "root:\n  inputDefinitions:\n    parameters:\n      data_uri: {parameterType: STRING}\n"
        "schemaVersion: 2.1.0\nsdkVersion: kfp-2.17.3\n"
    )
    assert main(["submit", "--namespace", NAMESPACE, "--package", str(package), "--cron", "0 0 3 * * 1"]) == 0
    _assert_all_authenticated(kfp_api)
    (recurring,) = kfp_api.recurring_runs
    assert recurring["pipeline_spec"]["pipelineInfo"]["name"] == "tiny"
    assert "pipeline_version_reference" not in recurring
    assert recurring["no_catchup"] is True and int(recurring["max_concurrency"]) == 1
    assert not any(r.path.startswith(f"{API}/pipelines") for r in kfp_api.requests)  # no look-up needed


def test_a_missing_pipeline_creates_nothing(in_cluster, kfp_api, capsys):
    assert main(["submit", "--namespace", NAMESPACE]) == 2
    assert f"no pipeline named 'mobiletag' on {kfp_api.url} in namespace {NAMESPACE} or shared" in (
        capsys.readouterr().err
    )
    assert kfp_api.experiments == [] and kfp_api.runs == []


def test_a_five_field_cron_is_refused_before_anything_is_sent(in_cluster, kfp_api, capsys):
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE)
    assert main(["submit", "--namespace", NAMESPACE, "--cron", "0 3 * * 1"]) == 2
    err = capsys.readouterr().err
    assert "6, seconds first" in err and "write '0 0 3 * * 1'" in err
    assert kfp_api.requests == []


def test_no_namespace_multi_user_takes_the_pods_namespace_and_writes_nothing(
    in_cluster, kfp_api, tmp_path, monkeypatch
):
    """kfp finds the namespace itself and would save it to ~/.config/kfp/context.json.

    The context path lies under a file here, so writing it fails even for root, as it does under
    the CronJob's read-only root filesystem.
    """
    import kfp

    pod_namespace = tmp_path / "namespace"
    pod_namespace.write_text(NAMESPACE)
    blocker = tmp_path / "home-is-a-file"
    blocker.write_text("")
    context = blocker / ".config" / "kfp" / "context.json"
    monkeypatch.setattr(kfp.Client, "_NAMESPACE_PATH", str(pod_namespace))
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(context))
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE)
    assert main(["submit", "--cron", "0 0 3 * * 1"]) == 0
    _assert_all_authenticated(kfp_api)
    assert [r.path for r in kfp_api.requests][0] == f"{API}/healthz"
    assert kfp_api.experiments[0]["namespace"] == NAMESPACE
    assert len(kfp_api.recurring_runs) == 1


# ======================================================================================
# From outside the cluster: --token / MOBILETAG_KFP_TOKEN, --cookies
# ======================================================================================


@pytest.mark.parametrize("via", ["flag", "environment"])
def test_outside_the_cluster_the_users_token_is_sent(clean_env, kfp_api, package, via):
    kfp_api.tokens = (USER_TOKEN,)
    args = ["upload", "--host", kfp_api.url, "--package", str(package), "--namespace", NAMESPACE]
    if via == "flag":
        args += ["--token", USER_TOKEN]
    else:
        clean_env.setenv("MOBILETAG_KFP_TOKEN", USER_TOKEN)
    assert main(args) == 0
    _assert_all_authenticated(kfp_api, f"Bearer {USER_TOKEN}")
    assert main(["submit", "--host", kfp_api.url, "--namespace", NAMESPACE, "--cron", "0 0 3 * * 1", *args[7:]]) == 0
    _assert_all_authenticated(kfp_api, f"Bearer {USER_TOKEN}")
    assert kfp_api.recurring_runs[0]["pipeline_version_reference"] == {"pipeline_id": "p1"}


def test_outside_the_cluster_a_session_cookie_is_sent(clean_env, kfp_api):
    kfp_api.tokens, kfp_api.cookie = (), COOKIE
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE)
    args = ["submit", "--host", kfp_api.url, "--namespace", NAMESPACE, "--cookies", COOKIE]
    assert main(args) == 0
    assert {r.headers.get("cookie") for r in _api_requests(kfp_api)} == {COOKIE}
    assert len(kfp_api.runs) == 1


def test_a_refused_token_is_one_clear_line_not_unreachable(clean_env, kfp_api, capsys):
    args = ["submit", "--host", kfp_api.url, "--namespace", NAMESPACE, "--token", "expired"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "401" in err and "--token" in err
    assert "cannot reach" not in err and "Traceback" not in err


def test_an_unreachable_api_says_so(clean_env, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["submit", "--host", f"http://127.0.0.1:{port}", "--namespace", NAMESPACE, "--token", "t"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach the Kubeflow Pipelines API at http://127.0.0.1:{port}" in err


def test_a_named_token_file_that_is_missing_is_an_error(clean_env, kfp_api, tmp_path, capsys):
    clean_env.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "missing"))
    assert main(["submit", "--host", kfp_api.url, "--namespace", NAMESPACE]) == 2
    err = capsys.readouterr().err
    assert f"KF_PIPELINES_SA_TOKEN_PATH is {tmp_path / 'missing'}, which is not a file" in err
    assert kfp_api.requests == []


def test_no_host_outside_a_cluster_says_how_to_give_one(clean_env, capsys):
    assert main(["submit", "--namespace", NAMESPACE]) == 2
    assert "pass --host or set KF_PIPELINES_ENDPOINT" in capsys.readouterr().err


# ======================================================================================
# As the CronJob runs it: another process, non-root, read-only HOME, no TensorFlow
# ======================================================================================

# Runs the CLI as the submit image would: tensorflow, tf_keras, numpy... are not installed there.
_SUBMIT_SCRIPT = r"""
import json, sys
ABSENT = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "keras", "numpy", "ai_edge_litert", "sklearn", "PIL")
class NotInTheSubmitImage:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ImportError(f"{name} is not installed in the submit image")
        return None
sys.meta_path.insert(0, NotInTheSubmitImage())
import kfp
kfp.Client._NAMESPACE_PATH = sys.argv[1]  # the pod's namespace file
from mobiletag.cli import main
code = main(sys.argv[2:])
print("HEAVY_MODULES=" + json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ABSENT)))
sys.exit(code)
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A temporary folder that another uid can read (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="mobiletag-kfp-api-"))
    path.chmod(0o755)
    yield path
    for sub in path.rglob("*"):
        if sub.is_dir():
            sub.chmod(0o755)
    shutil.rmtree(path, ignore_errors=True)


def _run_as_cronjob(kfp_api: FakeKfp, shared_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    token = shared_dir / "token"
    token.write_text(SA_TOKEN)
    pod_namespace = shared_dir / "namespace"
    pod_namespace.write_text(NAMESPACE)
    for path in (token, pod_namespace):
        path.chmod(0o644)
    home = shared_dir / "home"
    home.mkdir()
    home.chmod(0o555)  # read-only, owned by another user than the one running the command
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "PYTHONDONTWRITEBYTECODE": "1",
        "KF_PIPELINES_ENDPOINT": kfp_api.url,
        "KF_PIPELINES_SA_TOKEN_PATH": str(token),
        "MOBILETAG_DATA_URI": "gs://bucket/photos",
    }
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    command = [sys.executable, "-c", _SUBMIT_SCRIPT, str(pod_namespace), *args]
    if os.geteuid() == 0:
        # root writes anywhere; without CAP_DAC_OVERRIDE it obeys file modes as the image's uid 1000
        # would (switching uid here is no option: the interpreter may live under root's 0700 HOME).
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv (util-linux): cannot make HOME read-only for root")
        dropped = "-dac_override,-dac_read_search"
        command = [setpriv, "--bounding-set", dropped, "--inh-caps", dropped, *command]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=str(shared_dir), timeout=120)
    return result, home


def test_cronjob_submit_as_non_root_with_a_read_only_home_succeeds(kfp_api, shared_dir):
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE)
    result, home = _run_as_cronjob(kfp_api, shared_dir, "submit")  # no --namespace: as kfp would find it
    assert result.returncode == 0, result.stderr
    assert "cannot reach" not in result.stderr
    assert list(home.iterdir()) == []  # nothing written to HOME
    _assert_all_authenticated(kfp_api)
    assert kfp_api.experiments[0]["namespace"] == NAMESPACE and len(kfp_api.runs) == 1


def test_submit_path_never_imports_tensorflow(kfp_api, shared_dir):
    """images/submit.Dockerfile installs mobiletag without its dependencies: the path must not need them."""
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE)
    config = shared_dir / "overrides.yaml"
    config.write_text("student: {epochs: 3}\n")
    config.chmod(0o644)
    result, _ = _run_as_cronjob(
        kfp_api, shared_dir, "submit", "--namespace", NAMESPACE, "--cron", "0 0 3 * * 1", "--config", str(config)
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY_MODULES=[]" in result.stdout
    assert kfp_api.recurring_runs[0]["runtime_config"]["parameters"]["config_overrides"] == config.read_text()
    _assert_all_authenticated(kfp_api)


def test_the_cronjob_manifest_gives_what_submit_reads():
    """The env the tests above use is the one manifests/cronjob.yaml sets."""
    import yaml

    job = yaml.safe_load((REPO / "manifests" / "cronjob.yaml").read_text())["spec"]["jobTemplate"]["spec"]
    container = job["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["kfp-token"]
    assert env["KF_PIPELINES_SA_TOKEN_PATH"]["value"] == f"{mount}/token"
    assert env["MOBILETAG_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_submit_passes_the_gpu_steps_resources_as_text(in_cluster, kfp_api, monkeypatch):
    """Per-run CPU / memory of the GPU steps: a flag, else the ConfigMap's variable; empty = the default."""
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE, versions=1)
    monkeypatch.setenv("MOBILETAG_TEACHER_MEMORY", "160Gi")
    monkeypatch.setenv("MOBILETAG_QAT_CPU", "")
    args = ["submit", "--namespace", NAMESPACE, "--teacher-cpu", "44", "--student-memory", "100Gi"]
    assert main(args) == 0
    (run,) = kfp_api.runs
    assert run["runtime_config"]["parameters"] == {
        "data_uri": "gs://bucket/photos",
        "teacher_cpu": "44",
        "teacher_memory": "160Gi",
        "student_memory": "100Gi",
    }


def test_submit_passes_baseline_student_as_a_boolean(in_cluster, kfp_api, monkeypatch, capsys):
    """The baseline-student switch: a flag, else the ConfigMap's variable (true/false/1/0); anything
    else is refused before a run starts, naming the flag and the variable."""
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE, versions=1)
    monkeypatch.setenv("MOBILETAG_BASELINE_STUDENT", "0")
    assert main(["submit", "--namespace", NAMESPACE]) == 0
    assert main(["submit", "--namespace", NAMESPACE, "--baseline-student", "true"]) == 0
    assert [run["runtime_config"]["parameters"]["baseline_student"] for run in kfp_api.runs] == [False, True]
    monkeypatch.setenv("MOBILETAG_BASELINE_STUDENT", "maybe")
    assert main(["submit", "--namespace", NAMESPACE]) == 2
    assert "baseline_student (flag or MOBILETAG_BASELINE_STUDENT) is 'maybe'" in capsys.readouterr().err
    assert len(kfp_api.runs) == 2


# ======================================================================================
# The pipeline root: every run and recurring run names where its artifacts go
# ======================================================================================

TINY_SPEC = (
    "pipelineInfo: {name: tiny}\n"
    "root:\n  inputDefinitions:\n    parameters:\n      data_uri: {parameterType: STRING}\n"
    "schemaVersion: 2.1.0\nsdkVersion: kfp-2.17.3\n"
)


@pytest.mark.parametrize(
    "how",
    ["run", "run of a package", "recurring run following the newest version", "recurring run pinned"],
)
def test_submit_sends_the_pipeline_root_with_every_run(in_cluster, kfp_api, tmp_path, how):
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE, versions=2)
    args = ["submit", "--namespace", NAMESPACE, "--data-uri", "gs://b/p", "--pipeline-root", "gs://b/root"]
    if "package" in how:
        package = tmp_path / "tiny.yaml"
        package.write_text(TINY_SPEC)
        args += ["--package", str(package)]
    if "recurring" in how:
        args += ["--cron", "0 0 3 * * 1"] + (["--pin-version"] if "pinned" in how else [])
    assert main(args) == 0
    _assert_all_authenticated(kfp_api)
    (created,) = kfp_api.recurring_runs if "recurring" in how else kfp_api.runs
    assert created["runtime_config"] == {"parameters": {"data_uri": "gs://b/p"}, "pipeline_root": "gs://b/root"}


def test_the_pipeline_root_comes_from_the_configmaps_variable(in_cluster, kfp_api, monkeypatch):
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE)
    monkeypatch.setenv("MOBILETAG_PIPELINE_ROOT", "s3://bucket/kfp")
    assert main(["submit", "--namespace", NAMESPACE]) == 0
    assert main(["submit", "--namespace", NAMESPACE, "--pipeline-root", "minio://other/root"]) == 0  # flag wins
    assert [run["runtime_config"]["pipeline_root"] for run in kfp_api.runs] == ["s3://bucket/kfp", "minio://other/root"]


def test_without_a_pipeline_root_submit_says_where_artifacts_go(in_cluster, kfp_api, caplog):
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE)
    with caplog.at_level("WARNING", logger="mobiletag"):
        assert main(["submit", "--namespace", NAMESPACE]) == 0
    (run,) = kfp_api.runs
    assert "pipeline_root" not in run["runtime_config"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("no pipeline root (--pipeline-root or MOBILETAG_PIPELINE_ROOT)")
    assert f"kfp-launcher ConfigMap of namespace {NAMESPACE}" in warning
    assert "minio://mlpipeline/v2/artifacts" in warning and "20 GiB" in warning
    assert f"kubectl -n {NAMESPACE} patch configmap kfp-launcher" in warning and "defaultPipelineRoot" in warning


@pytest.mark.parametrize(
    ("flag", "env", "named"),
    [
        ("/mnt/artifacts", None, "--pipeline-root"),
        ("gs://", None, "--pipeline-root"),
        (None, "https://storage.googleapis.com/b/root", "MOBILETAG_PIPELINE_ROOT"),
    ],
)
def test_a_pipeline_root_outside_an_object_store_is_refused(in_cluster, kfp_api, monkeypatch, capsys, flag, env, named):
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE)
    if env:
        monkeypatch.setenv("MOBILETAG_PIPELINE_ROOT", env)
    assert main(["submit", "--namespace", NAMESPACE, *(["--pipeline-root", flag] if flag else [])]) == 2
    err = capsys.readouterr().err
    assert f"the pipeline root ({named}) is {flag or env!r}: it must be an object-store URI" in err
    assert "gs://<bucket>/<prefix>, s3://<bucket>/<prefix>, minio://<bucket>/<prefix>" in err
    assert kfp_api.requests == []


def test_local_docker_runs_hand_the_containers_a_run_id(monkeypatch, tmp_path):
    """kfp.local applies no Kubernetes field-path env and DockerRunner does not pass this process's
    environment on: the training steps' run id (for their backups) must be given to the containers."""
    import kfp.local

    from mobiletag.runners import kfp_local

    seen = {}

    class Stop(Exception):
        pass

    def fake_docker_runner(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(kfp.local, "DockerRunner", fake_docker_runner)
    monkeypatch.delenv(kfp_local.RUN_ID_ENV, raising=False)
    with pytest.raises(Stop):
        kfp_local.run_local(str(tmp_path), str(tmp_path / "out"), runner="docker", work_dir=str(tmp_path / "work"))
    run_id = seen["environment"][kfp_local.RUN_ID_ENV]
    assert run_id.startswith("local-") and run_id == os.environ[kfp_local.RUN_ID_ENV]
    monkeypatch.delenv(kfp_local.RUN_ID_ENV)


# ======================================================================================
# submit --wait: the run's state from the KFP API, its pods from a stand-in Kubernetes API
# ======================================================================================
# The real kubernetes client reaches the stand-in through a kubeconfig file, as from a
# workstation; the watch's clock is a fake that advances 20 minutes per poll, so an hour of
# Pending takes milliseconds.

K8S_TOKEN = "kubeconfig-user-token"
CREATED = "2026-01-05T03:00:00Z"  # when the stand-in's pods were created
CREATED_EPOCH = 1767582000.0
SCHEDULER = (
    "0/5 nodes are available: 1 node(s) had untolerated taint {node-role: system}, 4 Insufficient nvidia.com/gpu. "
    "preemption: 0/5 nodes are available: 5 No preemption victims found for incoming pod."
)
POLL_MINUTES = 20.0


class FakeKube(StandIn):
    """GET /api/v1/namespaces/<ns>/pods?labelSelector=k=v: a PodList of the pods whose label matches."""

    def __init__(self) -> None:
        super().__init__()
        self.pods: list[dict[str, Any]] = []

    def respond(self, r: Request) -> tuple[int, dict[str, Any]]:
        parts = r.path.strip("/").split("/")
        if r.headers.get("authorization") != f"Bearer {K8S_TOKEN}":
            return 401, {"kind": "Status", "code": 401, "message": "Unauthorized"}
        if r.method == "GET" and parts[:3] == ["api", "v1", "namespaces"] and parts[4:] == ["pods"]:
            key, _, value = r.query.get("labelSelector", "").partition("=")
            items = [
                p
                for p in self.pods
                if p["metadata"]["namespace"] == parts[3] and p["metadata"]["labels"].get(key) == value
            ]
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
        return 404, {"kind": "Status", "code": 404, "message": "not found"}

    def add_pod(self, task: str, run_id: str, *, phase: str, gpus: int = 0, scheduled: bool = True) -> None:
        """The pod of a KFP v2 task: Argo names its node <workflow>.root.<task>.executor."""
        name = f"mobiletag-x-{task}"
        resources = {"limits": {"nvidia.com/gpu": str(gpus)}, "requests": {"cpu": "14"}} if gpus else {}
        conditions = [
            {
                "type": "PodScheduled",
                "status": "True" if scheduled else "False",
                "lastTransitionTime": CREATED,
                **({} if scheduled else {"reason": "Unschedulable", "message": SCHEDULER}),
            }
        ]
        self.pods.append(
            {
                "metadata": {
                    "name": name,
                    "namespace": NAMESPACE,
                    "labels": {"pipeline/runid": run_id},
                    "annotations": {"workflows.argoproj.io/node-name": f"mobiletag-x.root.{task}.executor"},
                    "creationTimestamp": CREATED,
                },
                "spec": {"containers": [{"name": "main", "image": "mobiletag", "resources": resources}]},
                "status": {"phase": phase, "conditions": conditions},
            }
        )


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeKube]:
    fake = FakeKube()
    fake.thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "stand-in", "cluster": {"server": fake.url}}],
                "users": [{"name": "me", "user": {"token": K8S_TOKEN}}],
                "contexts": [{"name": "here", "context": {"cluster": "stand-in", "user": "me"}}],
                "current-context": "here",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def watching(in_cluster: Path, monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """The CronJob's KFP settings and a pipeline root; a fake clock for the watch."""
    monkeypatch.setenv("MOBILETAG_PIPELINE_ROOT", "gs://b/root")
    clock = [CREATED_EPOCH + 6]
    monkeypatch.setattr(kfp_watch, "_now", lambda: clock[0])
    monkeypatch.setattr(kfp_watch, "_sleep", lambda seconds: clock.__setitem__(0, clock[0] + POLL_MINUTES * 60))
    return monkeypatch


def _spec_with_max_pending(minutes: int) -> dict[str, Any]:
    """The parts of a compiled spec that submit reads: the parameter's default."""
    parameters = {
        "data_uri": {"parameterType": "STRING"},
        "gpu_max_pending_minutes": {"parameterType": "NUMBER_INTEGER", "defaultValue": minutes},
    }
    return {"pipelineInfo": {"name": "mobiletag"}, "root": {"inputDefinitions": {"parameters": parameters}}}


def _polls(kfp_api: FakeKfp) -> int:
    return sum(1 for r in kfp_api.requests if r.method == "GET" and r.path.startswith(f"{API}/runs/"))


def test_a_gpu_step_that_cannot_schedule_is_reported_once_and_stops_the_run(watching, kfp_api, kube, caplog, capsys):
    pipeline = kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE, versions=0)
    kfp_api.add_version(pipeline["pipeline_id"], "v1", spec=_spec_with_max_pending(60))  # the pipeline's default
    kube.add_pod("resolve-config", "r1", phase="Succeeded")
    kube.add_pod("train-teacher", "r1", phase="Pending", gpus=4, scheduled=False)
    kube.add_pod("other-run", "r9", phase="Pending", gpus=4, scheduled=False)
    with caplog.at_level("INFO", logger="mobiletag"):
        code = main(["submit", "--namespace", NAMESPACE, "--wait", "--poll-seconds", "1"])
    err = capsys.readouterr().err
    assert code == kfp_watch.RUN_FAILED_EXIT == 1
    # polls at 0.1, 20.1, 40.1 and 60.1 min of Pending: the 4th is over 60 min and stops the run
    assert _polls(kfp_api) == 4 and kfp_api.terminated == ["r1"]
    reports = [r.getMessage() for r in caplog.records if SCHEDULER in r.getMessage()]
    assert reports == [
        "run r1: pod mobiletag-x-train-teacher (mobiletag-x.root.train-teacher.executor) Pending for 6 s: "
        f"not scheduled (Unschedulable): {SCHEDULER}"
    ]
    assert (
        "stopped run r1: GPU pod mobiletag-x-train-teacher (mobiletag-x.root.train-teacher.executor) was "
        f"Pending for 60 min, longer than gpu_max_pending_minutes=60: not scheduled (Unschedulable): {SCHEDULER} "
        "To let it schedule: a node pool must have nodes with as many GPUs as the step asks" in err
    )
    assert "GPU quota" in err and "lower teacher_gpus / student_gpus" in err
    # every pod list asked for this run's label in the run's namespace, with the kubeconfig's credentials
    paths = {(r.path, r.query["labelSelector"], r.headers["authorization"]) for r in kube.requests}
    assert paths == {
        (f"/api/v1/namespaces/{NAMESPACE}/pods", "pipeline/runid=none", f"Bearer {K8S_TOKEN}"),  # access check
        (f"/api/v1/namespaces/{NAMESPACE}/pods", "pipeline/runid=r1", f"Bearer {K8S_TOKEN}"),
    }
    (run,) = kfp_api.runs
    assert run["runtime_config"] == {"parameters": {"data_uri": "gs://bucket/photos"}, "pipeline_root": "gs://b/root"}


def test_the_runs_own_limit_is_used_and_a_cpu_pod_only_reported(watching, kfp_api, kube, caplog, capsys):
    """--gpu-max-pending-minutes goes into the run and decides; a Pending pod without GPU never stops it."""
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE)
    kube.add_pod("prepare-dataset", "r1", phase="Pending", scheduled=False)
    kfp_api.run_states = ["RUNNING"] * 6 + ["SUCCEEDED"]
    with caplog.at_level("WARNING", logger="mobiletag"):
        args = ["submit", "--namespace", NAMESPACE, "--wait", "--poll-seconds", "1", "--gpu-max-pending-minutes", "30"]
        assert main(args) == 0
    assert kfp_api.runs[0]["runtime_config"]["parameters"]["gpu_max_pending_minutes"] == 30
    assert kfp_api.terminated == [] and _polls(kfp_api) == 7
    assert [r.getMessage() for r in caplog.records].count(
        f"run r1: pod mobiletag-x-prepare-dataset (mobiletag-x.root.prepare-dataset.executor) Pending for 6 s: "
        f"not scheduled (Unschedulable): {SCHEDULER}"
    ) == 1
    assert "run r1 ended SUCCEEDED" in capsys.readouterr().out


def test_a_run_that_succeeds_exits_0(watching, kfp_api, kube, tmp_path, capsys, caplog):
    package = tmp_path / "tiny.yaml"
    package.write_text(TINY_SPEC)  # no gpu_max_pending_minutes: reported, never stopped
    kube.add_pod("tiny-step", "r1", phase="Running", gpus=1)
    kfp_api.run_states = ["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"]
    with caplog.at_level("INFO", logger="mobiletag"):
        args = ["submit", "--namespace", NAMESPACE, "--package", str(package), "--wait", "--poll-seconds", "5"]
        assert main(args) == 0
    assert f"{package} has no gpu_max_pending_minutes parameter: a Pending GPU pod is reported" in caplog.text
    out = capsys.readouterr().out
    assert "started run" in out and "run r1 ended SUCCEEDED" in out
    assert _polls(kfp_api) == 4 and kfp_api.terminated == []


def test_a_run_that_fails_exits_non_zero_with_its_state(watching, kfp_api, kube, capsys):
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE)
    kfp_api.run_states = ["RUNNING", "FAILED"]
    assert main(["submit", "--namespace", NAMESPACE, "--wait"]) == kfp_watch.RUN_FAILED_EXIT
    assert "mobiletag submit: error: run r1 ended FAILED" in capsys.readouterr().err


def test_wait_with_cron_is_refused_before_anything_is_sent(watching, kfp_api, kube, capsys):
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE)
    assert main(["submit", "--namespace", NAMESPACE, "--wait", "--cron", "0 0 3 * * 1"]) == 2
    err = capsys.readouterr().err
    assert "a recurring run (--cron) starts a new run at every trigger" in err and "CronJob" in err
    assert kfp_api.requests == [] and kube.requests == []


def test_wait_without_access_to_the_pods_starts_nothing(watching, kfp_api, kube, capsys):
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE)
    kubeconfig = Path(os.environ["KUBECONFIG"])
    kubeconfig.write_text(kubeconfig.read_text().replace(K8S_TOKEN, "someone-else"))
    assert main(["submit", "--namespace", NAMESPACE, "--wait"]) == 2
    err = capsys.readouterr().err
    assert (
        f"--wait cannot list pods in namespace {NAMESPACE} (401 Unauthorized)" in err and "nothing was submitted" in err
    )
    assert kfp_api.runs == [] and kfp_api.experiments == []

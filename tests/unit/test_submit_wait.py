"""`mobiletag submit --wait` against stand-in KFP and Kubernetes APIs on loopback.

The Kubernetes stand-in answers the pod list that the real ``kubernetes`` client asks for (reached
through a kubeconfig file, as from a workstation); the clock of the watch is a fake that advances
20 minutes per poll, so an hour of Pending takes milliseconds.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from mobiletag import kfp_watch
from mobiletag.cli import main

from .test_kfp_api import API, NAMESPACE, SA_TOKEN, TINY_SPEC, FakeKfp

K8S_TOKEN = "kubeconfig-user-token"
CREATED = "2026-01-05T03:00:00Z"  # when the stand-in's pods were created
CREATED_EPOCH = 1767582000.0
SCHEDULER = (
    "0/5 nodes are available: 1 node(s) had untolerated taint {node-role: system}, 4 Insufficient nvidia.com/gpu. "
    "preemption: 0/5 nodes are available: 5 No preemption victims found for incoming pod."
)
POLL_MINUTES = 20.0


class FakeKube:
    """GET /api/v1/namespaces/<ns>/pods?labelSelector=k=v: a PodList of the pods whose label matches."""

    def __init__(self) -> None:
        self.pods: list[dict[str, Any]] = []
        self.requests: list[tuple[str, dict[str, str], str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                fake.requests.append((url.path, query, self.headers.get("Authorization", "")))
                parts = url.path.strip("/").split("/")
                if self.headers.get("Authorization") != f"Bearer {K8S_TOKEN}":
                    status, body = 401, {"kind": "Status", "code": 401, "message": "Unauthorized"}
                elif parts[:3] == ["api", "v1", "namespaces"] and parts[4:] == ["pods"]:
                    key, _, value = query.get("labelSelector", "").partition("=")
                    items = [
                        p
                        for p in fake.pods
                        if p["metadata"]["namespace"] == parts[3] and p["metadata"]["labels"].get(key) == value
                    ]
                    status, body = 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
                else:
                    status, body = 404, {"kind": "Status", "code": 404, "message": "not found"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def add_pod(self, name: str, run_id: str, *, phase: str, gpus: int = 0, scheduled: bool = True) -> None:
        """A pod of a KFP v2 task: Argo names its node <workflow>.root.<task>.executor."""
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
                    "annotations": {"workflows.argoproj.io/node-name": f"x.root.{name.split('-x-')[-1]}.executor"},
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
def kfp_api() -> Iterator[FakeKfp]:
    fake = FakeKfp()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, kfp_api: FakeKfp, tmp_path: Path) -> pytest.MonkeyPatch:
    """The CronJob's KFP settings, no in-cluster Kubernetes config; a fake clock for the watch."""
    import os

    for name in list(os.environ):
        if name.startswith(("MOBILETAG_", "KF_PIPELINES_")) and name != "MOBILETAG_CACHE_DIR":
            monkeypatch.delenv(name)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    token = tmp_path / "kubeflow-token"
    token.write_text(SA_TOKEN)
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", kfp_api.url)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    monkeypatch.setenv("MOBILETAG_DATA_URI", "gs://b/p")
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


def test_a_gpu_step_that_cannot_schedule_is_reported_once_and_stops_the_run(env, kfp_api, kube, caplog, capsys):
    pipeline = kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE, versions=0)
    kfp_api.add_version(pipeline["pipeline_id"], "v1", spec=_spec_with_max_pending(60))  # the pipeline's default
    kube.add_pod("mobiletag-x-resolve-config", "r1", phase="Succeeded")
    kube.add_pod("mobiletag-x-train-teacher", "r1", phase="Pending", gpus=4, scheduled=False)
    kube.add_pod("other-run-pod", "r9", phase="Pending", gpus=4, scheduled=False)
    with caplog.at_level("INFO", logger="mobiletag"):
        code = main(["submit", "--namespace", NAMESPACE, "--wait", "--poll-seconds", "1"])
    err = capsys.readouterr().err
    assert code == kfp_watch.RUN_FAILED_EXIT == 1
    # polls at 0.1, 20.1, 40.1 and 60.1 min of Pending: the 4th is over 60 min and stops the run
    assert _polls(kfp_api) == 4 and kfp_api.terminated == ["r1"]
    reports = [r.getMessage() for r in caplog.records if SCHEDULER in r.getMessage()]
    assert reports == [
        "run r1: pod mobiletag-x-train-teacher (x.root.train-teacher.executor) Pending for 6 s: "
        f"not scheduled (Unschedulable): {SCHEDULER}"
    ]
    assert (
        "stopped run r1: GPU pod mobiletag-x-train-teacher (x.root.train-teacher.executor) was "
        f"Pending for 60 min, longer than gpu_max_pending_minutes=60: not scheduled (Unschedulable): {SCHEDULER}. "
        "To let it schedule: a node pool must have nodes with as many GPUs as the step asks" in err
    )
    assert "GPU quota" in err and "lower teacher_gpus / student_gpus" in err
    # every pod list asked for this run's label in the run's namespace, with the kubeconfig's credentials
    paths = {(path, query["labelSelector"], auth) for path, query, auth in kube.requests}
    assert paths == {
        (f"/api/v1/namespaces/{NAMESPACE}/pods", "pipeline/runid=none", f"Bearer {K8S_TOKEN}"),  # access check
        (f"/api/v1/namespaces/{NAMESPACE}/pods", "pipeline/runid=r1", f"Bearer {K8S_TOKEN}"),
    }
    (run,) = kfp_api.runs
    assert run["runtime_config"] == {"parameters": {"data_uri": "gs://b/p"}, "pipeline_root": "gs://b/root"}


def test_the_runs_own_limit_is_used_and_a_cpu_pod_only_reported(env, kfp_api, kube, caplog, capsys):
    """--gpu-max-pending-minutes goes into the run and decides; a Pending pod without GPU never stops it."""
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE)
    kube.add_pod("mobiletag-x-prepare-dataset", "r1", phase="Pending", scheduled=False)
    kfp_api.run_states = ["RUNNING"] * 6 + ["SUCCEEDED"]
    with caplog.at_level("WARNING", logger="mobiletag"):
        args = ["submit", "--namespace", NAMESPACE, "--wait", "--poll-seconds", "1", "--gpu-max-pending-minutes", "30"]
        assert main(args) == 0
    assert kfp_api.runs[0]["runtime_config"]["parameters"]["gpu_max_pending_minutes"] == 30
    assert kfp_api.terminated == [] and _polls(kfp_api) == 7
    assert [r.getMessage() for r in caplog.records].count(
        f"run r1: pod mobiletag-x-prepare-dataset (x.root.prepare-dataset.executor) Pending for 6 s: "
        f"not scheduled (Unschedulable): {SCHEDULER}"
    ) == 1
    assert "run r1 ended SUCCEEDED" in capsys.readouterr().out


def test_a_run_that_succeeds_exits_0(env, kfp_api, kube, tmp_path, capsys):
    package = tmp_path / "tiny.yaml"
    package.write_text(TINY_SPEC)  # no gpu_max_pending_minutes: reported, never stopped
    kube.add_pod("tiny-step", "r1", phase="Running", gpus=1)
    kfp_api.run_states = ["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"]
    assert main(["submit", "--namespace", NAMESPACE, "--package", str(package), "--wait", "--poll-seconds", "5"]) == 0
    out = capsys.readouterr().out
    assert "started run" in out and "run r1 ended SUCCEEDED" in out
    assert _polls(kfp_api) == 4 and kfp_api.terminated == []


def test_a_run_that_fails_exits_non_zero_with_its_state(env, kfp_api, kube, capsys):
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE)
    kfp_api.run_states = ["RUNNING", "FAILED"]
    assert main(["submit", "--namespace", NAMESPACE, "--wait"]) == kfp_watch.RUN_FAILED_EXIT
    assert "mobiletag submit: error: run r1 ended FAILED" in capsys.readouterr().err


def test_wait_with_cron_is_refused_before_anything_is_sent(env, kfp_api, kube, capsys):
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE)
    assert main(["submit", "--namespace", NAMESPACE, "--wait", "--cron", "0 0 3 * * 1"]) == 2
    err = capsys.readouterr().err
    assert "a recurring run (--cron) starts a new run at every trigger" in err and "CronJob" in err
    assert kfp_api.requests == [] and kube.requests == []


def test_wait_without_access_to_the_pods_starts_nothing(env, kfp_api, kube, monkeypatch, tmp_path, capsys):
    kfp_api.add_pipeline("mobiletag", namespace=NAMESPACE)
    kubeconfig = Path(kube_config := str(tmp_path / "kubeconfig"))
    kubeconfig.write_text(kubeconfig.read_text().replace(K8S_TOKEN, "someone-else"))
    monkeypatch.setenv("KUBECONFIG", kube_config)
    assert main(["submit", "--namespace", NAMESPACE, "--wait"]) == 2
    err = capsys.readouterr().err
    assert (
        f"--wait cannot list pods in namespace {NAMESPACE} (401 Unauthorized)" in err and "nothing was submitted" in err
    )
    assert kfp_api.runs == [] and kfp_api.experiments == []

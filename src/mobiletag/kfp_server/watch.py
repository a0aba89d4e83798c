"""Watching a run on a Kubeflow Pipelines server until it ends: `mobiletag submit --wait`.

The run's state comes from the KFP API; its pods from the Kubernetes API (KFP 2.5 and 2.17 label
every pod of a run ``pipeline/runid=<run id>``). A pod that stays Pending is reported with the
scheduler's reason, once per pod and message; a GPU pod Pending longer than the run's
``gpu_max_pending_minutes`` stops the run (KFP's ``activeDeadlineSeconds`` does not count
Pending time, so nothing else would).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobiletag.errors import MobiletagError

log = logging.getLogger(__name__)

RUN_ID_LABEL = "pipeline/runid"  # set on every pod of a run by KFP's API server (argo_template.go)
MAX_PENDING_PARAMETER = "gpu_max_pending_minutes"
SINGLE_USER_NAMESPACE = "kubeflow"  # where a single-user KFP runs its pods
SUCCEEDED = "SUCCEEDED"
FINAL_STATES = (SUCCEEDED, "SKIPPED", "FAILED", "CANCELED")
MAX_API_ERRORS = 10  # consecutive failed state polls before the watch gives up (the run goes on)
RUN_FAILED_EXIT = 1  # `submit --wait`: the run failed or was stopped; 2 stays a usage / config error


class WatchError(MobiletagError):
    pass


def _now() -> float:
    """Wall-clock time, compared with the pods' creation timestamps (tests replace it)."""
    return time.time()


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


@dataclass(frozen=True)
class WaitOptions:
    """How `submit --wait` watches: poll interval and where the Kubernetes API is.

    Attributes:
        poll_seconds: time between two looks at the run and its pods.
        in_cluster: use the pod's service-account token (the CronJob); else ``kubeconfig``.
        kubeconfig: kubeconfig file(s), ``:``-separated as in $KUBECONFIG; None: ~/.kube/config.
    """

    poll_seconds: float = 60.0
    in_cluster: bool = False
    kubeconfig: str | None = None


@dataclass(frozen=True)
class RunEnd:
    state: str
    ok: bool
    message: str


def core_api(options: WaitOptions) -> Any:
    """A CoreV1Api of the kubernetes client, configured in-cluster or from kubeconfig, never globally."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    configuration = k8s.Configuration()
    try:
        if options.in_cluster:
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            k8s_config.load_kube_config(config_file=options.kubeconfig, client_configuration=configuration)
    except (k8s_config.ConfigException, OSError, TypeError) as exc:
        where = (
            "the pod's service-account token (/var/run/secrets/kubernetes.io/serviceaccount: the CronJob's pod "
            "needs automountServiceAccountToken: true, see manifests/cronjob.yaml)"
            if options.in_cluster
            else f"kubeconfig {options.kubeconfig or '~/.kube/config'} ($KUBECONFIG)"
        )
        raise WatchError(
            f"--wait lists the run's pods through the Kubernetes API to see a step that cannot schedule, and "
            f"cannot configure it from {where}: {exc}. Give a kubeconfig with access to the namespace, or "
            "submit without --wait"
        ) from exc
    return k8s.CoreV1Api(k8s.ApiClient(configuration))


def pods_namespace(namespace: str | None) -> str:
    """Where the run's pods are: the profile namespace (multi-user), else KFP's own namespace."""
    return namespace or SINGLE_USER_NAMESPACE


def check_pod_access(core: Any, namespace: str) -> None:
    """List pods once before a run is created: a missing permission stops here, with nothing started."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        core.list_namespaced_pod(namespace, label_selector=f"{RUN_ID_LABEL}=none", _request_timeout=30)
    except ApiException as exc:
        hint = (
            "; grant the account get/list/watch on pods there (manifests/rbac.yaml's Role does for the CronJob)"
            if exc.status in (401, 403)
            else ""
        )
        raise WatchError(
            f"--wait cannot list pods in namespace {namespace} ({exc.status} {exc.reason}){hint}; nothing was submitted"
        ) from exc
    except (HTTPError, OSError) as exc:
        raise WatchError(f"--wait cannot reach the Kubernetes API: {exc}; nothing was submitted") from exc


def max_pending_from_spec(spec: dict[str, Any] | None) -> int | None:
    """The default of gpu_max_pending_minutes in a compiled pipeline spec; None: it has no such parameter.

    The API returns a version's spec alone, or as {"pipeline_spec": ..., "platform_spec": ...} when the
    package carried a platform spec (kfp-kubernetes).
    """
    if not spec:
        return None
    if "root" not in spec and isinstance(spec.get("pipeline_spec"), dict):
        spec = spec["pipeline_spec"]
    parameters = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    default = parameters.get(MAX_PENDING_PARAMETER, {}).get("defaultValue")
    return None if default is None else int(default)


def read_package_spec(package: str) -> dict[str, Any] | None:
    """The pipeline spec document of a compiled package (the first YAML document with a root)."""
    import yaml

    try:
        docs = list(yaml.safe_load_all(Path(package).read_text(encoding="utf-8")))
    except (UnicodeDecodeError, yaml.YAMLError):  # an archive (.tar.gz, .zip): kfp reads it, we do not
        return None
    return next((doc for doc in docs if isinstance(doc, dict) and "root" in doc), None)


# ======================================================================================
# Pods
# ======================================================================================


def _requests_gpu(pod: Any) -> bool:
    for container in pod.spec.containers or []:
        resources = container.resources
        for amounts in (resources.limits or {}, resources.requests or {}) if resources else ():
            if any(name.endswith("/gpu") and str(value) not in ("0", "") for name, value in amounts.items()):
                return True
    return False


def pending_reason(pod: Any) -> str:
    """Why a Pending pod is not running: the scheduler's condition, else its containers' waiting reasons."""
    for condition in pod.status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return f"not scheduled ({condition.reason or 'no reason'}): {condition.message or 'no message'}"
    statuses = (pod.status.init_container_statuses or []) + (pod.status.container_statuses or [])
    waiting = [
        f"{status.name} {status.state.waiting.reason}"
        + (f" ({status.state.waiting.message})" if status.state.waiting.message else "")
        for status in statuses
        if status.state and status.state.waiting and status.state.waiting.reason
    ]
    node = pod.spec.node_name or "a node"
    return f"scheduled on {node}, " + ("waiting: " + "; ".join(waiting) if waiting else "containers starting")


@dataclass(frozen=True)
class PendingPod:
    name: str
    step: str
    gpu: bool
    seconds: float
    reason: str


def pending_pods(core: Any, namespace: str, run_id: str, now: float) -> list[PendingPod]:
    """The run's Pending pods, each with how long it has existed and why it waits."""
    found = core.list_namespaced_pod(namespace, label_selector=f"{RUN_ID_LABEL}={run_id}", _request_timeout=60)
    pending = []
    for pod in found.items or []:
        if (pod.status.phase or "") != "Pending":
            continue
        created = pod.metadata.creation_timestamp
        seconds = max(0.0, now - created.timestamp()) if created else 0.0
        annotations = pod.metadata.annotations or {}
        step = annotations.get("workflows.argoproj.io/node-name", "")  # Argo's name of the task's node
        pending.append(PendingPod(pod.metadata.name, step, _requests_gpu(pod), seconds, pending_reason(pod)))
    return pending


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds // 60:.0f} min"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"


def _what_to_do(params: dict[str, Any]) -> str:
    pool = params.get("gpu_node_pool")
    accelerator = params.get("gpu_accelerator")
    parts = [
        "a node pool must have nodes with as many GPUs as the step asks (teacher_gpus / student_gpus"
        + (f": {params.get('teacher_gpus')} / {params.get('student_gpus')}" if "teacher_gpus" in params else "")
        + ")",
        "of the accelerator in gpu_accelerator"
        + (f" ({accelerator}, node label cloud.google.com/gke-accelerator)" if accelerator else ""),
        (
            f"in the node pool gpu_node_pool={pool} (empty: any pool)"
            if pool
            else "gpu_node_pool is empty: any pool with that accelerator"
        ),
    ]
    return (
        "To let it schedule: "
        + ", ".join(parts)
        + "; check the project's GPU quota in the region and that the pool's autoscaler may add a node "
        "(its maximum size), or lower teacher_gpus / student_gpus to what one node has. "
        "gpu_max_pending_minutes=0 waits without a limit"
    )


# ======================================================================================
# The watch
# ======================================================================================


def watch_run(
    kfp_client: Any,
    run_id: str,
    *,
    core: Any,
    namespace: str,
    max_pending_minutes: float,
    poll_seconds: float,
    params: dict[str, Any],
) -> RunEnd:
    """Poll the run until it ends; report Pending pods; stop the run when a GPU pod waits too long.

    Args:
        max_pending_minutes: the run's gpu_max_pending_minutes; 0 or less: no limit.
        params: the run's parameters as sent (for the hints of the message).

    Returns:
        How the run ended: ok only when it succeeded.
    """
    reported: set[tuple[str, str]] = set()
    api_errors: list[str] = []
    pod_errors: set[str] = set()
    limit = max_pending_minutes * 60.0
    while True:
        try:
            run = kfp_client.get_run(run_id)
            api_errors.clear()
        except Exception as exc:  # a days-long watch outlives API restarts; the run goes on meanwhile
            api_errors.append(f"{type(exc).__name__}: {exc}"[:300])
            log.warning("run %s: the KFP API did not answer (%d in a row): %s", run_id, len(api_errors), api_errors[-1])
            if len(api_errors) >= MAX_API_ERRORS:
                raise WatchError(
                    f"stopped watching run {run_id} after {MAX_API_ERRORS} failed polls of the KFP API (the run "
                    f"itself goes on): {api_errors[-1]}"
                ) from exc
            _sleep(poll_seconds)
            continue
        state = str(run.state or "RUNTIME_STATE_UNSPECIFIED")
        if state in FINAL_STATES:
            error = getattr(run, "error", None)
            detail = f": {error.message}" if error is not None and getattr(error, "message", None) else ""
            return RunEnd(state, state == SUCCEEDED, f"run {run_id} ended {state}{detail}")
        try:
            pods = pending_pods(core, namespace, run_id, _now())
        except Exception as exc:  # the run goes on; say once per distinct failure that Pending is unseen
            message = f"{type(exc).__name__}: {exc}"[:300]
            if message not in pod_errors:
                pod_errors.add(message)
                log.warning(
                    "run %s: cannot list its pods in %s (Pending steps go unseen): %s", run_id, namespace, message
                )
            pods = []
        for pod in pods:
            where = f"pod {pod.name}" + (f" ({pod.step})" if pod.step else "")
            if pod.seconds >= poll_seconds and (pod.name, pod.reason) not in reported:
                reported.add((pod.name, pod.reason))
                log.warning("run %s: %s Pending for %s: %s", run_id, where, _duration(pod.seconds), pod.reason)
            if pod.gpu and limit > 0 and pod.seconds > limit:
                what = (
                    f"GPU {where} was Pending for {_duration(pod.seconds)}, longer than "
                    f"gpu_max_pending_minutes={max_pending_minutes:g}: {pod.reason.rstrip('.')}. {_what_to_do(params)}"
                )
                try:
                    kfp_client.terminate_run(run_id)
                except Exception as exc:
                    raise WatchError(
                        f"could not stop run {run_id} ({type(exc).__name__}: {str(exc)[:300]}; the account needs the "
                        f"verb terminate on runs, manifests/rbac.yaml): terminate it in the Kubeflow UI. {what}"
                    ) from exc
                return RunEnd("TERMINATED", False, f"stopped run {run_id}: {what}")
        _sleep(poll_seconds)


def describe_limit(max_pending_minutes: int | None, source: str) -> str:
    if max_pending_minutes is None:
        return (
            f"{source} has no {MAX_PENDING_PARAMETER} parameter: a Pending GPU pod is reported, the run is not stopped"
        )
    if max_pending_minutes <= 0:
        return f"{MAX_PENDING_PARAMETER}=0 ({source}): a Pending GPU pod is reported, the run is not stopped"
    return f"a GPU pod Pending over {MAX_PENDING_PARAMETER}={max_pending_minutes} min ({source}) stops the run"

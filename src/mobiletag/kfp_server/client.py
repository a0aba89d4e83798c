"""The Kubeflow Pipelines server: run parameters, pipeline root checks, credentials, upload,
submit (one run, or a recurring run) and the watch of a run (kfp_server.watch).

With the CLI and the kfp.local runner, the only code that imports kfp.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobiletag.errors import MobiletagError, PipelineRunError
from mobiletag.kfp_server import watch as kfp_watch

log = logging.getLogger(__name__)

PARAMETER_ENV = {
    "data_uri": "MOBILETAG_DATA_URI",
    "config_overrides": "MOBILETAG_CONFIG_OVERRIDES",
    "output_uri": "MOBILETAG_OUTPUT_URI",
    "backup_uri": "MOBILETAG_BACKUP_URI",
    "teacher_gpus": "MOBILETAG_TEACHER_GPUS",
    "student_gpus": "MOBILETAG_STUDENT_GPUS",
    "gpu_node_pool": "MOBILETAG_GPU_NODE_POOL",
    "gpu_accelerator": "MOBILETAG_GPU_ACCELERATOR",
    "teacher_cpu": "MOBILETAG_TEACHER_CPU",
    "teacher_memory": "MOBILETAG_TEACHER_MEMORY",
    "student_cpu": "MOBILETAG_STUDENT_CPU",
    "student_memory": "MOBILETAG_STUDENT_MEMORY",
    "qat_cpu": "MOBILETAG_QAT_CPU",
    "qat_memory": "MOBILETAG_QAT_MEMORY",
    "baseline_student": "MOBILETAG_BASELINE_STUDENT",
    "gpu_max_pending_minutes": "MOBILETAG_GPU_MAX_PENDING_MINUTES",
}
INT_PARAMETERS = ("teacher_gpus", "student_gpus", "gpu_max_pending_minutes")
BOOL_PARAMETERS = ("baseline_student",)
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
# Kubernetes quantities, passed as text (the pipeline's string parameters); empty = the default
RESOURCE_PARAMETERS = ("teacher_cpu", "teacher_memory", "student_cpu", "student_memory", "qat_cpu", "qat_memory")


def run_parameters(given: dict[str, str | None], env: dict[str, str]) -> dict[str, Any]:
    """Pipeline arguments: flags first, then MOBILETAG_* environment (the CronJob's ConfigMap).

    Parameters given nowhere keep the pipeline's defaults; data_uri is required.
    """
    params: dict[str, Any] = {}
    for name, variable in PARAMETER_ENV.items():
        value = given.get(name)
        if value is None:
            value = env.get(variable)
        if value is None or (value == "" and name in (*INT_PARAMETERS, *RESOURCE_PARAMETERS, *BOOL_PARAMETERS)):
            continue
        if name in BOOL_PARAMETERS:
            if str(value).strip().lower() not in _BOOLEANS:
                raise PipelineRunError(f"{name} (flag or {variable}) is {value!r}; it must be true or false")
            params[name] = _BOOLEANS[str(value).strip().lower()]
        elif name in INT_PARAMETERS:
            try:
                params[name] = int(value)
            except ValueError as exc:
                raise PipelineRunError(f"{name} (flag or {variable}) is {value!r}; it must be a whole number") from exc
            if params[name] < 0:
                raise PipelineRunError(f"{name} (flag or {variable}) is {value!r}; it must be 0 or more")
        else:
            params[name] = value
    if not params.get("data_uri"):
        raise PipelineRunError("no dataset: pass --data-uri or set MOBILETAG_DATA_URI")
    return params


# KFP's artifact store when neither the run nor the namespace's kfp-launcher ConfigMap names one
# (backend/src/v2/config/env.go); its volume is 20 GiB in the standard manifests.
KFP_DEFAULT_PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"
OBJECT_STORE_SCHEMES = ("gs", "s3", "minio")  # the ones the KFP launcher opens (backend/src/v2/objectstore)


def check_pipeline_root(root: str | None, source: str) -> str | None:
    """A run's pipeline root: an object-store URI with a bucket, or None (the cluster's default store).

    Args:
        source: what gave it, for the message (e.g. "--pipeline-root or MOBILETAG_PIPELINE_ROOT").
    """
    root = (root or "").strip()
    if not root:
        return None
    if not re.fullmatch(rf"({'|'.join(OBJECT_STORE_SCHEMES)})://[^/\s]+(/\S*)?", root):
        raise PipelineRunError(
            f"the pipeline root ({source}) is {root!r}: it must be an object-store URI the KFP launcher writes "
            f"to, {', '.join(s + '://<bucket>/<prefix>' for s in OBJECT_STORE_SCHEMES)}, e.g. "
            "gs://my-bucket/pipeline-root"
        )
    return root


def warn_default_pipeline_root(namespace: str | None) -> None:
    where = f"namespace {namespace}" if namespace else "the KFP namespace (kubeflow)"
    log.warning(
        "no pipeline root (--pipeline-root or MOBILETAG_PIPELINE_ROOT): the run's artifacts, the dataset's "
        "TFRecords included, go to the defaultPipelineRoot of the kfp-launcher ConfigMap of %s, else to KFP's "
        "default %s, the in-cluster object store whose volume is 20 GiB in the standard manifests. Pass "
        "--pipeline-root gs://<bucket>/<prefix>, or set defaultPipelineRoot in that ConfigMap "
        "(kubectl -n %s patch configmap kfp-launcher --type merge -p "
        '\'{"data":{"defaultPipelineRoot":"gs://<bucket>/<prefix>"}}\')',
        where,
        KFP_DEFAULT_PIPELINE_ROOT,
        namespace or "kubeflow",
    )


IN_CLUSTER_HOST = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"  # kfp's default for the projected token
MAX_CONCURRENCY = 1  # one retraining at a time: a run holds the GPU pool for hours


# The options of every command that talks to a KFP server: (flag, environment variable of its default or
# None, the default without it, help).
SERVER_OPTIONS: tuple[tuple[str, str | None, str | None, str], ...] = (
    (
        "--host",
        "KF_PIPELINES_ENDPOINT",
        None,
        "KFP API address; default $KF_PIPELINES_ENDPOINT, else in a pod http://ml-pipeline.kubeflow.svc.cluster.local:8888",
    ),
    (
        "--namespace",
        "MOBILETAG_NAMESPACE",
        None,
        "Kubeflow profile namespace; default $MOBILETAG_NAMESPACE, else the pod's namespace when the server is "
        "multi-user",
    ),
    (
        "--token",
        "MOBILETAG_KFP_TOKEN",
        None,
        "bearer token for the KFP API from outside the cluster, e.g. `kubectl -n NS create token default-editor` "
        "(Kubeflow >= 1.9 accepts service-account tokens at its gateway) or your identity provider's JWT; default "
        "$MOBILETAG_KFP_TOKEN (prefer the variable: a flag shows in the process list)",
    ),
    (
        "--token-file",
        None,
        None,
        "file holding the bearer token, read before every request; default $KF_PIPELINES_SA_TOKEN_PATH, else "
        "/var/run/secrets/kubeflow/pipelines/token when it exists (the projected service-account token in a pod)",
    ),
    (
        "--cookies",
        "MOBILETAG_KFP_COOKIES",
        None,
        "Cookie header for a KFP behind Dex / oauth2-proxy, e.g. 'oauth2_proxy_kubeflow=...' copied from a "
        "logged-in browser; default $MOBILETAG_KFP_COOKIES",
    ),
    (
        "--pipeline-name",
        "MOBILETAG_PIPELINE_NAME",
        "mobiletag",
        "name of the uploaded pipeline (default $MOBILETAG_PIPELINE_NAME or mobiletag)",
    ),
)


@dataclass(frozen=True)
class Credentials:
    """How requests to the KFP API authenticate (resolved by the CLI from flags and environment).

    Attributes:
        token: a bearer token given from outside the cluster (``--token``); wins over ``token_file``.
        token_file: a file holding the bearer token, read again before every request (in a cluster:
            the projected service-account token with audience ``pipelines.kubeflow.org``, which the
            kubelet rotates).
        cookies: a ``Cookie`` header value, e.g. the Dex / oauth2-proxy session cookie
            (``oauth2_proxy_kubeflow=...``) of a browser session in front of KFP.
    """

    token: str | None = None
    token_file: str | None = None
    cookies: str | None = None

    def describe(self) -> str:
        parts = []
        if self.token:
            parts.append("a bearer token (--token)")
        elif self.token_file:
            parts.append(f"the bearer token in {self.token_file}")
        if self.cookies:
            parts.append("session cookies (--cookies)")
        return " and ".join(parts) or "no credentials"


@functools.cache
def _client_class() -> type:
    """kfp.Client that keeps its context in memory.

    kfp 2.17's Client reads ``~/.config/kfp/context.json`` and, when it finds the namespace itself
    (multi-user, no namespace given), writes it there: that fails under a read-only root filesystem
    (the CronJob) and would make a user's earlier ``kfp`` session decide this one's namespace.
    Flags and environment decide here; nothing under HOME is read or written. Its health check is
    asked once, not five times 5 s apart.
    """
    import kfp

    class _Client(kfp.Client):  # type: ignore[misc]
        def _load_context_setting_or_default(self) -> None:
            self._context_setting = {"namespace": ""}

        def set_user_namespace(self, namespace: str) -> None:
            self._context_setting["namespace"] = namespace.strip()

        def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
            return self._healthz_api.healthz_service_get_healthz()

    return _Client


class _ApiCall:
    """Turns what kfp raises into one clear PipelineRunError: refused, unreachable, or local."""

    def __init__(self, what: str, host: str, credentials: Credentials) -> None:
        self.what, self.host, self.credentials = what, host, credentials

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, MobiletagError) or not isinstance(exc, Exception):
            return
        import kfp_server_api
        import urllib3

        where = f"the Kubeflow Pipelines API at {self.host}"
        if isinstance(exc, kfp_server_api.ApiException):
            body = (exc.body.decode("utf-8", "replace") if isinstance(exc.body, bytes) else str(exc.body or ""))[:400]
            detail = f"{exc.status} {exc.reason}: {body.strip()}" if body.strip() else f"{exc.status} {exc.reason}"
            if exc.status in (401, 403):
                hint = (
                    f"it was sent {self.credentials.describe()}. In a cluster, mount the projected service-account "
                    "token (audience pipelines.kubeflow.org, see manifests/cronjob.yaml) and bind the account to "
                    "the namespace (manifests/rbac.yaml); from outside, pass --token (or MOBILETAG_KFP_TOKEN) or "
                    "--cookies (or MOBILETAG_KFP_COOKIES), and --namespace for your profile"
                )
                raise PipelineRunError(f"{where} refused {self.what} ({detail}); {hint}") from exc
            raise PipelineRunError(f"{where} failed {self.what}: {detail}") from exc
        if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
            raise PipelineRunError(
                f"cannot reach {where} ({self.what}): {exc}. Check --host / KF_PIPELINES_ENDPOINT "
                f"(in a cluster {IN_CLUSTER_HOST}; from outside e.g. https://<kubeflow host>/pipeline)"
            ) from exc
        if isinstance(exc, OSError):
            raise PipelineRunError(
                f"a local file could not be read or written while {self.what} (nothing was sent to {where} "
                f"for it): {exc}"
            ) from exc
        if isinstance(exc, ValueError):
            raise PipelineRunError(f"{self.what} failed: {exc}") from exc


def client(host: str, namespace: str | None, credentials: Credentials) -> Any:
    """A kfp.Client for host that authenticates with credentials and never touches HOME.

    With a token file, kfp's ``ServiceAccountTokenVolumeCredentials`` reads it before every request
    (kfp sends the projected token by itself only when no host is given).
    """
    import warnings

    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    kwargs: dict[str, Any] = {"host": host, "cookies": credentials.cookies or None}
    if credentials.token:
        kwargs["existing_token"] = credentials.token
    elif credentials.token_file:
        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(path=credentials.token_file)
    if namespace:
        kwargs["namespace"] = namespace  # else kfp asks the server whether it is multi-user
    with _ApiCall("the health check (/apis/v2beta1/healthz)", host, credentials), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This client only works with", category=FutureWarning)
        kfp_client = _client_class()(**kwargs)
    log.info("Kubeflow Pipelines API %s, namespace %s, with %s", host, namespace or "(none)", credentials.describe())
    return kfp_client


def _namespace(kfp_client: Any, namespace: str | None) -> str | None:
    """The profile namespace: the one given, else what kfp found (multi-user, in a cluster), else none."""
    return namespace or kfp_client.get_user_namespace() or None


def find_pipeline_id(kfp_client: Any, name: str, namespace: str | None) -> str | None:
    """The id of the pipeline called name: a private one in namespace first, then a shared one.

    kfp's ``get_pipeline_id`` lists shared pipelines only, so a pipeline uploaded with a namespace
    would never be found again.
    """
    name_filter = json.dumps(
        {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]}, separators=(",", ":")
    )
    for scope in ([namespace] if namespace else []) + [None]:
        found = kfp_client.list_pipelines(filter=name_filter, namespace=scope, page_size=2).pipelines or []
        found = [p for p in found if p.display_name == name]
        if len(found) > 1:
            where = f"namespace {scope}" if scope else "the shared pipelines"
            raise PipelineRunError(f"{len(found)} pipelines are called {name!r} in {where}; rename or delete one")
        if found:
            return str(found[0].pipeline_id)
    return None


def upload(
    package: str,
    pipeline_name: str,
    version: str,
    *,
    host: str,
    namespace: str | None,
    credentials: Credentials,
) -> str:
    """Upload the compiled pipeline: a new pipeline, or a new version of the one called pipeline_name.

    With a namespace the pipeline is private to that profile namespace; look-up finds it there
    first, then among the shared pipelines.

    Returns:
        The id of the new pipeline (first upload) or of the new version.
    """
    if not Path(package).is_file():
        raise PipelineRunError(f"{package} not found: compile it first (`make compile` writes pipeline.yaml)")
    kfp_client = client(host, namespace, credentials)
    namespace = _namespace(kfp_client, namespace)
    with _ApiCall(f"looking up pipeline {pipeline_name!r}", host, credentials):
        pipeline_id = find_pipeline_id(kfp_client, pipeline_name, namespace)
    if pipeline_id is None:
        with _ApiCall(f"uploading {package} as pipeline {pipeline_name!r}", host, credentials):
            result = kfp_client.upload_pipeline(package, pipeline_name=pipeline_name, namespace=namespace)
        return str(result.pipeline_id)
    with _ApiCall(f"uploading {package} as version {version!r} of {pipeline_name!r}", host, credentials):
        result = kfp_client.upload_pipeline_version(package, pipeline_version_name=version, pipeline_id=pipeline_id)
    return str(result.pipeline_version_id)


def check_cron(cron: str) -> str:
    """KFP reads cron with seconds first (robfig/cron v1): a 5-field crontab would mean something else.

    '0 3 * * 1' would run at minute 3 of every hour of every day in January.
    """
    fields = cron.split()
    if cron.strip().startswith("@") or len(fields) == 6:
        return " ".join(fields)
    hint = f"; for the crontab '{cron.strip()}' write '0 {cron.strip()}'" if len(fields) == 5 else ""
    raise PipelineRunError(
        f"--cron {cron!r} has {len(fields)} fields: KFP's cron has 6, seconds first "
        f"(e.g. '0 0 3 * * 1' = Mondays 03:00){hint}"
    )


@dataclass(frozen=True)
class Submitted:
    """What submit created; with wait, ``watch()`` follows the run until it ends."""

    ident: str
    watch: Callable[[], kfp_watch.RunEnd] | None = None


def submit(
    params: dict[str, Any],
    *,
    pipeline_name: str,
    package: str | None,
    experiment: str,
    run_name: str,
    cron: str | None,
    host: str,
    namespace: str | None,
    credentials: Credentials,
    pin_version: bool = False,
    pipeline_root: str | None = None,
    wait: kfp_watch.WaitOptions | None = None,
) -> Submitted:
    """Start a run, or with cron create a KFP recurring run, of the uploaded pipeline or a package.

    A recurring run follows the pipeline: each trigger runs the version uploaded last (KFP backend
    >= 2.5 resolves a pipeline id without version at every run). With pin_version it keeps the
    version that is newest now. It never catches up on missed triggers (no_catchup) and runs one
    at a time (max_concurrency 1). A single run always uses the newest version.

    Args:
        pipeline_root: where the run's artifacts go (``runtime_config.pipeline_root``), checked by
            :func:`check_pipeline_root`; None: the namespace's default store (a warning says which).
        wait: watch the single run until it ends (kfp_watch); checked before anything is sent.

    Returns:
        The id of the run or recurring run, and with wait the watch to call next.
    """
    if cron:
        cron = check_cron(cron)
        if wait is not None:
            raise PipelineRunError(
                "--wait watches one run until it ends; a recurring run (--cron) starts a new run at every trigger. "
                "To watch each scheduled run, use the CronJob of manifests/ (it runs `mobiletag submit --wait`)"
            )
    if package and not Path(package).is_file():
        raise PipelineRunError(f"{package} not found: compile it first (`make compile` writes pipeline.yaml)")
    core = None
    if wait is not None:
        core = kfp_watch.core_api(wait)  # before anything is sent: a --wait that cannot watch starts nothing
    kfp_client = client(host, namespace, credentials)
    namespace = _namespace(kfp_client, namespace)
    if pipeline_root is None:
        warn_default_pipeline_root(namespace)
    else:
        log.info("pipeline root (artifacts of the run): %s", pipeline_root)
    pipeline_id = version_id = None
    if not package:
        with _ApiCall(f"looking up pipeline {pipeline_name!r}", host, credentials):
            pipeline_id = find_pipeline_id(kfp_client, pipeline_name, namespace)
        if pipeline_id is None:
            where = f"in namespace {namespace} or shared" if namespace else "among the shared pipelines"
            raise PipelineRunError(
                f"no pipeline named {pipeline_name!r} on {host} {where}; run `make upload` "
                "(or `mobiletag upload`) first, with the same --namespace"
            )
        if not cron or pin_version:
            with _ApiCall(f"listing the versions of {pipeline_name!r}", host, credentials):
                versions = kfp_client.list_pipeline_versions(pipeline_id, sort_by="created_at desc", page_size=1)
            if not versions.pipeline_versions:
                raise PipelineRunError(f"pipeline {pipeline_name!r} ({pipeline_id}) has no version; upload one")
            version_id = versions.pipeline_versions[0].pipeline_version_id
    max_pending = None
    if wait is not None:
        max_pending = _max_pending_minutes(kfp_client, params, package, pipeline_id, version_id, host, credentials)
        kfp_watch.check_pod_access(core, kfp_watch.pods_namespace(namespace))
    with _ApiCall(f"creating or finding experiment {experiment!r}", host, credentials):
        experiment_id = kfp_client.create_experiment(experiment, namespace=namespace).experiment_id
    if cron:
        with _ApiCall(f"creating recurring run {run_name!r}", host, credentials):
            return Submitted(
                _create_recurring_run(
                    kfp_client, experiment_id, run_name, cron, params, package, pipeline_id, version_id, pipeline_root
                )
            )
    with _ApiCall(f"starting run {run_name!r}", host, credentials):
        source: dict[str, Any] = (
            {"pipeline_package_path": package} if package else {"pipeline_id": pipeline_id, "version_id": version_id}
        )
        run = kfp_client.run_pipeline(experiment_id, run_name, params=params, pipeline_root=pipeline_root, **source)
    run_id = str(run.run_id)
    if wait is None:
        return Submitted(run_id)
    pods_namespace = kfp_watch.pods_namespace(namespace)
    poll_seconds = wait.poll_seconds

    def watch() -> kfp_watch.RunEnd:
        log.info(
            "watching run %s every %g s, its pods in namespace %s (label %s=%s)",
            run_id,
            poll_seconds,
            pods_namespace,
            kfp_watch.RUN_ID_LABEL,
            run_id,
        )
        with _ApiCall(f"watching run {run_id}", host, credentials):
            return kfp_watch.watch_run(
                kfp_client,
                run_id,
                core=core,
                namespace=pods_namespace,
                max_pending_minutes=max_pending or 0,
                poll_seconds=poll_seconds,
                params=params,
            )

    return Submitted(run_id, watch)


def _max_pending_minutes(
    kfp_client: Any,
    params: dict[str, Any],
    package: str | None,
    pipeline_id: str | None,
    version_id: str | None,
    host: str,
    credentials: Credentials,
) -> int | None:
    """The run's gpu_max_pending_minutes: the one sent, else the pipeline's default (None: it has none)."""
    name = kfp_watch.MAX_PENDING_PARAMETER
    value: int | None
    if name in params:
        value, source = int(params[name]), "this run's parameter"
    elif package:
        value, source = kfp_watch.max_pending_from_spec(kfp_watch.read_package_spec(package)), f"{package}"
    else:
        with _ApiCall(f"reading pipeline version {version_id}", host, credentials):
            version = kfp_client.get_pipeline_version(pipeline_id, version_id)
        value, source = kfp_watch.max_pending_from_spec(version.pipeline_spec), f"pipeline version {version_id}"
    log.info("%s", kfp_watch.describe_limit(value, source))
    return value


def _create_recurring_run(
    kfp_client: Any,
    experiment_id: str,
    run_name: str,
    cron: str,
    params: dict[str, Any],
    package: str | None,
    pipeline_id: str | None,
    version_id: str | None,
    pipeline_root: str | None,
) -> str:
    """Create the recurring run: no catch-up, one run at a time, pinned or following the newest version."""
    common: dict[str, Any] = {"max_concurrency": MAX_CONCURRENCY, "no_catchup": True}
    if package or version_id:
        source: dict[str, Any] = (
            {"pipeline_package_path": package} if package else {"pipeline_id": pipeline_id, "version_id": version_id}
        )
        created = kfp_client.create_recurring_run(
            experiment_id,
            run_name,
            cron_expression=cron,
            params=params,
            pipeline_root=pipeline_root,
            **source,
            **common,
        )
        what = "the pipeline spec of the package" if package else f"pinned to version {version_id}"
    else:
        # kfp's create_recurring_run insists on a version id: POST /apis/v2beta1/recurringruns with
        # the pipeline id alone, which KFP >= 2.5 resolves to the newest version at every trigger.
        import kfp_server_api as api

        recurring = api.V2beta1RecurringRun(
            experiment_id=experiment_id,
            display_name=run_name,
            mode=api.RecurringRunMode.ENABLE,
            pipeline_version_reference=api.V2beta1PipelineVersionReference(pipeline_id=pipeline_id),
            runtime_config=api.V2beta1RuntimeConfig(parameters=params, pipeline_root=pipeline_root),
            trigger=api.V2beta1Trigger(cron_schedule=api.V2beta1CronSchedule(cron=cron)),
            **common,
        )
        created = kfp_client.recurring_runs.recurring_run_service_create_recurring_run(recurring_run=recurring)
        what = "the newest version of the pipeline at every trigger"
    log.info(
        "recurring run %s runs %s; no catch-up of missed triggers, at most %d at a time",
        created.recurring_run_id,
        what,
        MAX_CONCURRENCY,
    )
    return str(created.recurring_run_id)

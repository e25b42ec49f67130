"""`vlmad serve`: the HTTP API and web page (needs the `serve` extra: fastapi, uvicorn, python-multipart)."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from vlmad.cli import app
from vlmad.cli.common import (
    CheckpointOpt,
    ClassNameOpt,
    DeployOpt,
    DeviceOpt,
    ForceDeployOpt,
    HeadsOpt,
    MethodOpt,
    ModelOpt,
    NoCacheOpt,
    PrecisionOpt,
    PretrainedOpt,
    PromptOpt,
    RandomOpt,
    build_detector,
    console,
)
from vlmad_runtime.deploy import Deployment, DeployMismatchError, fingerprint_differences
from vlmad_runtime.errors import VlmadError

API_KEY_ENV = "VLMAD_API_KEY"


def default_data_dir() -> Path:
    from platformdirs import user_data_path

    return user_data_path("vlmad") / "serve"


@app.command()
def serve(
    class_name: ClassNameOpt,
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
    """Serve a detector over HTTP: POST /v1/detect, reference sets, /metrics, and a web page at /."""
    try:
        import uvicorn

        from vlmad.serve.app import ServeConfig, create_app, deploy_warnings, load_deploy
        from vlmad.serve.guard import default_allowed_hosts, normalise_origin, split_list
        from vlmad.serve.limits import Limits, MiB
    except ImportError as err:
        raise VlmadError(
            f"vlmad serve needs the 'serve' extra ({err.name} is missing)",
            "pip install 'vlmad[serve]'  (fastapi, uvicorn, python-multipart)",
        ) from None

    deployment = load_deploy(deploy) if deploy is not None else None
    deploy_data = deployment.record if deployment is not None else None
    data_dir = (data_dir or default_data_dir()).expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VlmadError(
            f"cannot create the data dir {data_dir}: {err.strerror or err}", "pass a writable --data-dir"
        ) from None
    limits = Limits(
        max_upload_bytes=int(max_upload_mb * MiB),
        max_pixels=int(max_megapixels * 1_000_000),
        request_timeout_s=float(request_timeout),
        max_queue=int(max_queue),
    )
    hosts = split_list(allowed_hosts) or default_allowed_hosts(host)
    try:
        origins = tuple(o if o == "*" else normalise_origin(o) for o in split_list(allowed_origins))
    except ValueError as err:
        raise VlmadError(f"--allowed-origins: {err}", "pass origins like http://localhost:3000") from None
    config = ServeConfig(
        class_name=class_name,
        data_dir=data_dir,
        threshold=deployment.threshold if deployment else None,
        deploy=deploy_data,
        deployment=deployment,
        force_deploy=force_deploy,
        deploy_path=str(deploy) if deploy is not None else None,
        api_key=api_key or None,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        limits=limits,
        allowed_hosts=hosts,
        allowed_origins=origins,
    )

    sock = bind_port(host, port)  # before the model loads: a busy port fails in a second, not after the load
    port = int(sock.getsockname()[1])  # the real one for --port 0
    # load and set up in the foreground: wrong weights or an unknown class fail here, with a hint, not at request time
    detector = build_detector(
        method,
        model,
        pretrained,
        checkpoint,
        random_weights,
        device,
        precision,
        prompt_set,
        no_cache,
        heads,
        batch_size=max_batch_size,
    )
    with console.status(f"text embeddings for {class_name!r}"):
        detector.setup(class_name)
    info = detector.info().as_dict()
    check_served_deploy(deployment, info, class_name, force_deploy)
    for warning in deploy_warnings(deploy_data, info, class_name):
        console.print(f"[yellow]warning:[/] {warning}")
    _print_banner(config, info, host, port)

    _log_to_console(log_level)
    os.environ.pop(API_KEY_ENV, None)  # the key is in the config; keep it out of child processes
    _run(uvicorn, create_app(config, detector=detector), sock, log_level, max_connections)


def _print_banner(config, info: dict, host: str, port: int) -> None:
    """What is served, where, and the warnings an operator must see before the first request."""
    if host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        console.print(f"[yellow]warning:[/] listening on {host} without an API key (--api-key or ${API_KEY_ENV})")
    if "*" in config.allowed_hosts:
        console.print(
            "[yellow]warning:[/] any Host header is accepted; name the service's host names with "
            "--allowed-hosts to refuse DNS-rebinding requests"
        )
    shown_host = f"[{host}]" if ":" in host else host
    console.print(
        f"vlmad serve: {info['method']} / {info['model']} / {info['weights_id']}, "
        f"class {config.class_name!r}"
        + (f", threshold {config.threshold:g}" if config.threshold is not None else ", no threshold")
    )
    console.print(
        f"  reference sets in {config.data_dir / 'references'}; API key "
        + ("required" if config.api_key else "not required")
    )
    console.print(f"  web page http://{shown_host}:{port}/   API schema http://{shown_host}:{port}/openapi.json")
    if info.get("random_weights"):
        from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP

        console.print(f"[bold red]{RANDOM_WEIGHTS_STAMP}[/] (every response carries a warning)")


def _run(uvicorn, app, sock: socket.socket, log_level: str, max_connections: int) -> None:
    """uvicorn on the already bound socket, until Ctrl-C / SIGTERM."""
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            workers=1,
            server_header=False,
            proxy_headers=False,
            limit_concurrency=max_connections,
        )
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled after a clean shutdown (as uvicorn.run)
        pass
    finally:
        sock.close()


def bind_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (not yet listening; uvicorn listens on it), or a VlmadError naming the
    port and ``--port`` when it is taken or not allowed."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
            0
        ]
    except socket.gaierror as err:
        raise VlmadError(
            f"cannot bind to --host {host!r}: {err.strerror}",
            "pass an address of this machine, e.g. --host 127.0.0.1 (or 0.0.0.0 for all)",
        ) from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no obstacle
    try:
        sock.bind(addr)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise VlmadError(
                f"port {port} on {host} is already in use",
                "stop the program listening there, or pick another port with --port "
                f"(e.g. --port {port + 1 if 0 < port < 65535 else 8001})",
            ) from None
        if err.errno == errno.EACCES:
            raise VlmadError(
                f"not allowed to listen on port {port} on {host}",
                "ports below 1024 need privileges: pick another one with --port (e.g. --port 8000)",
            ) from None
        raise VlmadError(f"cannot listen on {host}:{port}: {err.strerror or err}", "check --host and --port") from None
    return sock


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


def _log_to_console(level: str) -> None:
    """Service messages (reference fits, errors with their request id) next to uvicorn's."""
    import logging

    logger = logging.getLogger("vlmad.serve")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    value = logging.getLevelName(level.upper())
    logger.setLevel(value if isinstance(value, int) else logging.DEBUG)

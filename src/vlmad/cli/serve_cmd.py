"""`vlmad serve`: the HTTP API and web page (needs the `serve` extra: fastapi, uvicorn, python-multipart)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from vlmad.cli import app
from vlmad.cli.common import (
    CheckpointOpt,
    DeviceOpt,
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
from vlmad_runtime.errors import VlmadError

API_KEY_ENV = "VLMAD_API_KEY"


def default_data_dir() -> Path:
    from platformdirs import user_data_path

    return user_data_path("vlmad") / "serve"


@app.command()
def serve(
    class_name: Annotated[str, typer.Option("--class-name", "-c", help="Object class, e.g. bottle or metal_nut.")],
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
    deploy: Annotated[
        Path | None, typer.Option("--deploy", help="deploy.json with a calibrated threshold -> decisions.")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind (0.0.0.0 exposes the service).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 8000,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Where reference sets are stored (default: the user data dir, "
                                        "e.g. ~/.local/share/vlmad/serve)."),
    ] = None,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", min=1, max=256,
                                                help="Images per model forward (dynamic batching).")] = 8,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0.0, max=10_000.0,
                                               help="Longest wait for a batch to fill.")] = 10.0,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar=API_KEY_ENV, show_envvar=True,
                     help="Require this key (X-API-Key or Authorization: Bearer) on /v1/* and /metrics; prefer "
                          "the environment variable (command lines are visible to other users)."),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.01,
                                                 help="Largest encoded image accepted.")] = 20.0,
    max_megapixels: Annotated[float, typer.Option("--max-megapixels", min=0.01,
                                                  help="Largest decoded image (width x height) accepted.")] = 40.0,
    request_timeout: Annotated[float, typer.Option("--request-timeout", min=0.1,
                                                   help="Seconds before a detect request answers 504.")] = 30.0,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1,
                                           help="Waiting detect requests before answering 503.")] = 512,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve a detector over HTTP: POST /v1/detect, reference sets, /metrics, and a web page at /."""
    try:
        import uvicorn

        from vlmad.serve.app import ServeConfig, create_app, deploy_warnings, load_deploy
        from vlmad.serve.limits import Limits, MiB
    except ImportError as err:
        raise VlmadError(f"vlmad serve needs the 'serve' extra ({err.name} is missing)",
                         "pip install 'vlmad[serve]'  (fastapi, uvicorn, python-multipart)") from None

    deploy_data = load_deploy(deploy) if deploy is not None else None
    data_dir = (data_dir or default_data_dir()).expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VlmadError(f"cannot create the data dir {data_dir}: {err.strerror or err}",
                         "pass a writable --data-dir") from None
    limits = Limits(max_upload_bytes=int(max_upload_mb * MiB), max_pixels=int(max_megapixels * 1_000_000),
                    request_timeout_s=float(request_timeout), max_queue=int(max_queue))
    config = ServeConfig(class_name=class_name, data_dir=data_dir,
                         threshold=deploy_data["threshold"] if deploy_data else None, deploy=deploy_data,
                         deploy_path=str(deploy) if deploy is not None else None, api_key=api_key or None,
                         max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, limits=limits)

    # load and set up in the foreground: wrong weights or an unknown class fail here, with a hint, not at request time
    detector = build_detector(method, model, pretrained, checkpoint, random_weights, device, precision, prompt_set,
                              no_cache, heads, batch_size=max_batch_size)
    with console.status(f"text embeddings for {class_name!r}"):
        detector.setup(class_name)
    info = detector.info().as_dict()
    for warning in deploy_warnings(deploy_data, info, class_name):
        console.print(f"[yellow]warning:[/] {warning}")
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        console.print(f"[yellow]warning:[/] listening on {host} without an API key (--api-key or ${API_KEY_ENV})")
    shown_host = f"[{host}]" if ":" in host else host
    console.print(f"vlmad serve: {info['method']} / {info['model']} / {info['weights_id']}, class {class_name!r}"
                  + (f", threshold {config.threshold:g}" if config.threshold is not None else ", no threshold"))
    console.print(f"  reference sets in {data_dir / 'references'}; API key "
                  + ("required" if api_key else "not required"))
    console.print(f"  web page http://{shown_host}:{port}/   API schema http://{shown_host}:{port}/docs")
    if info.get("random_weights"):
        from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP

        console.print(f"[bold red]{RANDOM_WEIGHTS_STAMP}[/] (every response carries a warning)")

    _log_to_console(log_level)
    os.environ.pop(API_KEY_ENV, None)  # the key is in the config; keep it out of child processes
    uvicorn.run(create_app(config, detector=detector), host=host, port=port, log_level=log_level,
                workers=1, server_header=False, proxy_headers=False)


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

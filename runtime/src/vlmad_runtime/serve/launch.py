"""Starting the service from a command line: shared by `vlmad serve` and `vlmad-runtime serve` (docs/export.md).

Both commands take the same network and limit options (:class:`ServeOptions`), turn them into a
:class:`~vlmad_runtime.serve.config.ServeConfig` the same way, bind the port before the model loads (a busy port
fails in a second), print the same banner and run uvicorn on the bound socket. :func:`serve_bundle` is the whole
`vlmad-runtime serve BUNDLE` (and `vlmad serve --bundle`): the bundle is checked and compiled in the foreground,
then served through :class:`~vlmad_runtime.serve.bundle_model.BundleModel`.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmad_runtime.errors import VlmadError

API_KEY_ENV = "VLMAD_API_KEY"
#: the 409 message of reference uploads on a bundle
BAKED_IN = (
    "few-shot memory is baked into the bundle: reference sets cannot be uploaded to `vlmad-runtime serve`; "
    "export again with --reference-dir to change it"
)


@dataclass
class ServeOptions:
    """The command-line options both serve commands share (defaults are the documented ones)."""

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path | None = None
    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    api_key: str | None = None
    max_upload_mb: float = 20.0
    max_megapixels: float = 40.0
    request_timeout: float = 30.0
    max_queue: int = 512
    allowed_hosts: Sequence[str] | None = None
    allowed_origins: Sequence[str] | None = None
    max_connections: int = 256
    log_level: str = "info"


def default_data_dir() -> Path:
    """Where reference sets live by default: the user data dir (platformdirs when installed)."""
    try:
        from platformdirs import user_data_path
    except ImportError:  # the runtime does not depend on platformdirs
        return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "vlmad" / "serve"
    return user_data_path("vlmad") / "serve"


def import_service() -> None:
    """Fail with the install hint, not a traceback, when the `serve` extra is missing."""
    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise VlmadError(
            f"serving needs the 'serve' extra ({err.name} is missing)",
            "pip install 'vlmad-runtime[serve]' (or 'vlmad[serve]'): fastapi, uvicorn, python-multipart",
        ) from None


def service_config(opts: ServeOptions, class_name: str, deployment: Any = None, **fields: Any):
    """The :class:`ServeConfig` of ``opts`` (data dir created, limits, Host/Origin guard) plus ``fields``."""
    from vlmad_runtime.serve.config import ServeConfig
    from vlmad_runtime.serve.guard import default_allowed_hosts, normalise_origin, split_list
    from vlmad_runtime.serve.limits import Limits, MiB

    data_dir = (opts.data_dir or default_data_dir()).expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise VlmadError(
            f"cannot create the data dir {data_dir}: {err.strerror or err}", "pass a writable --data-dir"
        ) from None
    limits = Limits(
        max_upload_bytes=int(opts.max_upload_mb * MiB),
        max_pixels=int(opts.max_megapixels * 1_000_000),
        request_timeout_s=float(opts.request_timeout),
        max_queue=int(opts.max_queue),
    )
    try:
        origins = tuple(o if o == "*" else normalise_origin(o) for o in split_list(opts.allowed_origins))
    except ValueError as err:
        raise VlmadError(f"--allowed-origins: {err}", "pass origins like http://localhost:3000") from None
    return ServeConfig(
        class_name=class_name,
        data_dir=data_dir,
        threshold=deployment.threshold if deployment else None,
        deploy=deployment.record if deployment is not None else None,
        deployment=deployment,
        api_key=opts.api_key or None,
        max_batch_size=opts.max_batch_size,
        max_wait_ms=opts.max_wait_ms,
        limits=limits,
        allowed_hosts=split_list(opts.allowed_hosts) or default_allowed_hosts(opts.host),
        allowed_origins=origins,
        **fields,
    )


def banner(config: Any, info: dict[str, Any], host: str, port: int, command: str) -> list[str]:
    """What is served, where, and the warnings an operator must see before the first request (plain text)."""
    from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP

    lines = []
    if host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        lines.append(f"warning: listening on {host} without an API key (--api-key or ${API_KEY_ENV})")
    if "*" in config.allowed_hosts:
        lines.append(
            "warning: any Host header is accepted; name the service's host names with --allowed-hosts to refuse "
            "DNS-rebinding requests"
        )
    shown = f"[{host}]" if ":" in host else host
    threshold = f", threshold {config.threshold:g}" if config.threshold is not None else ", no threshold"
    lines.append(
        f"{command}: {info.get('method')} / {info.get('model')} / {info.get('weights_id')}, "
        f"class {config.class_name!r}{threshold}"
    )
    refs = "" if config.references_refusal else f"reference sets in {config.data_dir / 'references'}; "
    lines.append(f"  {refs}API key " + ("required" if config.api_key else "not required"))
    lines.append(f"  web page http://{shown}:{port}/   API schema http://{shown}:{port}/openapi.json")
    if info.get("random_weights"):
        lines.append(f"{RANDOM_WEIGHTS_STAMP} (every response carries a warning)")
    return lines


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
        raise _bind_error(err, host, port) from None
    return sock


def _bind_error(err: OSError, host: str, port: int) -> VlmadError:
    if err.errno == errno.EADDRINUSE:
        return VlmadError(
            f"port {port} on {host} is already in use",
            "stop the program listening there, or pick another port with --port "
            f"(e.g. --port {port + 1 if 0 < port < 65535 else 8001})",
        )
    if err.errno == errno.EACCES:
        return VlmadError(
            f"not allowed to listen on port {port} on {host}",
            "ports below 1024 need privileges: pick another one with --port (e.g. --port 8000)",
        )
    return VlmadError(f"cannot listen on {host}:{port}: {err.strerror or err}", "check --host and --port")


def log_to_console(level: str) -> None:
    """Service messages (reference fits, errors with their request id) next to uvicorn's."""
    logger = logging.getLogger("vlmad.serve")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    value = logging.getLevelName(level.upper())
    logger.setLevel(value if isinstance(value, int) else logging.DEBUG)


def run_server(app: Any, sock: socket.socket, opts: ServeOptions) -> None:
    """uvicorn on the already bound socket, until Ctrl-C / SIGTERM (the API key leaves the environment first)."""
    import uvicorn

    log_to_console(opts.log_level)
    os.environ.pop(API_KEY_ENV, None)  # the key is in the config; keep it out of child processes
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=opts.log_level,
            workers=1,
            server_header=False,
            proxy_headers=False,
            limit_concurrency=opts.max_connections,
        )
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled after a clean shutdown (as uvicorn.run)
        pass
    finally:
        sock.close()


def serve_bundle(
    bundle_dir: Path,
    opts: ServeOptions,
    deploy: Path | None = None,
    force_deploy: bool = False,
    threads: int | None = None,
    echo: Callable[[str], None] = print,
    command: str = "vlmad-runtime serve",
) -> None:
    """Check and compile a bundle, check a deploy file against it, and serve it until stopped."""
    import_service()
    from vlmad_runtime.bundle import load_bundle
    from vlmad_runtime.deploy import load_deploy
    from vlmad_runtime.serve.app import create_app
    from vlmad_runtime.serve.bundle_model import BundleModel

    bundle = load_bundle(bundle_dir, threads=threads, batch_size=opts.max_batch_size)
    deployment = load_deploy(deploy) if deploy is not None else bundle.deployment()
    if deploy is not None:
        for name, recorded, now in bundle.check_deployment(deployment, force=force_deploy):
            echo(f"--force-deploy: {name} calibrated {recorded!r}, bundle has {now!r}")
    model = BundleModel(bundle, BAKED_IN)
    config = service_config(
        opts,
        model.class_name,
        deployment,
        force_deploy=force_deploy,
        deploy_path=str(deploy if deploy is not None else bundle.folder / "deploy.json") if deployment else None,
        references_refusal=BAKED_IN,
    )
    sock = bind_port(opts.host, opts.port)
    for line in banner(config, model.info(), opts.host, int(sock.getsockname()[1]), command):
        echo(line)
    run_server(create_app(config, model=model), sock, opts)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The shared options for argparse (`vlmad-runtime serve`); `vlmad serve` declares the same with typer."""
    d = ServeOptions()
    add = parser.add_argument
    add("--host", default=d.host, help="Address to bind (0.0.0.0 exposes the service).")
    add("--port", type=int, default=d.port, help="TCP port (0: any free one).")
    add("--data-dir", type=Path, default=None, help="Service data directory (default: the user data dir).")
    add("--max-batch-size", type=int, default=d.max_batch_size, help="Images per model run (dynamic batching).")
    add("--max-wait-ms", type=float, default=d.max_wait_ms, help="Longest wait for a batch to fill.")
    add("--api-key", default=os.environ.get(API_KEY_ENV), help=f"Require this key (prefer ${API_KEY_ENV}).")
    add("--max-upload-mb", type=float, default=d.max_upload_mb, help="Largest encoded image accepted.")
    add("--max-megapixels", type=float, default=d.max_megapixels, help="Largest decoded image accepted.")
    add("--request-timeout", type=float, default=d.request_timeout, help="Seconds before a request answers 504.")
    add("--max-queue", type=int, default=d.max_queue, help="Waiting detect requests before answering 503.")
    add("--allowed-hosts", action="append", help="Host names clients use (comma-separated or repeated; '*': any).")
    add("--allowed-origins", action="append", help="Browser origins whose pages may POST (scheme://host:port).")
    add("--max-connections", type=int, default=d.max_connections, help="Concurrent connections before 503.")
    add("--log-level", default=d.log_level, help="uvicorn log level.")


def options_from_args(args: argparse.Namespace) -> ServeOptions:
    """:class:`ServeOptions` from parsed :func:`add_serve_arguments` arguments (ranges checked)."""
    if not 0 <= args.port <= 65535:
        raise VlmadError(f"--port {args.port} is not a TCP port", "pass 0-65535")
    if args.max_batch_size < 1 or args.max_queue < 1 or args.max_connections < 1:
        raise VlmadError("--max-batch-size, --max-queue and --max-connections must be at least 1")
    if min(args.max_upload_mb, args.max_megapixels, args.request_timeout) <= 0 or args.max_wait_ms < 0:
        raise VlmadError("sizes and timeouts must be positive")
    return ServeOptions(
        **{f: getattr(args, f) for f in ServeOptions.__dataclass_fields__}  # same names, by construction
    )

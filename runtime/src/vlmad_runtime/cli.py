"""`vlmad-runtime`: run an exported bundle on a line PC, without torch (see docs/export.md).

``vlmad-runtime detect BUNDLE IMAGES... --out DIR`` writes the same scores.csv / maps / overlays as
``vlmad detect`` (one job implementation, :mod:`vlmad_runtime.jobs`); decisions use the threshold recorded in
the bundle at export (``vlmad export --deploy``) unless ``--deploy`` names another deploy.json.
``vlmad-runtime serve BUNDLE`` runs the HTTP service of ``vlmad serve`` (one implementation,
:mod:`vlmad_runtime.serve`; needs the ``serve`` extra) on the bundle.
argparse, not typer: the runtime keeps its dependencies to numpy, Pillow and the inference engine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlmad_runtime.errors import VlmadError
from vlmad_runtime.version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmad-runtime", description="Run vlmad bundles without torch.")
    parser.add_argument("--version", action="version", version=f"vlmad-runtime {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    det = sub.add_parser("detect", help="Score images with a bundle; writes OUT/scores.csv (+ maps, overlays).")
    det.add_argument("bundle", type=Path, help="Bundle folder written by `vlmad export`.")
    det.add_argument("images", type=Path, nargs="+", help="Image files or directories of images.")
    det.add_argument("--out", "-o", type=Path, required=True, help="Output directory.")
    det.add_argument("--save-maps", action="store_true", help="Write maps/<stem>.npy (float32).")
    det.add_argument("--overlay", action="store_true", help="Write overlays/<stem>.png heatmaps (needs matplotlib).")
    det.add_argument("--deploy", type=Path, help="deploy.json whose threshold replaces the bundle's.")
    det.add_argument("--batch-size", type=int, default=8, help="Images per graph run.")
    det.add_argument("--threads", type=int, default=None, help="Inference threads (default: the engine's).")
    det.add_argument(
        "--on-error", choices=("skip", "stop"), default="skip", help="skip (record) or stop on unreadable images."
    )
    srv = sub.add_parser("serve", help="Serve a bundle over HTTP: the same API and web page as `vlmad serve`.")
    srv.add_argument("bundle", type=Path, help="Bundle folder written by `vlmad export`.")
    srv.add_argument("--deploy", type=Path, help="deploy.json whose threshold replaces the bundle's (checked).")
    srv.add_argument(
        "--force-deploy", action="store_true", help="Use --deploy even when calibrated for another detector."
    )
    srv.add_argument("--threads", type=int, default=None, help="Inference threads (default: the engine's).")
    from vlmad_runtime.serve.launch import add_serve_arguments

    add_serve_arguments(srv)
    return parser


def serve(args: argparse.Namespace) -> int:
    """The `serve` command: runs until Ctrl-C / SIGTERM."""
    from vlmad_runtime.serve.launch import options_from_args, serve_bundle

    opts = options_from_args(args)
    echo = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    serve_bundle(args.bundle, opts, args.deploy, args.force_deploy, args.threads, echo=echo)
    return 0


def detect(args: argparse.Namespace) -> int:
    """The `detect` command; returns the exit status."""
    from vlmad_runtime.bundle import load_bundle
    from vlmad_runtime.deploy import load_deploy
    from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP
    from vlmad_runtime.jobs import NON_FINITE, DetectionOptions, expand_images, run_detection

    if args.batch_size < 1:
        raise VlmadError("--batch-size must be at least 1")
    bundle = load_bundle(args.bundle, threads=args.threads, batch_size=args.batch_size)
    paths = expand_images(args.images)
    deployment = load_deploy(args.deploy) if args.deploy else bundle.deployment()
    if args.deploy:
        bundle.check_deployment(deployment)
    opts = DetectionOptions(
        save_maps=args.save_maps,
        overlay=args.overlay,
        batch_size=args.batch_size,
        on_error=args.on_error,
        deployment=deployment,
    )
    rows = run_detection(bundle, paths, args.out, opts)
    failed = [r for r in rows if r.error]
    print(f"scored {len(rows) - len(failed)} image(s) -> {args.out / 'scores.csv'}", file=sys.stderr)
    for r in failed:
        print(f"skipped {r.path}: {r.error}", file=sys.stderr)
    if bundle.info().random_weights:
        print(RANDOM_WEIGHTS_STAMP, file=sys.stderr)
    non_finite = sum(r.error == NON_FINITE for r in rows)
    if non_finite:
        print(f"error: {non_finite} image(s) got a non-finite score (NaN/inf): no decision for them", file=sys.stderr)
        return 2
    if rows and len(failed) == len(rows):
        print(f"error: no image could be scored ({len(failed)} unreadable)", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: user errors are printed as message + hint (exit 2), never as a traceback."""
    args = _parser().parse_args(argv)
    try:
        sys.exit(serve(args) if args.command == "serve" else detect(args))
    except VlmadError as err:
        print(f"error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished results are kept on disk", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

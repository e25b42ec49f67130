"""Import every command module so its commands register on :data:`vlmad.cli.app`."""

from vlmad.cli import (  # noqa: F401
    bench_cmd,
    data_cmd,
    demo_cmd,
    detect_cmd,
    export_cmd,
    models_cmd,
    serve_cmd,
    study_cmd,
    train_cmd,
)

"""Evaluation harness: a resumable grid of methods x datasets x categories x shots x seeds.

>>> from vlmad.bench import BenchmarkConfig, DatasetSpec, method_spec, run_benchmark, load_results
>>> cfg = BenchmarkConfig(out="runs/x", datasets=[DatasetSpec("mvtec", "/data/mvtec")],
...                       methods=[method_spec("winclip", checkpoint="vit_b_16_plus_240.safetensors")],
...                       shots=[0, 1, 2, 4], seeds=[0, 1, 2])  # doctest: +SKIP
>>> rows = load_results(run_benchmark(cfg))  # doctest: +SKIP

Output folder: ``results.jsonl`` (one row per (method, dataset, category, shots, seed), full protocol, metrics,
timings, efficiency), ``scores/<row_key>.csv`` (per-image scores), ``tables/<dataset>_{image,pixel}.{md,csv}``,
``efficiency.{md,csv}``, ``summary.md`` and ``run.json`` (arguments + environment of every invocation).

Protocol rules (row keys, reference draws, ``--limit``, zero-shot seeds) are in :mod:`vlmad.bench.protocol`;
the published-number matching rule in :mod:`vlmad.bench.published`; how tables group rows in
:mod:`vlmad.bench.tables`; what the efficiency columns measure in :mod:`vlmad.bench.profile`.
"""

from vlmad.bench.published import compare as compare_published
from vlmad.bench.published import load_published
from vlmad.bench.results import ResultsStore, load_results, read_scores
from vlmad.bench.runner import (
    BenchmarkConfig,
    DatasetSpec,
    build_detector_from_spec,
    method_spec,
    plan_grid,
    run_benchmark,
)
from vlmad.bench.specs import build_method_specs
from vlmad.bench.tables import write_reports

__all__ = [
    "BenchmarkConfig",
    "DatasetSpec",
    "ResultsStore",
    "build_detector_from_spec",
    "build_method_specs",
    "compare_published",
    "load_published",
    "load_results",
    "method_spec",
    "plan_grid",
    "read_scores",
    "run_benchmark",
    "write_reports",
]

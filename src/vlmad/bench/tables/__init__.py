"""Tables from ``results.jsonl``: per-class and macro-mean metrics (markdown + CSV), efficiency, summary.

Comparability: every column of a table is one *configuration* (method + options, weights, shots, evaluation
resolution, ``--limit``, transductive, forced protocol, tags); rows that differ only by category or seed share
it, anything else gets its own column with the differing setting in its label and the full protocol in the
legend. Values are percent, mean ± sample standard deviation (ddof=1) over seeds; the macro mean is taken per
seed over the classes (with :func:`vlmad.metrics.macro_mean`), then averaged over seeds. Zero-shot has one run
(no seed), so no ±. A published number (macro only) is shown with the difference when the protocol matches
(:mod:`vlmad.bench.published`), "n/a" with a footnote otherwise.

Files: ``tables/<dataset>_image.{md,csv}``, ``tables/<dataset>_pixel.{md,csv}``, ``efficiency.{md,csv}`` and
``summary.md`` (everything in one page) in the run folder.

Modules: :mod:`.configs` (columns and their labels), :mod:`.aggregate` (per-class and macro statistics),
:mod:`.metric_tables` (the per-dataset tables), :mod:`.efficiency`, :mod:`.summary` (writing the files) and
:mod:`.markdown` (table, footnote and CSV primitives). This package re-exports their public names.
"""

from vlmad.bench.tables.aggregate import Stat, class_stat, fmt, macro_stat
from vlmad.bench.tables.configs import (
    IMAGE_METRICS,
    MACRO,
    METRIC_GROUPS,
    METRIC_NAMES,
    PIXEL_METRICS,
    RANDOM_MARK,
    Config,
    config_payload,
    dataset_names,
    describe,
    group_configs,
)
from vlmad.bench.tables.efficiency import efficiency_markdown, efficiency_records
from vlmad.bench.tables.markdown import Footnotes
from vlmad.bench.tables.metric_tables import build_table
from vlmad.bench.tables.summary import fingerprint_warning, write_reports

__all__ = [
    "IMAGE_METRICS",
    "MACRO",
    "METRIC_GROUPS",
    "METRIC_NAMES",
    "PIXEL_METRICS",
    "RANDOM_MARK",
    "Config",
    "Footnotes",
    "Stat",
    "build_table",
    "class_stat",
    "config_payload",
    "dataset_names",
    "describe",
    "efficiency_markdown",
    "efficiency_records",
    "fingerprint_warning",
    "fmt",
    "group_configs",
    "macro_stat",
    "write_reports",
]

"""Table columns: which rows share a *configuration* (method + options, weights, shots, evaluation
resolution, ``--limit``, transductive, forced protocol, tags), the columns' labels and their full description,
and the metric names."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vlmad.bench.protocol import canonical, hash_key
from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP

IMAGE_METRICS = ("image_auroc", "image_ap", "image_f1_max")
PIXEL_METRICS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro", "aupro_legacy200")
METRIC_GROUPS = {"image": IMAGE_METRICS, "pixel": PIXEL_METRICS}
METRIC_NAMES = {
    "image_auroc": "i-AUROC",
    "image_ap": "i-AP",
    "image_f1_max": "i-F1max",
    "pixel_auroc": "p-AUROC",
    "pixel_ap": "p-AP",
    "pixel_f1_max": "p-F1max",
    "aupro": "AUPRO",
    "aupro_legacy200": "AUPRO-200",
}
RANDOM_MARK = "†"
MACRO = "macro mean"


def config_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """What must be equal for two rows' numbers to share a column (category and seed excluded)."""
    proto = row.get("protocol", {})
    info = dict(row.get("detector") or {})
    return canonical(
        {
            "label": row["method_label"],
            "method": row["method"],
            "spec": row.get("method_spec"),
            "weights": row.get("weights"),
            "info": info,
            "shots": row["shots"],
            "dataset": [row["dataset"]["kind"], row["dataset"]["root"]],
            "eval_resolution": proto.get("eval_resolution"),
            "limit": proto.get("limit"),
            "forced": bool(proto.get("protocol_forced")),
            "transductive": bool(proto.get("transductive")),
            "tags": row.get("tags") or {},
        }
    )


@dataclass
class Config:
    key: str
    rows: list[dict[str, Any]]
    label: str = ""

    @property
    def first(self) -> dict[str, Any]:
        return self.rows[0]

    @property
    def info(self) -> dict[str, Any]:
        return self.first.get("detector") or {}

    @property
    def random(self) -> bool:
        return bool(self.first.get("random_weights"))

    @property
    def shots(self) -> int:
        return int(self.first["shots"])

    @property
    def seeds(self) -> list[Any]:
        return sorted({r["seed"] for r in self.rows}, key=lambda s: (s is not None, s if s is not None else -1))

    @property
    def categories(self) -> list[str]:
        return sorted({r["dataset"]["category"] for r in self.rows})

    def cell_metrics(self) -> dict[tuple[str, Any], dict[str, float]]:
        """(category, seed) -> metrics (rows of the same cell, e.g. two AUPRO variants, are merged)."""
        out: dict[tuple[str, Any], dict[str, float]] = {}
        for r in self.rows:
            out.setdefault((r["dataset"]["category"], r["seed"]), {}).update(r.get("metrics") or {})
        return out

    def facts(self) -> dict[str, Any]:
        """Protocol facts for published-number matching."""
        f = self.first
        proto = f.get("protocol", {})
        cells = self.cell_metrics()
        complete = all((c, s) in cells for c in self.categories for s in self.seeds)
        return {
            "method": f["method"],
            "dataset_kind": f["dataset"]["kind"],
            "shots": self.shots,
            "random_weights": self.random,
            "weights": f.get("weights") or {},
            "image_size": self.info.get("image_size"),
            "info": self.info,
            "method_options": f.get("method_options") or {},
            "transductive": bool(proto.get("transductive")),
            "eval_resolution": proto.get("eval_resolution"),
            "limit": proto.get("limit"),
            "forced": bool(proto.get("protocol_forced")),
            "skipped_images": sum(int((r.get("n_images") or {}).get("skipped", 0)) for r in self.rows),
            "categories": self.categories,
            "complete": complete,
        }


def group_configs(rows: Iterable[Mapping[str, Any]]) -> list[Config]:
    configs: dict[str, Config] = {}
    for r in rows:
        key = hash_key(config_payload(r), 12)
        configs.setdefault(key, Config(key, [])).rows.append(dict(r))
    out = sorted(configs.values(), key=lambda c: (c.first["method_label"], c.shots, c.key))
    _assign_labels(out)
    return out


_DISTINGUISH = (
    ("model", lambda c: c.info.get("model")),
    ("weights", lambda c: c.info.get("weights_id")),
    ("size", lambda c: c.info.get("image_size")),
    ("prompts", lambda c: c.info.get("prompt_set")),
    ("precision", lambda c: c.info.get("precision")),
    ("eval", lambda c: c.first.get("protocol", {}).get("eval_resolution")),
    ("limit", lambda c: c.first.get("protocol", {}).get("limit")),
    ("options", lambda c: json.dumps(c.first.get("method_options") or {}, sort_keys=True)),
    ("tags", lambda c: json.dumps(c.first.get("tags") or {}, sort_keys=True)),
)


def _assign_labels(configs: list[Config]) -> None:
    for c in configs:
        name = c.info.get("method") if c.first["method_label"] == c.first["method"] else c.first["method_label"]
        base = f"{name or c.first['method_label']} {c.shots}-shot"
        if c.first.get("protocol", {}).get("transductive"):
            base += " (transductive)"
        if c.first.get("protocol", {}).get("protocol_forced"):
            base += " (forced)"
        c.label = base
    by_label: dict[str, list[Config]] = {}
    for c in configs:
        by_label.setdefault(c.label, []).append(c)
    for group in by_label.values():
        if len(group) < 2:
            continue
        extras: list[list[str]] = [[] for _ in group]
        for name, get in _DISTINGUISH:
            values = [get(c) for c in group]
            if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
                for i, v in enumerate(values):
                    extras[i].append(f"{name}={v}")
        for i, c in enumerate(group):
            if extras[i]:
                c.label += f" ({', '.join(extras[i])})"
    seen: dict[str, int] = {}
    for c in configs:
        n = seen.get(c.label, 0) + 1
        seen[c.label] = n
        if n > 1:
            c.label += f" #{n}"
    for c in configs:
        if c.random:
            c.label += f" {RANDOM_MARK}"


def dataset_names(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], str]:
    """File-name stem per (kind, root): the kind, or kind-2, kind-3 when one kind has several roots."""
    names: dict[tuple[str, str], str] = {}
    count: dict[str, int] = {}
    for r in rows:
        ident = (r["dataset"]["kind"], r["dataset"]["root"])
        if ident not in names:
            n = count.get(ident[0], 0) + 1
            count[ident[0]] = n
            names[ident] = ident[0] if n == 1 else f"{ident[0]}-{n}"
    return names


def describe(c: Config) -> str:
    info, f = c.info, c.first
    proto = f.get("protocol", {})
    parts = [
        f"method `{f['method']}`",
        f"model `{info.get('model')}`",
        f"weights `{info.get('weights_id')}`",
        f"input {info.get('image_size')} px",
        f"prompts `{info.get('prompt_set')}`",
        f"{c.shots}-shot",
    ]
    extra = {
        k: v
        for k, v in info.items()
        if k
        not in ("method", "model", "weights_id", "image_size", "prompt_set", "shots", "transductive", "random_weights")
    }
    if extra:
        parts.append("settings " + ", ".join(f"{k}={v}" for k, v in sorted(extra.items())))
    if f.get("method_options"):
        parts.append("options " + ", ".join(f"{k}={v}" for k, v in sorted(f["method_options"].items())))
    ev = proto.get("eval_resolution")
    size = proto.get("eval_size")
    parts.append(f"eval {ev}" + (f" ({size[0]}x{size[1]})" if isinstance(size, list) else ""))
    parts.append(f"AUPRO {proto.get('aupro')}")
    if proto.get("limit"):
        parts.append(f"--limit {proto['limit']} ({proto.get('limit_policy')})")
    if c.shots:
        parts.append(f"seeds {', '.join(str(s) for s in c.seeds)}")
    if proto.get("transductive"):
        parts.append("**transductive** (uses test-set statistics)")
    if proto.get("protocol_forced"):
        parts.append(f"**protocol check forced** ({proto.get('check_protocol')})")
    elif proto.get("check_protocol"):
        parts.append(f"protocol {proto['check_protocol']}")
    if f.get("tags"):
        parts.append(f"tags {f['tags']}")
    if c.random:
        parts.append(f"**{RANDOM_WEIGHTS_STAMP}**")
    return "; ".join(parts)

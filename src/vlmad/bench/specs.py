"""Method specs from command-line style options (shared by ``vlmad benchmark`` and later front ends).

``--model``, ``--pretrained`` and ``--checkpoint`` take either a value for every method or ``method=value`` for
one (repeat the option for several methods); ``--random-weights`` applies to all; ``--set method.key=value``
(or ``--set key=value`` for all methods) passes a keyword to ``create_detector``, with the value parsed as JSON
when it is valid JSON (numbers, true/false, lists) and kept as a string otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from vlmad.bench.runner import method_spec
from vlmad_runtime.errors import UnknownNameError, VlmadError


def split_names(text: str | Iterable[str] | None) -> list[str]:
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else [x for t in text for x in str(t).split(",")]
    out: list[str] = []
    for item in (i.strip() for i in items):
        if item and item not in out:
            out.append(item)
    return out


def _per_method(option: str, values: Sequence[str] | None, methods: Sequence[str]) -> dict[str, str]:
    """``["w.safetensors"]`` -> every method; ``["winclip=w.safetensors"]`` -> that method only."""
    out: dict[str, str] = {}
    for raw in values or []:
        name, sep, value = str(raw).partition("=")
        if sep and name in methods:
            targets, val = [name], value
        elif sep and name and "/" not in name and "." not in name:
            raise UnknownNameError(
                f"{option} {raw!r}: {name!r} is not one of the methods of this run",
                f"methods: {', '.join(methods)}; pass --{option} VALUE for all of them",
            )
        else:
            targets, val = list(methods), str(raw)
        for t in targets:
            if t in out and out[t] != val:
                raise VlmadError(f"--{option} given twice for {t} ({out[t]!r} and {val!r})")
            out[t] = val
    return out


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _sets(values: Sequence[str] | None, methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for raw in values or []:
        lhs, sep, value = str(raw).partition("=")
        if not sep or not lhs:
            raise VlmadError(f"--set {raw!r} is not KEY=VALUE", "e.g. --set winclip.prompt_set=winclip-paper")
        method, dot, key = lhs.partition(".")
        if dot and method in methods:
            targets = [method]
        elif dot and method not in methods:
            raise UnknownNameError(
                f"--set {raw!r}: {method!r} is not one of the methods of this run", f"methods: {', '.join(methods)}"
            )
        else:
            targets, key = list(methods), lhs
        for t in targets:
            out[t][key] = parse_value(value)
    return out


def build_method_specs(
    methods: str | Sequence[str],
    model: Sequence[str] | None = None,
    pretrained: Sequence[str] | None = None,
    checkpoint: Sequence[str] | None = None,
    random_weights: bool = False,
    precision: str | None = None,
    sets: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Method specs (see :func:`vlmad.bench.runner.method_spec`) from command-line style options."""
    from vlmad.methods.registry import available_methods, get_spec

    names = split_names(methods)
    if not names:
        raise VlmadError("no method given", f"pass --methods, e.g. --methods {','.join(available_methods())}")
    unknown = [n for n in names if n not in available_methods()]
    if unknown:
        raise UnknownNameError(f"unknown method {unknown[0]!r}", f"available: {', '.join(available_methods())}")
    models = _per_method("model", model, names)
    tags = _per_method("pretrained", pretrained, names)
    ckpts = _per_method("checkpoint", checkpoint, names)
    extra = _sets(sets, names)
    specs = []
    for name in names:
        kwargs: dict[str, Any] = {}
        if name in models:
            kwargs["model"] = models[name]
        if name in tags:
            kwargs["pretrained"] = tags[name]
        if name in ckpts:
            kwargs["checkpoint"] = ckpts[name]
        if random_weights:
            kwargs["random_weights"] = True
        if precision:
            kwargs["precision"] = precision
        kwargs.update(extra[name])
        sources = [k for k in ("pretrained", "checkpoint", "random_weights") if kwargs.get(k)]
        if len(sources) > 1:
            raise VlmadError(
                f"{name}: choose one weights source, got {' and '.join(sources)}",
                "pass --pretrained TAG, --checkpoint PATH or --random-weights",
            )
        get_spec(name).check_options(kwargs)  # a --set typo fails here, before any weights load
        specs.append(method_spec(name, **kwargs))
    return specs

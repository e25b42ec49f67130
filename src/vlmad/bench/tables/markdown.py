"""Markdown and CSV primitives shared by the tables: pipe tables, numbered footnotes, CSV text, heading demotion."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any


class Footnotes:
    def __init__(self) -> None:
        self.notes: list[str] = []

    def ref(self, text: str) -> str:
        if text not in self.notes:
            self.notes.append(text)
        return f"[{self.notes.index(text) + 1}]"

    def render(self) -> list[str]:
        return [f"[{i}] {n}" for i, n in enumerate(self.notes, 1)]


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align_right_from: int = 1) -> list[str]:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in [header, *rows]]
    lines = [
        "| " + " | ".join(esc[0]) + " |",
        "|" + "|".join(("---:" if i >= align_right_from else "---") for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return lines


def csv_text(records: Sequence[Mapping[str, Any]]) -> str:
    if not records:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: ("" if v is None else (f"{v:.4f}" if isinstance(v, float) else v)) for k, v in r.items()})
    return buf.getvalue()


def demote(markdown: str) -> str:
    return "\n".join(("#" + line) if line.startswith("#") else line for line in markdown.splitlines())

"""A tiny document model rendered twice: one self-contained HTML file (figures inlined as base64) and markdown
(figures written next to it).

Blocks: headings, paragraphs, notes, tables (cells may carry ``data-*`` attributes, so tests and scripts can read
exact values back), figures (PNG bytes), collapsible parts and image galleries. Inline markup in text: ``**bold**``
and ```code```; everything else is escaped.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP


@dataclass
class Cell:
    text: str
    attrs: dict[str, Any] = field(default_factory=dict)
    num: bool = False
    wrap: bool = False  # long text: allowed to wrap (other cells stay on one line)


@dataclass
class Block:
    kind: str
    text: str = ""
    level: int = 2
    ident: str = ""
    header: list[str] = field(default_factory=list)
    rows: list[list[Cell]] = field(default_factory=list)
    data: bytes = b""
    name: str = ""
    mime: str = "image/png"
    items: list[dict[str, Any]] = field(default_factory=list)
    children: list[Block] = field(default_factory=list)


class Doc:
    def __init__(self) -> None:
        self.blocks: list[Block] = []

    def _add(self, block: Block) -> Block:
        self.blocks.append(block)
        return block

    def heading(self, text: str, level: int = 2, ident: str = "") -> None:
        self._add(Block("heading", text=text, level=level, ident=ident))

    def para(self, text: str) -> None:
        self._add(Block("para", text=text))

    def note(self, text: str, kind: str = "info") -> None:
        self._add(Block("note", text=text, name=kind))

    def bullets(self, items: Sequence[str]) -> None:
        self._add(Block("bullets", items=[{"text": t} for t in items]))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Cell | str]], ident: str = "") -> None:
        cells = [[c if isinstance(c, Cell) else Cell(str(c)) for c in r] for r in rows]
        self._add(Block("table", header=list(header), rows=cells, ident=ident))

    def figure(self, name: str, png: bytes, caption: str) -> None:
        self._add(Block("figure", name=name, data=png, text=caption))

    def gallery(self, name: str, items: Sequence[Mapping[str, Any]]) -> None:
        """items: {"name", "data" (JPEG bytes), "caption"}"""
        self._add(Block("gallery", name=name, items=[dict(i) for i in items]))

    def details(self, summary: str) -> Doc:
        """A collapsible part (open in markdown); returns its sub-document."""
        sub = Doc()
        block = self._add(Block("details", text=summary))
        block.children = sub.blocks
        return sub

    def section(self, ident: str, title: str) -> Doc:
        sub = Doc()
        block = self._add(Block("section", ident=ident, text=title))
        block.children = sub.blocks
        return sub


# ---------------------------------------------------------------------------------------------------------------
# HTML

CSS = """
:root { --fg:#1d2125; --muted:#5f6b76; --line:#d9dee3; --bg:#ffffff; --accent:#0b5cad; --warn:#b00020; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0;
       background: var(--bg); }
main { max-width: 1280px; margin: 0 auto; padding: 0 28px 60px; }
header.top { background: #f4f6f8; border-bottom: 1px solid var(--line); padding: 18px 28px 10px; }
header.top h1 { margin: 0 auto; max-width: 1224px; font-size: 26px; }
header.top p { margin: 4px auto; max-width: 1224px; color: var(--muted); }
.banner { background: var(--warn); color: #fff; font-weight: 700; text-align: center; padding: 8px;
          letter-spacing: .02em; position: sticky; top: 0; z-index: 10; }
body.random::after { content: "@RANDOM_WEIGHTS_STAMP@"; position: fixed; left: 50%; top: 55%;
          transform: translate(-50%, -50%) rotate(-20deg); font-size: 56px; font-weight: 800; color: rgba(176,0,32,.07);
          white-space: nowrap; pointer-events: none; z-index: 5; }
nav.toc { margin: 16px 0 8px; padding: 10px 14px; border: 1px solid var(--line); border-radius: 6px;
          background: #fafbfc; display: flex; flex-wrap: wrap; gap: 4px 18px; }
nav.toc a { white-space: nowrap; color: var(--accent); text-decoration: none; }
section { margin-top: 34px; }
h2 { font-size: 21px; border-bottom: 2px solid var(--line); padding-bottom: 4px; margin: 0 0 12px; }
h3 { font-size: 17px; margin: 22px 0 8px; }
h4 { font-size: 15px; margin: 16px 0 6px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13.5px; display: block; overflow-x: auto;
        max-width: 100%; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; white-space: nowrap; }
td.wrap { white-space: normal; min-width: 180px; max-width: 340px; }
th { background: #f0f3f6; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:nth-child(even) td { background: #fafbfc; }
td.pos { color: #1a7f37; } td.neg { color: #b42318; }
figure { margin: 10px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.note { border-left: 4px solid var(--accent); background: #f3f8fd; padding: 8px 12px; margin: 8px 0 12px; }
.note.warn { border-color: var(--warn); background: #fdf2f4; }
.note.empty { border-color: #8a94a0; background: #f5f6f7; font-style: italic; }
ul.recs li { margin-bottom: 6px; }
details { margin: 6px 0 14px; } summary { cursor: pointer; color: var(--accent); }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 12px; margin: 8px 0 18px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 6px; background: #fff; }
.card img { width: 100%; height: auto; display: block; }
.card .cap { font-size: 12.5px; color: var(--muted); margin-top: 4px; }
code { background: #f0f3f6; padding: 0 3px; border-radius: 3px; font-size: 90%; }
footer { color: var(--muted); font-size: 12px; margin-top: 40px; }
"""


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _attrs(attrs: Mapping[str, Any]) -> str:
    return "".join(f' {html.escape(str(k))}="{html.escape(str(v), quote=True)}"' for k, v in attrs.items())


def _b64(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _html_blocks(blocks: Sequence[Block]) -> str:
    parts: list[str] = []
    for b in blocks:
        if b.kind == "section":
            parts.append(f'<section id="{html.escape(b.ident)}"><h2>{_inline(b.text)}</h2>')
            parts.append(_html_blocks(b.children))
            parts.append("</section>")
        elif b.kind == "heading":
            ident = f' id="{html.escape(b.ident)}"' if b.ident else ""
            parts.append(f"<h{b.level}{ident}>{_inline(b.text)}</h{b.level}>")
        elif b.kind == "para":
            parts.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "note":
            parts.append(f'<div class="note {html.escape(b.name)}">{_inline(b.text)}</div>')
        elif b.kind == "bullets":
            parts.append('<ul class="recs">' + "".join(f"<li>{_inline(i['text'])}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            ident = f' id="{html.escape(b.ident)}"' if b.ident else ""
            head = "".join(f"<th>{_inline(h)}</th>" for h in b.header)
            body = []
            for r in b.rows:
                tds = []
                for c in r:
                    cls = (["num"] if c.num else []) + (["wrap"] if c.wrap else [])
                    if c.num and c.text.startswith("+") and c.text not in ("+0.0",):
                        cls.append("pos")
                    elif c.num and c.text.startswith("-") and c.text not in ("-0.0",):
                        cls.append("neg")
                    klass = f' class="{" ".join(cls)}"' if cls else ""
                    tds.append(f"<td{klass}{_attrs(c.attrs)}>{_inline(c.text)}</td>")
                body.append("<tr>" + "".join(tds) + "</tr>")
            parts.append(f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
        elif b.kind == "figure":
            parts.append(
                f'<figure data-figure="{html.escape(b.name)}"><img alt="{html.escape(b.text)}" '
                f'src="{_b64(b.data, b.mime)}"><figcaption>{_inline(b.text)}</figcaption></figure>'
            )
        elif b.kind == "gallery":
            cards = "".join(
                f'<div class="card" data-gallery-item="{html.escape(i["name"])}"><img alt="{html.escape(i["name"])}" '
                f'src="{_b64(i["data"], "image/jpeg")}"><div class="cap">{_inline(i["caption"])}</div></div>'
                for i in b.items
            )
            parts.append(f'<div class="gallery" data-gallery="{html.escape(b.name)}">{cards}</div>')
        elif b.kind == "details":
            parts.append(f"<details><summary>{_inline(b.text)}</summary>{_html_blocks(b.children)}</details>")
    return "\n".join(parts)


def _css() -> str:
    """The style sheet with the random-weights stamp from its one source (vlmad_runtime.drawing)."""
    from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP

    return CSS.replace("@RANDOM_WEIGHTS_STAMP@", RANDOM_WEIGHTS_STAMP.replace('"', "'"))


def render_html(
    doc: Doc, title: str, subtitle: str, random_weights: bool, data_json: str = "", toc: Sequence[tuple[str, str]] = ()
) -> str:
    banner = f'<div class="banner">WARNING: {html.escape(RANDOM_WEIGHTS_STAMP)}</div>' if random_weights else ""
    nav = ""
    if toc:
        nav = (
            '<nav class="toc">'
            + "".join(f'<a href="#{html.escape(i)}">{html.escape(t)}</a>' for i, t in toc)
            + "</nav>"
        )
    safe = data_json.replace("</", "<\\/")
    data = f'<script type="application/json" id="vlmad-report-data">{safe}</script>' if data_json else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_css()}</style></head>"
        f'<body class="{"random" if random_weights else ""}">{banner}'
        f'<header class="top"><h1>{_inline(title)}</h1><p>{_inline(subtitle)}</p></header>'
        f"<main>{nav}{_html_blocks(doc.blocks)}</main>{data}</body></html>\n"
    )


# ---------------------------------------------------------------------------------------------------------------
# markdown


def _md_escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_blocks(blocks: Sequence[Block], assets: Path, rel: str, level_offset: int = 0) -> list[str]:
    lines: list[str] = []
    for b in blocks:
        if b.kind == "section":
            lines += [f"## {b.text}", ""]
            lines += _md_blocks(b.children, assets, rel)
        elif b.kind == "heading":
            lines += [f"{'#' * b.level} {b.text}", ""]
        elif b.kind == "para":
            lines += [b.text, ""]
        elif b.kind == "note":
            lines += [f"> {b.text}", ""]
        elif b.kind == "bullets":
            lines += [f"- {i['text']}" for i in b.items] + [""]
        elif b.kind == "table":
            lines.append("| " + " | ".join(_md_escape_cell(h) for h in b.header) + " |")
            lines.append(
                "|"
                + "|".join(
                    "---:" if any(r[i].num for r in b.rows if i < len(r)) else "---" for i in range(len(b.header))
                )
                + "|"
            )
            lines += ["| " + " | ".join(_md_escape_cell(c.text) for c in r) + " |" for r in b.rows]
            lines.append("")
        elif b.kind == "figure":
            name = f"{b.name}.png"
            (assets / name).write_bytes(b.data)
            lines += [f"![{b.text}]({rel}/{name})", "", f"*{b.text}*", ""]
        elif b.kind == "gallery":
            (assets / "gallery").mkdir(parents=True, exist_ok=True)
            for i in b.items:
                name = f"gallery/{i['name']}.jpg"
                (assets / name).write_bytes(i["data"])
                lines += [f"![{i['name']}]({rel}/{name})  ", f"{i['caption']}", ""]
        elif b.kind == "details":
            lines += [f"**{b.text}**", ""]
            lines += _md_blocks(b.children, assets, rel)
    return lines


def render_markdown(doc: Doc, title: str, subtitle: str, random_weights: bool, assets: Path, rel: str) -> str:
    assets.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", subtitle, ""]
    if random_weights:
        lines += [f"> **WARNING: {RANDOM_WEIGHTS_STAMP}.**", ""]
    lines += _md_blocks(doc.blocks, assets, rel)
    return "\n".join(lines).rstrip() + "\n"

"""The document model renders to one self-contained HTML file and to markdown with its assets."""

from __future__ import annotations

from vlmad.report.html import Cell, Doc, render_html, render_markdown

PNG = b"\x89PNG\r\n\x1a\nfake"


def _doc() -> Doc:
    doc = Doc()
    sec = doc.section("s1", "First <section>")
    sec.para("plain **bold** and `code` & <script>")
    sec.table(["a", "b|c"], [[Cell("x"), Cell("+1.0", {"data-mean": "0.5"}, num=True)], ["y", "-2.0"]])
    sec.figure("fig-1", PNG, "a caption")
    det = sec.details("more")
    det.note("inside", "warn")
    sec.gallery("g", [{"name": "item-1", "data": b"\xff\xd8jpeg", "caption": "cap"}])
    return doc


def test_html_is_self_contained_and_escaped():
    html = render_html(_doc(), "Title", "sub", True, '{"a": "</script>"}', [("s1", "First")])
    assert html.startswith("<!DOCTYPE html>") and 'id="s1"' in html and "First &lt;section&gt;" in html
    assert "<strong>bold</strong>" in html and "<code>code</code>" in html and "&lt;script&gt;" in html
    assert 'data-mean="0.5"' in html and 'class="num pos"' in html
    assert 'src="data:image/png;base64,' in html and 'src="data:image/jpeg;base64,' in html
    assert 'data-figure="fig-1"' in html and 'data-gallery-item="item-1"' in html
    assert "WARNING: random weights - scores are meaningless" in html and 'class="random"' in html
    assert '"<\\/script>"' in html  # embedded JSON cannot close its script tag
    assert "<details><summary>more</summary>" in html and 'href="#s1"' in html
    assert 'class="random"' not in render_html(_doc(), "T", "s", False)


def test_markdown_writes_assets(tmp_path):
    md = render_markdown(_doc(), "Title", "sub", True, tmp_path / "files", "files")
    assert md.startswith("# Title") and "> **WARNING: random weights" in md and "## First <section>" in md
    assert "| a | b\\|c |" in md and "![a caption](files/fig-1.png)" in md
    assert (tmp_path / "files" / "fig-1.png").read_bytes() == PNG
    assert (tmp_path / "files" / "gallery" / "item-1.jpg").is_file()

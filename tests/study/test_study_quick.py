"""`vlmad study quick` end to end on generated MVTec/VisA-layout data with a tiny random model: the report has every
section and figure, its numbers are the numbers of results.jsonl, deploy files are valid, and a re-run recomputes
nothing."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

import vlmad.cli.study_cmd  # noqa: F401  (registers study/report/calibrate until vlmad.cli.commands imports it)
from vlmad.bench import load_results
from vlmad.cli import app
from vlmad.study import load_deploy
from vlmad_runtime.drawing import RANDOM_WEIGHTS_STAMP

TINY = ["--model", "vlmad-tiny-vit", "--random-weights"]
SECTIONS = [
    "overview",
    "recommend",
    "results",
    "shot-curves",
    "efficiency",
    "cross-domain",
    "prompt-ablation",
    "ablations",
    "published",
    "calibration",
    "gallery",
    "configurations",
]


class _Cells(HTMLParser):
    """Collects <td> attributes + text, <section> ids, figure names, gallery items."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[dict, str]] = []
        self.sections: list[str] = []
        self.figures: list[str] = []
        self.gallery_items: list[str] = []
        self.images = 0
        self._td: dict | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "td":
            self._td, self._text = a, []
        elif tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "figure":
            self.figures.append(a.get("data-figure"))
        elif tag == "div" and "data-gallery-item" in a:
            self.gallery_items.append(a["data-gallery-item"])
        elif tag == "img":
            self.images += 1
            assert a["src"].startswith("data:image/"), "every image is inlined (one self-contained file)"

    def handle_endtag(self, tag):
        if tag == "td" and self._td is not None:
            self.cells.append((self._td, "".join(self._text).strip()))
            self._td = None

    def handle_data(self, data):
        if self._td is not None:
            self._text.append(data)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, mvtec_root, visa_root):
    out = tmp_path_factory.mktemp("quick") / "run"
    args = [
        "study",
        "quick",
        "--root",
        f"mvtec={mvtec_root}",
        "--root",
        f"visa={visa_root}",
        "--out",
        str(out),
        *TINY,
        "--no-flops",
        "--num-workers",
        "0",
        "--quiet",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out, args


def _expected(rows, metric):
    """Macro over classes per seed, then mean and sample std over seeds: computed here independently."""
    per_seed = defaultdict(list)
    for r in rows:
        if metric in r["metrics"]:
            per_seed[r["seed"]].append(r["metrics"][metric])
    means = [sum(v) / len(v) for v in per_seed.values()]
    return sum(means) / len(means), (statistics.stdev(means) if len(means) > 1 else None)


def test_report_has_every_section_and_figure(quick_run):
    out, _ = quick_run
    html = (out / "report.html").read_text()
    parser = _Cells()
    parser.feed(html)
    assert parser.sections == SECTIONS
    for ds in ("mvtec", "visa"):
        for fig in (f"bars-{ds}-image", f"bars-{ds}-pixel", f"curves-{ds}"):
            assert fig in parser.figures, fig
    for fig in ("pareto-0", "ablation-prompts", "ablation-window_scales", "ablation-stages", "ablation-resolution"):
        assert fig in parser.figures, fig
    assert "No cross-domain runs in this study" in html
    # gallery: 2 datasets x 2 categories x 2 methods (zero-shot) x 4 picks (best, false alarm, miss, borderline)
    assert len(parser.gallery_items) == 32
    assert parser.images == len(parser.figures) + len(parser.gallery_items)
    # random weights: banner, page watermark, every markdown page
    assert html.count(f"WARNING: {RANDOM_WEIGHTS_STAMP}") >= 1 and 'class="random"' in html
    md = (out / "report.md").read_text()
    assert RANDOM_WEIGHTS_STAMP in md and "## Which method for me?" in md
    for fig in parser.figures:
        assert (out / "report_files" / f"{fig}.png").is_file()
    data = json.loads(html.split('id="vlmad-report-data">')[1].split("</script>")[0])
    assert data["random_weights"] is True and data["sections"] == SECTIONS
    texts = " ".join(r["text"] for r in data["recommendations"])
    assert "zero-shot" in texts and "1 normal reference image" in texts and "Latency budget" in texts


def test_report_numbers_equal_results_jsonl(quick_run):
    out, _ = quick_run
    rows = {r["row_key"]: r for r in load_results(out)}
    html = (out / "report.html").read_text()
    data = json.loads(html.split('id="vlmad-report-data">')[1].split("</script>")[0])
    main_keys = {k for k, r in rows.items() if not r["tags"] and r["status"] == "ok"}
    covered = {k for c in data["configs"] for k in c["row_keys"]}
    assert covered == main_keys, "every main-grid row is in exactly the report's configurations"
    configs = {c["key"]: [rows[k] for k in c["row_keys"]] for c in data["configs"]}
    parser = _Cells()
    parser.feed(html)
    checked = 0
    for attrs, text in parser.cells:
        key, metric, cat = attrs.get("data-config"), attrs.get("data-metric"), attrs.get("data-category")
        if key not in configs or cat is None or "data-mean" not in attrs:
            continue
        cfg_rows = configs[key] if cat == "macro" else [r for r in configs[key] if r["dataset"]["category"] == cat]
        mean, std = _expected(cfg_rows, metric)
        assert math.isclose(float(attrs["data-mean"]), mean, rel_tol=0, abs_tol=1e-12), (key, metric, cat)
        shown = f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")
        assert text == shown or text.startswith(shown + " / "), (text, shown)
        checked += 1
    assert checked > 100
    # ablation deltas: variant macro - default macro, from the rows themselves
    deltas = [(a, t) for a, t in parser.cells if "data-delta" in a and a["data-delta"] != "None"]
    assert deltas
    by_key = {k: [rows[x] for x in c["row_keys"]] for k, c in ((c["key"], c) for c in data["configs"])}
    for rec in data["ablations"]:
        variant_rows = [
            r
            for r in rows.values()
            if (r["tags"] or {}).get("variant") == rec["variant"]
            and (r["tags"] or {}).get("ablation") == rec["axis"]
            and r["method_spec"]["study"]["base_label"] == rec["method"]
            and r["shots"] == rec["shots"]
            and r["dataset"]["kind"] == rec["dataset"]
        ]
        for m in ("image_auroc", "pixel_auroc"):
            v, _ = _expected(variant_rows, m)
            d, _ = _expected(by_key[rec["default_config"]], m)
            assert math.isclose(rec[f"delta_{m}"], v - d, abs_tol=1e-12)
    # calibrated thresholds in the report are those of the deploy files
    for rec in data["deploy"]:
        assert load_deploy(out / rec["file"]).threshold == rec["threshold"]


def test_deploy_files(quick_run):
    out, _ = quick_run
    files = sorted((out / "deploy").glob("*/*/*.json"))
    assert len(files) == 2 * 2 * 2 * 2  # datasets x categories x methods x shots
    rows = {r["row_key"]: r for r in load_results(out)}
    for f in files:
        dep = load_deploy(f)
        rec = dep.record
        assert set(rec) >= {
            "threshold",
            "method",
            "class_name",
            "expected_false_alarm_rate",
            "calibration",
            "detector",
            "created",
            "vlmad_version",
        }
        cal = rec["calibration"]
        assert cal["mode"] == "normal-quantile" and cal["quantile"] == 0.99 and cal["n_images"] >= 1
        row = rows[cal["row_key"]]
        assert rec["detector"] == row["detector"] and rec["class_name"] == row["dataset"]["category"]
        scores = (out / cal["scores_file"]).read_text()
        for ref in cal["references"]:  # calibration never scores a reference image
            assert ref not in scores
        assert cal["warning"] == RANDOM_WEIGHTS_STAMP
        fp = dep.fingerprint  # the detector the threshold is bound to (vlmad detect/serve --deploy check it)
        assert fp["class_name"] == row["dataset"]["category"] and fp["shots"] == row["shots"]
        assert (fp["reference_fingerprint"] is None) == (row["shots"] == 0) and fp["model"] == row["detector"]["model"]


def test_rerun_recomputes_nothing(quick_run, monkeypatch):
    out, args = quick_run
    results = (out / "results.jsonl").read_bytes()
    deploy = {p: p.stat().st_mtime_ns for p in (out / "deploy").glob("**/*.json")}
    calib = {p: p.stat().st_mtime_ns for p in (out / "calibration").glob("*.csv")}
    run_json = (out / "run.json").read_bytes()

    from vlmad.study.factory import StudyDetectorFactory

    def refuse(self, spec):
        raise AssertionError(f"a finished study must not build a detector ({spec['label']})")

    monkeypatch.setattr(StudyDetectorFactory, "__call__", refuse)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert (out / "results.jsonl").read_bytes() == results
    assert (out / "run.json").read_bytes() == run_json, "no benchmark phase was even started"
    assert {p: p.stat().st_mtime_ns for p in (out / "deploy").glob("**/*.json")} == deploy
    assert {p: p.stat().st_mtime_ns for p in (out / "calibration").glob("*.csv")} == calib
    study = json.loads((out / "study.json").read_text())
    assert study["invocations"][-1]["computed"] == 0 and len(study["invocations"]) == 2
    assert "gallery" in (out / "report.html").read_text()


def test_deploy_uses_the_current_draws_csv_not_the_newest(quick_run):
    """Another draw's calibration CSV, newer on disk, must not be used (no mtime)."""
    out, args = quick_run
    files = sorted((out / "deploy").glob("*/*/*.json"))
    before = {f: load_deploy(f).record for f in files}
    current = out / before[files[0]]["calibration"]["scores_file"]
    row_key = before[files[0]]["calibration"]["row_key"]
    stale = current.with_name(f"{row_key}-00000000.csv")
    lines = current.read_text().splitlines()
    header = lines[0].split(",")
    score_col = header.index("score")
    rows = [line.split(",") for line in lines[1:]]
    for r in rows:
        r[score_col] = "9.5"
    stale.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    try:
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output + repr(result.exception)
        after = load_deploy(files[0]).record
        assert after["threshold"] == before[files[0]]["threshold"] < 9.5
        assert after["calibration"]["scores_file"] == before[files[0]]["calibration"]["scores_file"]
    finally:
        stale.unlink()


def test_report_command_rebuilds_the_report(quick_run):
    out, _ = quick_run
    (out / "report.html").unlink()
    result = CliRunner().invoke(app, ["report", str(out), "--no-gallery"])
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    assert "Gallery disabled" in html and 'id="calibration"' in html

"""`vlmad benchmark` on the command line, and the option parsing behind it."""

from __future__ import annotations

import shutil
import sys

import pytest

from vlmad.bench import build_method_specs, load_results
from vlmad.cli import main
from vlmad_runtime.errors import UnknownNameError, VlmadError

TINY = ["--model", "vlmad-tiny-vit", "--random-weights"]


def test_benchmark_command_end_to_end(mvtec_root, tmp_path, cli):
    out = tmp_path / "run"
    args = [
        "benchmark",
        "--dataset",
        "mvtec",
        "--root",
        str(mvtec_root),
        "--out",
        str(out),
        *TINY,
        "--shots",
        "0,1",
        "--seeds",
        "0",
        "--limit",
        "2",
        "--num-workers",
        "2",
        "--batch-size",
        "2",
        "--set",
        "winclip.prompt_set=winclip-paper",
        "--aupro",
        "both",
        "--no-flops",
    ]
    result = cli(args)
    assert result.exit_code == 0, result.output
    rows = load_results(out)
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert all(r["detector"]["prompt_set"] == "winclip-paper" for r in rows)
    assert rows[0]["method_options"] == {"prompt_set": "winclip-paper"}
    assert {"aupro", "aupro_legacy200"} <= set(rows[0]["metrics"])
    assert rows[0]["run"]["num_workers"] == 2 and rows[0]["protocol"]["limit"] == 2
    for name in ("tables/mvtec_image.md", "tables/mvtec_pixel.csv", "efficiency.md", "summary.md", "run.json"):
        assert (out / name).exists(), name
    summary = (out / "summary.md").read_text()
    assert "random weights - scores are meaningless" in summary and "Efficiency" in summary
    assert "--random-weights" in summary  # the command is recorded
    again = cli(args)
    assert again.exit_code == 0 and len(load_results(out)) == 4


def test_stop_on_unreadable_image_exits_with_the_message(tmp_path, mvtec_root, monkeypatch, capsys):
    root = tmp_path / "data"
    shutil.copytree(mvtec_root, root)
    (root / "demo_object" / "test" / "good" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "vlmad",
            "benchmark",
            "--dataset",
            "mvtec",
            "--root",
            str(root),
            "--out",
            str(tmp_path / "run"),
            *TINY,
            "--on-error",
            "stop",
            "--categories",
            "demo_object",
            "--quiet",
            "--no-flops",
        ],
    )
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "000.png" in err and "--on-error skip" in err


def test_dataset_and_root_must_pair(tmp_path, mvtec_root, cli):
    result = cli(
        [
            "benchmark",
            "--dataset",
            "mvtec",
            "--dataset",
            "visa",
            "--root",
            str(mvtec_root),
            "--out",
            str(tmp_path / "r"),
            *TINY,
        ],
    )
    assert isinstance(result.exception, VlmadError) and "--root" in result.exception.message


def test_method_specs_from_options():
    (spec,) = build_method_specs(
        "winclip",
        model=["vlmad-tiny-vit"],
        checkpoint=["winclip=w.safetensors"],
        sets=["winclip.scales=[2]", "batch_size=4"],
    )
    assert spec == {
        "method": "winclip",
        "label": "winclip",
        "kwargs": {"model": "vlmad-tiny-vit", "checkpoint": "w.safetensors", "scales": [2], "batch_size": 4},
    }
    assert build_method_specs("winclip", random_weights=True)[0]["kwargs"] == {"random_weights": True}
    with pytest.raises(UnknownNameError, match="aprilgan"):
        build_method_specs("winclip", checkpoint=["aprilgan=w.safetensors"])
    with pytest.raises(UnknownNameError, match="unknown method"):
        build_method_specs("winclip,nope")
    with pytest.raises(VlmadError, match="one weights source"):
        build_method_specs("winclip", checkpoint=["w.safetensors"], random_weights=True)
    with pytest.raises(VlmadError, match="KEY=VALUE"):
        build_method_specs("winclip", sets=["winclip.prompt_set"])

"""The JSONL store: atomic appends, truncated last line, duplicates, lock, score files."""

from __future__ import annotations

import json
import warnings

import pytest

from vlmad.bench.results import ResultsStore, RunLock, load_results, read_scores, write_scores
from vlmad_runtime.errors import VlmadError


def test_append_and_load(tmp_path):
    store = ResultsStore(tmp_path)
    store.append({"row_key": "a", "v": 1})
    store.append({"row_key": "b", "v": 2})
    store.append({"row_key": "a", "v": 3})  # same key again: last wins
    rows = load_results(tmp_path)
    assert {r["row_key"]: r["v"] for r in rows} == {"a": 3, "b": 2}
    assert store.keys() == {"a", "b"}


def test_truncated_last_line_is_tolerated_and_next_append_starts_a_new_line(tmp_path):
    path = tmp_path / "results.jsonl"
    full = json.dumps({"row_key": "a", "status": "ok"})
    path.write_text(full + "\n" + json.dumps({"row_key": "b", "status": "ok"})[:17])  # crash mid-write
    with pytest.warns(UserWarning, match="truncated last line"):
        assert [r["row_key"] for r in load_results(path)] == ["a"]
    ResultsStore(tmp_path).append({"row_key": "c", "status": "ok"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        keys = [r["row_key"] for r in load_results(tmp_path)]
    assert keys == ["a", "c"]
    assert any("corrupt line 2" in str(w.message) for w in caught)  # the old fragment, now mid-file
    assert path.read_text().endswith("\n")


def test_lock_prevents_a_second_writer(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(VlmadError, match="another vlmad benchmark"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # released
        pass


def test_scores_roundtrip(tmp_path):
    p = tmp_path / "scores" / "k.csv"
    write_scores(
        p,
        [
            {"path": "c/test/good/0.png", "label": "normal", "defect_type": "good", "score": 0.25},
            {
                "path": "c/test/bad/1.png",
                "label": "anomalous",
                "defect_type": "bad",
                "score": None,
                "error": "truncated",
            },
        ],
    )
    rows = read_scores(p)
    assert rows[0]["score"] == 0.25 and rows[1]["score"] is None and rows[1]["error"] == "truncated"

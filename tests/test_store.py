"""ResponseStore: append, reload, merge, matrices, and clear errors on malformed files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from merge3.evaluation.store import ResponseStore


def test_append_reload_and_matrix(tmp_path):
    s = ResponseStore(tmp_path / "r.jsonl")
    s.add("a", {"t1": {"x": 1, "y": 0}, "t2": {"u": 1}}, {"kind": "endpoint"})
    s.add("b", {"t1": {"x": 0, "y": 1}})
    s.add("b", {"t1": {"z": 1}, "t2": {"u": 0}})  # later partial evaluations accumulate
    r = ResponseStore(tmp_path / "r.jsonl")
    assert r.models() == ["a", "b"] and r.get("b") == {"t1": {"x": 0, "y": 1, "z": 1}, "t2": {"u": 0}}
    assert r.meta("a") == {"kind": "endpoint"}
    models, items, Y = r.matrix("t1")
    assert models == ["a", "b"] and items == ["x", "y"]  # only items every model answered
    assert Y.tolist() == [[1, 0], [0, 1]] and Y.dtype == np.int8
    with pytest.raises(ValueError, match="'a' has no response for 1 item"):
        r.matrix("t1", item_ids=["x", "z"])
    with pytest.raises(KeyError, match="no responses for model 'c'"):
        r.get("c")
    # A directory path means <dir>/responses.jsonl.
    assert ResponseStore(tmp_path).path == tmp_path / "responses.jsonl"


def test_malformed_lines_name_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"model": "a", "responses": {"t": {"x": 1}}}) + "\n{not json\n"
                 + json.dumps({"model": "b", "responses": {"t": {"x": 0}}}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: malformed"):
        ResponseStore(p)
    p.write_text(json.dumps({"model": "a", "responses": {"t": {"x": 2}}}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: task 't' item 'x' has response 2"):
        ResponseStore(p)
    p.write_text(json.dumps({"responses": {}}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: expected an object with 'model'"):
        ResponseStore(p)
    with pytest.raises(ValueError, match="expected 0 or 1"):
        ResponseStore(tmp_path / "ok.jsonl").add("m", {"t": {"x": "yes"}})


def test_torn_tail_is_ignored_and_repaired(tmp_path):
    p = tmp_path / "r.jsonl"
    s = ResponseStore(p)
    s.add("a", {"t": {"x": 1}})
    with open(p, "a") as f:
        f.write('{"model": "b", "respon')  # a crash mid-append
    s2 = ResponseStore(p)
    assert s2.models() == ["a"]
    s2.add("c", {"t": {"x": 0}})
    assert ResponseStore(p).models() == ["a", "c"]
    assert all(json.loads(line) for line in p.read_text().splitlines())

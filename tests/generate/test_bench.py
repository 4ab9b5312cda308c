"""`omnitok bench generate` runs on the debug preset and its JSON has every field."""

from __future__ import annotations

import json

import pytest

from omnitok.cli import main


def test_bench_generate_json(tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "bench.json"
    code = main(["bench", "generate", "--model", "debug", "--batch", "1", "2", "--prompt-len",
                 "8", "--gen-len", "4", "--repeats", "1", "--vocab-size", "256", "--json",
                 str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "transformers" in table and "omnitok" in table
    data = json.loads(out.read_text())
    assert {"omnitok", "torch", "device", "threads", "copy_GBps", "dtype"} <= set(data["info"])
    rows = data["rows"]
    assert [(r["backend"], r["batch"]) for r in rows] == [
        ("omnitok", 1), ("transformers", 1), ("omnitok", 2), ("transformers", 2)]
    for r in rows:
        assert r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 and r["bandwidth_GBps"] > 0
        assert r["step_ms"]["low"] <= r["step_ms"]["median"] <= r["step_ms"]["high"]
        if r["backend"] == "transformers":
            assert r["vs_hf"] == pytest.approx(1.0)
        else:
            assert r["vs_hf"] > 0

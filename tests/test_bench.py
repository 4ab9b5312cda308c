"""`omnitok bench`: the default suite runs on the debug preset and its JSON has every field."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from omnitok.cli import main


def test_suite_on_debug_preset(tmp_path, capsys):
    pytest.importorskip("transformers")
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = main(["bench", "--model", "debug", "--batch", "1,2", "--prompt-len", "8",
                 "--gen-len", "4", "--repeats", "1", "--stages", "generate", "media",
                 "tokenizers", "--json", str(out), "--plot", str(png)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "generation" in printed and "media" in printed and "tokenizers" in printed
    report = json.loads(out.read_text())
    assert {"omnitok", "torch", "triton", "device", "threads", "copy_GBps"} <= set(
        report["info"])
    backends = {(r["backend"], r["dtype"], r["batch"]) for r in report["generate"]}
    assert backends == {(b, d, n) for n in (1, 2) for b, d in
                        (("omnitok", "float32"), ("omnitok", "bfloat16"),
                         ("transformers", "float32"))}
    for r in report["generate"]:
        assert r["decode_tok_s"] > 0 and r["step_ms"]["low"] <= r["step_ms"]["median"]
    media = {(r["what"].split()[0], r["backend"], r["cfg"]) for r in report["media"]}
    assert {("image", "omnitok", 1.0), ("image", "omnitok", 3.0),
            ("image", "transformers", 3.0), ("audio", "omnitok", 1.0)} <= media
    audio = [r for r in report["media"] if r["what"].startswith("audio")][0]
    assert audio["realtime_factor"] > 0
    directions = {(r["what"].split()[0], r["direction"]) for r in report["tokenizers"]}
    assert directions == {("image", "encode"), ("image", "decode"), ("audio", "encode"),
                          ("audio", "decode")}
    assert Image.open(png).size[0] > 0


def test_unknown_stage_is_one_line(capsys):
    assert main(["bench", "--stages", "nope"]) == 1
    assert "unknown stages" in capsys.readouterr().err


def test_bench_train_json(tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "train.json"
    code = main(["bench", "train", "--model", "debug", "--seq-len", "32", "--steps", "2",
                 "--warmup", "1", "--threads", "1", "--json", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["train"]
    assert {(r["name"], r["precision"]) for r in rows} == {
        (n, p) for n in ("omnitok", "transformers") for p in ("fp32", "bf16")}
    for r in rows:
        s = r["step_s"]
        assert r["tokens_per_s"] > 0 and r["peak_mb"] > 0 and s["low"] <= s["median"] <= s["high"]
    assert main(["bench", "train", "--precision", "fp8"]) == 1


def test_bench_loss_compares_gradients_and_times(capsys):
    assert main(["bench", "loss", "--tokens", "300", "--vocab", "257", "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    diff = float(printed.split("gradients differ by ")[1].split()[0])
    assert diff < 1e-3, printed  # the blockwise loss's gradient is the float32 one
    for name in ("float32 copy", "blockwise"):
        assert float(printed.split(name)[1].split("ms")[0]) > 0, printed
    assert "x faster" in printed

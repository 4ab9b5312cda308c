"""The `omnitok` command line: every subcommand has help; bad input gives one line, exit 1."""

from __future__ import annotations

import json

import pytest

from omnitok.cli import COMMANDS, main


def leaves(node=COMMANDS, path=()):
    for name, child in node.items():
        if name.startswith("_"):
            continue
        if isinstance(child, dict):
            yield from leaves(child, (*path, name))
        else:
            yield (*path, name)


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, pattern):
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omnitok: error: "), err
    assert pattern in lines[0], lines[0]


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("path", list(leaves()), ids=" ".join)
def test_each_subcommand_has_help(capsys, path):
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    assert "usage: omnitok " + " ".join(path) in capsys.readouterr().out


def test_unknown_flag_and_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["model", "init", "--bogus"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["nosuchcommand"])
    assert e.value.code == 2


def test_train_text_tokenizer_and_errors(capsys, tmp_path, corpus_jsonl):
    code, out, _ = run(capsys, "tokenizer", "train", "text", "--data", corpus_jsonl,
                       "--vocab-size", 300, "--out", tmp_path / "tok")
    assert code == 0 and (tmp_path / "tok" / "text.model").is_file()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    one_line_error(*run(capsys, "tokenizer", "train", "text", "--data", empty, "--out",
                        tmp_path / "t2")[::2], "no text found")
    one_line_error(*run(capsys, "tokenizer", "train", "text", "--data", tmp_path / "missing.txt",
                        "--out", tmp_path / "t2")[::2], "missing.txt")
    assert not (tmp_path / "t2").exists()


def test_config_file_supplies_flags(capsys, tmp_path, corpus_jsonl):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"data": [str(corpus_jsonl)], "vocab-size": 280,
                               "out": str(tmp_path / "tok")}))
    code, _, _ = run(capsys, "tokenizer", "train", "text", "--config", cfg, "--vocab-size", 290)
    assert code == 0
    from omnitok.tokenizers.text import TextTokenizer

    assert TextTokenizer.load(tmp_path / "tok").vocab_size == 290  # the command line wins


@pytest.fixture
def checkpoint(capsys, tmp_path, text_tokenizer):
    text_tokenizer.save(tmp_path / "tok")
    code, out, err = run(capsys, "model", "init", "--preset", "debug", "--tokenizer",
                         tmp_path / "tok", "--out", tmp_path / "ck")
    assert code == 0, err
    return tmp_path / "ck"


def test_model_init_and_info(capsys, checkpoint):
    code, out, _ = run(capsys, "model", "info", checkpoint)
    assert code == 0 and "audio_3" in out and "layers      2 x dim 64" in out


def test_bad_checkpoints_give_one_line(capsys, tmp_path, checkpoint):
    one_line_error(*run(capsys, "model", "init", "--preset", "enormous", "--tokenizer",
                        tmp_path / "tok", "--out", tmp_path / "x")[::2], "unknown model preset")
    config = json.loads((checkpoint / "config.json").read_text())
    config["model"]["dim"] = 96
    (checkpoint / "config.json").write_text(json.dumps(config))
    one_line_error(*run(capsys, "model", "info", checkpoint)[::2], "disagrees with")
    config["model"]["dim"] = 64
    (checkpoint / "config.json").write_text(json.dumps(config))
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    one_line_error(*run(capsys, "model", "info", checkpoint)[::2], "corrupt or truncated")
    (checkpoint / "config.json").write_text("{not json")
    one_line_error(*run(capsys, "model", "info", checkpoint)[::2], "not valid JSON")
    one_line_error(*run(capsys, "model", "info", tmp_path / "nowhere")[::2], "no such")


def test_convert_hf(capsys, tmp_path, text_tokenizer):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=text_tokenizer.vocab_size, hidden_size=64,
                                   intermediate_size=128, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    text_tokenizer.save(tmp_path / "tok")
    code, out, err = run(capsys, "convert", "hf", tmp_path / "hf", tmp_path / "ck",
                         "--tokenizer", tmp_path / "tok", "--audio-levels", 2)
    assert code == 0, err
    code, out, _ = run(capsys, "model", "info", tmp_path / "ck")
    assert code == 0 and "audio       2 levels" in out
    one_line_error(*run(capsys, "convert", "hf", tmp_path / "tok", tmp_path / "ck2")[::2],
                   "config.json: missing")


def test_demo_runs(capsys, tmp_path):
    code, out, err = run(capsys, "demo", "--untrained", "--out", tmp_path / "demo",
                         "--new-tokens", 5)
    assert code == 0, err
    assert (tmp_path / "demo" / "generated.txt").read_text().startswith("a red circle on a")
    assert "generate    5 tokens" in out

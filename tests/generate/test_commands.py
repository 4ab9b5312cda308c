"""`omnitok generate` end to end on tiny random checkpoints: files, streaming, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from omnitok.cli import build_parser, main
from omnitok.generate import outputs
from omnitok.generate.commands import generate_command
from omnitok.generate.generator import GenerationSettings, Generator
from omnitok.model.checkpoint import load_checkpoint
from omnitok.tokenizers.document import Document, TextSegment
from omnitok.generate.prompts import PromptPart


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, pattern):
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("omnitok: error: "), err
    assert pattern in lines[0], lines[0]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(folder / "in.png")
    sf.write(folder / "in.wav", 0.1 * rng.standard_normal(1600), 16000)
    return folder


def test_prompt_flags_keep_their_order():
    parser = build_parser(generate_command, "omnitok generate", "")
    args = parser.parse_args(["--image", "a.png", "--text", "Describe this.", "--audio",
                              "b.wav", "--text", "then", "--image.top-k", "7"])
    assert args.prompt == [PromptPart("image", "a.png"), PromptPart("text", "Describe this."),
                           PromptPart("audio", "b.wav"), PromptPart("text", "then")]
    assert vars(args)["image.top_k"] == 7


def test_image_answer_and_result(capsys, any_ckpt, media, tmp_path):
    code, out, err = run(capsys, "generate", any_ckpt, "--image", media / "in.png", "--text",
                         "what is this", "--to", "image", "-o", tmp_path, "--cfg-scale", "2",
                         "--image.top-k", "5")
    assert code == 0, err
    png = tmp_path / "answer_0.png"
    assert Image.open(png).size == (16, 16)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["answers"][0]["files"] == [{"kind": "image", "path": str(png)}]
    assert result["settings"]["sampling"]["image"]["top_k"] == 5
    assert result["settings"]["cfg_scale"] == 2.0 and result["answers"][0]["seed"] == 0


def test_text_answer_is_printed(capsys, any_ckpt, tmp_path):
    code, out, err = run(capsys, "generate", any_ckpt, "--text", "a red", "--to", "text",
                         "--max-new-tokens", "12", "-o", tmp_path, "--seed", "3")
    assert code == 0, err
    text = (tmp_path / "answer_0.txt").read_text().rstrip("\n")
    assert out.strip() == text.strip()


def test_same_seed_gives_byte_identical_files(capsys, any_ckpt, tmp_path):
    outs = []
    for name in ("a", "b"):
        code, _, err = run(capsys, "generate", any_ckpt, "--text", "say", "--to", "auto",
                           "-o", tmp_path / name, "--seed", "11", "--max-new-tokens", "150")
        assert code == 0, err
        outs.append({p.name: p.read_bytes() for p in (tmp_path / name).iterdir()
                     if p.name != "result.json"})
    assert outs[0] == outs[1] and outs[0]


@pytest.mark.parametrize("ckpt", ["any_ckpt", "delay_ckpt"])
def test_streamed_audio_equals_the_whole_decode(capsys, request, tmp_path, monkeypatch, ckpt):
    ckpt = request.getfixturevalue(ckpt)
    monkeypatch.setattr(outputs, "AUDIO_CHUNK_SECONDS", 0.02)  # 10 frames per window
    monkeypatch.setattr(outputs, "AUDIO_CONTEXT_SECONDS", 0.01)
    files, opened = [], []
    real = outputs._WavWriter.__init__

    def spy(self, path, *args):  # the streamed WAV is opened while generating
        opened.append(path)
        real(self, path, *args)

    monkeypatch.setattr(outputs._WavWriter, "__init__", spy)
    for name, flag in (("plain", "--no-stream"), ("stream", "--stream")):
        code, _, err = run(capsys, "generate", ckpt, "--text", "speak", "--to", "audio",
                           "--max-audio-seconds", "0.2",
                           "--min-audio-seconds", "0.1", "-o", tmp_path / name, flag,
                           "--seed", "4")
        assert code == 0, err
        files.append((tmp_path / name / "answer_0.wav").read_bytes())
    assert files[0] == files[1] and opened == [tmp_path / "stream" / "answer_0.wav"]
    assert sf.info(str(tmp_path / "plain" / "answer_0.wav")).frames > 32 * 30


def test_prompt_file_in_batches(capsys, any_ckpt, media, tmp_path):
    lines = [{"segments": [{"text": "a blue star"}]},
             {"segments": [{"image": "in.png"}, {"text": "caption:"}]},
             {"segments": [{"audio": "in.wav"}]}]
    prompts = media / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    code, _, err = run(capsys, "generate", any_ckpt, "--prompts", prompts, "--to", "text",
                       "--batch-size", "2", "--max-new-tokens", "8", "-o", tmp_path)
    assert code == 0, err
    result = json.loads((tmp_path / "result.json").read_text())
    assert [a["seed"] for a in result["answers"]] == [0, 1, 2]
    assert all((tmp_path / f"{i:04d}_0.txt").exists() for i in range(3))


def test_bad_input_gives_one_line_and_no_files(capsys, any_ckpt, text_ckpt, media, tmp_path):
    out = tmp_path / "out"
    cases = [
        (("generate", any_ckpt, "--image", media / "nope.png"), "no such image file"),
        (("generate", text_ckpt, "--image", media / "in.png"), "no image tokenizer"),
        (("generate", text_ckpt, "--audio", media / "in.wav"), "no audio tokenizer"),
        (("generate", text_ckpt, "--text", "hi", "--to", "image"), "cannot generate images"),
        (("generate", any_ckpt, "--text", "red " * 400, "--to", "image"), "positions"),
        (("generate", any_ckpt, "--text", ""), "prompt is empty"),
        (("generate", any_ckpt), "no prompt"),
        (("generate", any_ckpt, "--image", media / "in.wav"), "an audio file given as --image"),
        (("generate", tmp_path / "missing", "--text", "x"), "no such checkpoint"),
        (("generate", any_ckpt, "--text", "x", "--cfg-interval", "0.5", "0.2"), "cfg-interval"),
        (("generate", any_ckpt, "--text", "x", "--text.top-p", "0"), "top_p"),
    ]
    for argv, pattern in cases:
        code, _, err = run(capsys, *argv, "-o", out)
        one_line_error(code, err, pattern)
        assert not out.exists()
    bad = media / "bad.jsonl"
    bad.write_text('{"segments": [{"text": "ok"}]}\n{"segments": [{"image": "../x.png"}]}\n')
    code, _, err = run(capsys, "generate", any_ckpt, "--prompts", bad, "-o", out)
    one_line_error(code, err, "bad.jsonl:2")
    with pytest.raises(SystemExit) as e:
        main(["generate", str(any_ckpt), "--text", "x", "--bogus"])
    assert e.value.code == 2
    assert not out.exists()


def test_stream_answer_yields_text_and_audio_as_generated(any_ckpt, monkeypatch):
    from omnitok.generate.generator import GenerationSettings, Generator
    from omnitok.model.checkpoint import load_checkpoint
    from omnitok.tokenizers.document import AudioSegment, Document, TextSegment

    monkeypatch.setattr(outputs, "AUDIO_CHUNK_SECONDS", 0.02)
    monkeypatch.setattr(outputs, "AUDIO_CONTEXT_SECONDS", 0.01)
    gen = Generator(load_checkpoint(any_ckpt))
    settings = GenerationSettings(target="audio", max_audio_seconds=0.2, min_audio_seconds=0.1,
                                  seed=2)
    events = list(gen.stream_answer(Document([TextSegment("hi")]), settings))
    kinds = [k for k, _ in events]
    assert kinds[-1] == "done" and kinds.count("audio") >= 3
    answer = events[-1][1]
    [seg] = answer.document.segments
    assert isinstance(seg, AudioSegment)
    streamed = torch.cat([v for k, v in events if k == "audio"], dim=1)
    whole = outputs.decode_audio(gen.tokenizers, seg.codes).clamp(-1, 1)
    assert torch.equal(streamed, whole)
    text = GenerationSettings(target="text", max_new_tokens=10, seed=1)
    pieces = [v for k, v in gen.stream_answer(Document([TextSegment("a")]), text) if k == "text"]
    final = list(gen.stream_answer(Document([TextSegment("a")]), text))[-1][1]
    assert "".join(pieces) == final.document[0].text


def test_demo_with_a_checkpoint_answers_in_every_modality(capsys, any_ckpt, tmp_path):
    code, out, err = run(capsys, "demo", "--ckpt", any_ckpt, "--out", tmp_path)
    assert code == 0, err
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audio_0.wav", "caption_0.txt", "image_0.png"]
    assert Image.open(tmp_path / "image_0.png").size == (16, 16)
    assert "caption" in out and str(tmp_path / "caption_0.txt") in out


def test_rerank_and_via_text_from_the_command_line(capsys, any_ckpt, media, tmp_path):
    code, _, err = run(capsys, "generate", any_ckpt, "--text", "draw:", "--image",
                       media / "in.png", "--to", "image", "--rerank", "2", "--via-text",
                       "-o", tmp_path)
    assert code == 0, err
    [answer] = json.loads((tmp_path / "result.json").read_text())["answers"]
    assert isinstance(answer["via"], str) and isinstance(answer["read_back"], float)
    assert Image.open(tmp_path / "answer_0.png").size == (16, 16)
    code, out, err = run(capsys, "generate", any_ckpt, "--text", "write:", "--image",
                         media / "in.png", "--to", "text", "--rerank", "3",
                         "--image-weight", "0.5", "-o", tmp_path / "c")
    assert code == 0, err
    result = json.loads((tmp_path / "c" / "result.json").read_text())
    assert result["settings"]["image_weight"] == 0.5
    assert isinstance(result["answers"][0]["read_back"], float)
    code, _, err = run(capsys, "generate", any_ckpt, "--text", "draw: a", "--to", "text",
                       "--rerank", "2", "-o", tmp_path / "t")
    one_line_error(code, err, "scores it against the prompt's image or audio")
    code, _, err = run(capsys, "generate", any_ckpt, "--text", "draw: a", "--to", "image",
                       "--rerank", "2", "--stream", "-o", tmp_path / "s")
    one_line_error(code, err, "--stream follows one answer")
    assert not (tmp_path / "t").exists() and not (tmp_path / "s").exists()


def test_word_by_word_from_the_command_line(capsys, any_ckpt, media, tmp_path):
    code, _, err = run(capsys, "generate", any_ckpt, "--text", "say: a red star", "--to",
                       "audio", "--word-by-word", "--max-word-seconds", "0.05", "--seed", "4",
                       "-o", tmp_path)
    assert code == 0, err
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["settings"]["word_by_word"] is True
    wav, rate = sf.read(tmp_path / "answer_0.wav")
    gen = Generator(load_checkpoint(any_ckpt))
    settings = GenerationSettings(target="audio", word_by_word=True, max_word_seconds=0.05,
                                  seed=4)
    [answer] = gen.generate([Document([TextSegment("say: a red star")])], settings)
    [seg] = answer.document.segments
    assert len(wav) == seg.codes.shape[1] * round(rate / gen.vocab.audio.frame_rate)
    code, _, err = run(capsys, "generate", any_ckpt, "--text", "say:", "--audio",
                       media / "in.wav", "--to", "audio", "--word-by-word", "-o", tmp_path / "w")
    one_line_error(code, err, "does not end with text")
    code, _, err = run(capsys, "generate", any_ckpt, "--text", "say: a", "--to", "image",
                       "--word-by-word", "-o", tmp_path / "i")
    one_line_error(code, err, "--word-by-word speaks a text: use --to audio")
    assert not (tmp_path / "w").exists() and not (tmp_path / "i").exists()

"""Reading back (--rerank) and answering media via text (--via-text): scores equal a float64
sum of log-probabilities, the kept candidate is the best-scored of the plain answers drawn with
its seeds (text answers: scored both ways against the prompt's media), and --via-text equals
the two steps done by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from omnitok import OmnitokError
from omnitok.generate.generator import (
    ROUND_SEEDS,
    GenerationSettings,
    Generator,
    candidate_sampling,
)
from omnitok.generate.rerank import (
    best_index,
    caption_scores,
    prompt_text,
    read_back_scores,
    reading_text,
    split_instruction,
    transcription_prompt,
    with_text,
)
from omnitok.model.checkpoint import load_checkpoint
from omnitok.tokenizers.document import AudioSegment, Document, ImageSegment, TextSegment


@pytest.fixture(scope="module", params=["any_ckpt", "cnn_ckpt"])
def gen(request):
    return Generator(load_checkpoint(request.getfixturevalue(request.param)))


def test_reading_text_drops_a_leading_instruction():
    assert split_instruction("draw: a red circle") == ("draw:", "a red circle")
    assert split_instruction(" a red circle ") == ("", "a red circle")
    assert split_instruction("draw:") == ("draw:", "")
    doc = Document([TextSegment("draw: a red"), ImageSegment(torch.zeros(2, 2, dtype=torch.long)),
                    TextSegment(" circle ")])
    assert prompt_text(doc) == "draw: a red circle"
    assert reading_text(doc) == "a red circle"
    assert with_text(doc, "a blue star") == Document([TextSegment("draw: a blue star")])
    assert with_text(Document([ImageSegment(torch.zeros(1, 1, dtype=torch.long))]),
                     "x") == Document([TextSegment("x")])
    audio = AudioSegment(torch.zeros(2, 3, dtype=torch.long))
    asked = transcription_prompt(Document([TextSegment("draw:"), audio]), "write:")
    assert asked == Document([TextSegment("write:"), audio])
    assert transcription_prompt(Document([TextSegment("draw: x")]), "write:") is None


def reference_score(gen: Generator, media, text: str) -> float:
    """Float64 log p(text + <eos> | <bos> write: media), one unpadded sequence."""
    prefix = gen.codec.encode(Document([TextSegment("write:"), media]), eos=False)
    ids = gen.codec.encode(Document([TextSegment("write:"), media, TextSegment(text)]))
    with torch.no_grad():
        logits = gen.model(torch.tensor([ids[:-1]]))[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(logp[t - 1, ids[t]].item() for t in range(len(prefix), len(ids)))


def test_scores_equal_the_float64_sum_of_log_probabilities(gen):
    h, w = gen.image_grid()
    g = torch.Generator().manual_seed(0)
    images = [ImageSegment(torch.randint(0, 32, (h, w), generator=g)) for _ in range(3)]
    audio = AudioSegment(torch.randint(0, 16, (2, 5), generator=g))
    answers = [Document([m]) for m in [*images, audio]] + [Document([TextSegment("none")])]
    texts = ["a red circle", "on a blue background please", "star", "the green hexagon", "x"]
    scores = read_back_scores(gen.model, gen.codec, answers, texts, "write:", batch_size=2)
    for answer, text, score in zip(answers[:4], texts, scores):
        assert score == pytest.approx(reference_score(gen, answer[0], text), abs=1e-3)
    assert scores[4] == float("-inf")  # no media to read back
    assert len(set(scores[:4])) == 4


def float64_log_likelihood(gen: Generator, prefix: Document, whole: Document) -> float:
    """Float64 log p(the ids of `whole` after those of `prefix`), one unpadded sequence."""
    start = len(gen.codec.encode(prefix, eos=False))
    ids = gen.codec.encode(whole, eos=isinstance(whole[-1], TextSegment))
    assert ids[:start] == gen.codec.encode(prefix, eos=False)
    with torch.no_grad():
        logp = torch.log_softmax(gen.model(torch.tensor([ids[:-1]]))[0].double(), -1)
    return sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids)))


def test_caption_scores_are_both_ways_float64_sums(gen):
    h, w = gen.image_grid()
    g = torch.Generator().manual_seed(1)
    image = ImageSegment(torch.randint(0, 32, (h, w), generator=g))
    audio = AudioSegment(torch.randint(0, 16, (2, 6), generator=g))
    prompts = [Document([TextSegment("write:"), image]),
               Document([audio, TextSegment("write:"), image]),
               Document([TextSegment("write:"), audio])]
    texts = ["a red circle", "a blue star on a green background", "on a"]
    scores = caption_scores(gen.model, gen.codec, prompts, texts,
                            {"image": "draw:", "audio": "say:"}, batch_size=2)
    for prompt, text, score in zip(prompts, texts, scores):
        expected = float64_log_likelihood(gen, prompt, Document([*prompt, TextSegment(text)]))
        for media in (s for s in prompt if not isinstance(s, TextSegment)):
            ask = "draw:" if isinstance(media, ImageSegment) else "say:"
            asked = Document([TextSegment(f"{ask} {text}")])
            expected += float64_log_likelihood(gen, asked, Document([*asked, media]))
        assert score == pytest.approx(expected, abs=2e-3)
    flipped = caption_scores(gen.model, gen.codec, prompts[:1], texts[:1],
                             {"image": "say:", "audio": "draw:"})
    assert flipped[0] != pytest.approx(scores[0], abs=1e-3)  # the instruction is used
    weighed = caption_scores(gen.model, gen.codec, prompts, texts,
                             {"image": "draw:", "audio": "say:"}, {"image": 0.5, "audio": 0})
    forward = [float64_log_likelihood(gen, p, Document([*p, TextSegment(t)]))
               for p, t in zip(prompts, texts)]
    drawn = [s - f for s, f in zip(scores, forward)]  # the image part of the first prompt
    assert weighed[0] == pytest.approx(forward[0] + 0.5 * drawn[0], abs=2e-3)
    assert weighed[2] == pytest.approx(forward[2], abs=2e-3)  # speech weighs nothing


def test_text_rerank_keeps_the_best_fitting_candidate(gen):
    h, w = gen.image_grid()
    image = ImageSegment(torch.arange(h * w).reshape(h, w) % 32)
    audio = AudioSegment(torch.arange(12).reshape(2, 6) % 16)
    prompts = [Document([TextSegment("write:"), image]), Document([TextSegment("write:"), audio])]
    settings = GenerationSettings(target="text", greedy=True, seed=5, max_new_tokens=6,
                                  batch_size=2)
    best = gen.generate(prompts, replace(settings, rerank=4))
    drawn = candidate_sampling(settings)
    assert not drawn.greedy and drawn.sampling.text.temperature == 1.0
    rounds = [gen.generate(prompts, replace(settings if j == 0 else drawn,
                                            seed=5 + j * ROUND_SEEDS)) for j in range(4)]
    assert [a.ids for a in rounds[0]] == [a.ids for a in gen.generate(prompts, settings)]
    for i, prompt in enumerate(prompts):
        texts = [prompt_text(r[i].document) for r in rounds]
        assert len(set(texts)) > 1  # the candidates after the first are drawn, not greedy
        scored = gen.caption_scores([prompt] * 4, texts, settings)
        k = max(range(4), key=lambda j: scored[j])
        assert best[i].ids == rounds[k][i].ids and best[i].seed == rounds[k][i].seed
        assert best[i].score == pytest.approx(scored[k], abs=1e-4)


def test_best_index_picks_each_prompts_best_candidate():
    scores = [0.0, -1.0, -5.0, -0.5, 2.0, -5.0]  # 3 prompts, 2 rounds
    assert best_index(scores, 3, 2) == [0, 4, 2]  # a tie keeps the first round


@pytest.mark.parametrize("target", ["image", "audio"])
def test_rerank_keeps_the_best_read_plain_answer(gen, target):
    prompts = [Document([TextSegment("draw: a red circle")]),
               Document([TextSegment("say: on a blue background")])]
    settings = GenerationSettings(target=target, seed=3, max_audio_seconds=0.1, batch_size=2)
    best = gen.generate(prompts, replace(settings, rerank=3))
    rounds = [gen.generate(prompts, replace(settings, seed=3 + j * ROUND_SEEDS))
              for j in range(3)]
    assert [a.ids for a in rounds[0]] == [a.ids for a in gen.generate(prompts, settings)]
    for i, text in enumerate(["a red circle", "on a blue background"]):
        scored = [(gen.read_back([r[i].document], [text], settings)[0], r[i]) for r in rounds]
        score, expected = max(scored, key=lambda pair: pair[0])
        assert best[i].ids == expected.ids and best[i].seed == expected.seed
        assert best[i].score == pytest.approx(score, abs=1e-4)
    assert len({tuple(r[0].ids) for r in rounds}) == 3  # the candidates differ


def test_via_text_is_writing_then_answering(gen):
    h, w = gen.image_grid()
    image = ImageSegment(torch.arange(h * w).reshape(h, w) % 32)
    prompt = Document([TextSegment("say:"), image])
    settings = GenerationSettings(target="audio", seed=1, max_audio_seconds=0.1)
    [answer] = gen.generate([prompt], replace(settings, via_text=True))
    write = GenerationSettings(target="text", greedy=True, max_new_tokens=64)
    [written] = gen.generate([Document([TextSegment("write:"), image])], write)
    heard = prompt_text(written.document)
    assert answer.via == heard and heard
    [direct] = gen.generate([Document([TextSegment(f"say: {heard}")])], settings)
    assert answer.ids == direct.ids


def test_via_text_with_rerank_writes_the_best_fitting_text(gen):
    h, w = gen.image_grid()
    image = ImageSegment(torch.arange(h * w).reshape(h, w) % 29)
    prompt = Document([TextSegment("say:"), image])
    settings = GenerationSettings(target="audio", seed=2, max_audio_seconds=0.1, rerank=3)
    [answer] = gen.generate([prompt], replace(settings, via_text=True))
    write = GenerationSettings(target="text", greedy=True, max_new_tokens=64, seed=2,
                               rerank=3)
    [written] = gen.generate([Document([TextSegment("write:"), image])], write)
    assert written.score is not None and answer.via == prompt_text(written.document)
    [direct] = gen.generate([Document([TextSegment(f"say: {answer.via}")])], settings)
    assert answer.ids == direct.ids and answer.score == direct.score


def test_reading_errors(gen):
    text_prompt = [Document([TextSegment("draw: a red circle")])]
    with pytest.raises(OmnitokError, match="prompt 0 has none"):
        gen.generate(text_prompt, GenerationSettings(target="text", rerank=2))
    with pytest.raises(OmnitokError, match="picks one answer of a kind"):
        gen.generate(text_prompt, GenerationSettings(target="auto", rerank=2))
    with pytest.raises(OmnitokError, match="--via-text applies to image and audio"):
        gen.generate(text_prompt, GenerationSettings(target="auto", via_text=True))
    with pytest.raises(OmnitokError, match="--rerank must be >= 1"):
        gen.generate(text_prompt, GenerationSettings(target="image", rerank=0))
    with pytest.raises(OmnitokError, match="has none beyond an instruction"):
        gen.generate([Document([TextSegment("draw:")])],
                     GenerationSettings(target="image", rerank=2))
    with pytest.raises(OmnitokError, match="has no image or audio"):
        gen.generate(text_prompt, GenerationSettings(target="image", via_text=True))

"""Speech word by word (--word-by-word): the answer is each word's speech drawn in turn after
the word's own text segment, with seeds that do not depend on the batch; the words' speech
concatenates into one audio segment; prompts that cannot be spoken this way fail clearly."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from omnitok import OmnitokError
from omnitok.generate.generator import (
    ROUND_SEEDS,
    WORD_SEEDS,
    GenerationSettings,
    Generator,
    check_words,
    spoken_words,
)
from omnitok.model.checkpoint import load_checkpoint
from omnitok.tokenizers.document import AudioSegment, Document, ImageSegment, TextSegment


@pytest.fixture(scope="module")
def gen(any_ckpt):
    return Generator(load_checkpoint(any_ckpt))


def by_hand(gen: Generator, head: list, words: list[str], settings: GenerationSettings,
            index: int) -> torch.Tensor:
    """Prompt `index` spoken one word at a time with single-prompt calls."""
    doc, parts = list(head), []
    for k, word in enumerate(words):
        doc.append(TextSegment(word))
        step = replace(settings, word_by_word=False, max_audio_seconds=settings.max_word_seconds,
                       seed=settings.seed + k * WORD_SEEDS + index)
        if settings.cfg_scale != 1.0 and len(doc) > 1:  # guided away from "without the word"
            step = replace(step, negative_prompt=Document(doc[:-1]))
        [answer] = gen.generate([Document(doc)], step)
        seg = next((s for s in answer.document if isinstance(s, AudioSegment)), None)
        codes = seg.codes if seg is not None else torch.zeros(2, 0, dtype=torch.long)
        doc.append(AudioSegment(codes))
        parts.append(codes)
    return torch.cat(parts, 1)


def test_spoken_words_splits_the_closing_text():
    image = ImageSegment(torch.zeros(2, 2, dtype=torch.long))
    head, words = spoken_words(Document([image, TextSegment("say: a red  circle")]), 0)
    assert head == [image, TextSegment("say:")] and words == ["a", "red", "circle"]
    head, words = spoken_words(Document([TextSegment("a red circle")]), 0)
    assert head == [] and words == ["a", "red", "circle"]
    with pytest.raises(OmnitokError, match="prompt 3 does not end with text"):
        spoken_words(Document([TextSegment("say:"), image]), 3)
    with pytest.raises(OmnitokError, match="prompt 1 has no words to speak after 'say:'"):
        spoken_words(Document([TextSegment("say:  ")]), 1)


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_word_by_word_is_each_word_spoken_in_turn(gen, cfg_scale):
    prompts = [Document([TextSegment("say: a red circle on a blue background")]),
               Document([TextSegment("on blue")]),  # no instruction: <uncond> guides word 0
               Document([TextSegment("say: a star")])]
    settings = GenerationSettings(target="audio", seed=5, word_by_word=True,
                                  max_word_seconds=0.1, batch_size=2, cfg_scale=cfg_scale)
    answers = gen.generate(prompts, settings)
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        head, words = spoken_words(prompt, i)
        expected = by_hand(gen, head, words, settings, i)
        [seg] = answer.document.segments
        assert isinstance(seg, AudioSegment) and torch.equal(seg.codes, expected)
        assert answer.ids == gen.codec.encode(answer.document, bos=False, eos=False)
        assert answer.prompt_ids == gen.encode_prompt(prompt) and answer.seed == 5 + i
    assert expected.shape[1] <= 2 * gen.audio_frames(0.1)  # each word capped
    if cfg_scale != 1.0:  # --word-cfg-scale guides the words whatever --cfg-scale says
        words = gen.generate(prompts, replace(settings, cfg_scale=1.0, word_cfg_scale=cfg_scale))
        assert [a.ids for a in words] == [a.ids for a in answers]


def test_word_by_word_with_rerank_reads_back_whole_answers(gen):
    prompt = Document([TextSegment("say: a red circle")])
    settings = GenerationSettings(target="audio", seed=1, word_by_word=True,
                                  max_word_seconds=0.1)
    [best] = gen.generate([prompt], replace(settings, rerank=2))
    drawn = [gen.generate([prompt], replace(settings, seed=1 + j * ROUND_SEEDS))[0]
             for j in range(2)]
    scores = gen.read_back([a.document for a in drawn], ["a red circle"] * 2, settings)
    assert best.ids == drawn[max(range(2), key=scores.__getitem__)].ids


def test_word_by_word_errors(gen):
    with pytest.raises(OmnitokError, match="--word-by-word speaks a text: use --to audio"):
        gen.generate([Document([TextSegment("say: a")])],
                     GenerationSettings(target="image", word_by_word=True))
    with pytest.raises(OmnitokError, match="--max-word-seconds must be > 0"):
        gen.generate([Document([TextSegment("say: a")])],
                     GenerationSettings(target="audio", word_by_word=True, max_word_seconds=0))
    audio = Document([TextSegment("say:"), AudioSegment(torch.zeros(2, 3, dtype=torch.long))])
    with pytest.raises(OmnitokError, match="prompt 0 does not end with text"):
        check_words([audio], GenerationSettings(target="audio", word_by_word=True))
    check_words([audio], GenerationSettings(target="audio", word_by_word=True, via_text=True))


def test_prompts_without_words_are_answered_whole(gen):
    audio = Document([TextSegment("say:"), AudioSegment(torch.arange(6).reshape(2, 3) % 16)])
    words = Document([TextSegment("say: a red")])
    settings = GenerationSettings(target="audio", seed=7, max_word_seconds=0.1,
                                  max_audio_seconds=0.2)
    mixed = gen.generate([audio, words, audio], replace(settings, word_by_word=True))
    whole = gen.generate([audio, words, audio], settings)
    assert mixed[0].ids == whole[0].ids and mixed[2].ids == whole[2].ids
    assert mixed[2].seed == 9
    [alone] = gen.generate([words], replace(settings, word_by_word=True, seed=8))
    assert mixed[1].ids == alone.ids  # the same seed whatever else is in the call


def test_words_stop_where_the_context_ends(gen):
    prompt = Document([TextSegment("say: a red circle on a blue background")])
    settings = GenerationSettings(target="audio", seed=0, word_by_word=True, max_word_seconds=1)
    [answer] = gen.generate([prompt], settings)  # no error: the later words find no room
    [seg] = answer.document.segments
    n_q = gen.vocab.audio.n_q
    assert 0 < seg.codes.shape[1] * n_q < gen.model.args.max_seq_len
    short = gen.generate([prompt], replace(settings, max_word_seconds=0.01))[0].document[0]
    assert short.codes.shape[1] < seg.codes.shape[1]


def test_word_by_word_via_text_speaks_what_the_model_wrote(gen):
    h, w = gen.image_grid()
    image = ImageSegment(torch.arange(h * w).reshape(h, w) % 32)
    settings = GenerationSettings(target="audio", seed=2, word_by_word=True,
                                  max_word_seconds=0.05)
    [answer] = gen.generate([Document([TextSegment("say:"), image])],
                            replace(settings, via_text=True))
    [direct] = gen.generate([Document([TextSegment(f"say: {answer.via}")])], settings)
    assert answer.via and answer.ids == direct.ids

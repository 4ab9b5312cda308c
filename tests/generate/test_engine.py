"""The engine: cached decoding equals recomputation, batches equal single runs, guidance is
uncond + s * (cond - uncond), seeds reproduce, finished rows leave the batch."""

from __future__ import annotations

import pytest
import torch

from omnitok.generate.generator import GenerationSettings, Generator
from omnitok.generate.sampling import ModalitySampling, SamplingParams
from omnitok.model.checkpoint import load_checkpoint
from omnitok.tokenizers.document import Document, ImageSegment, TextSegment

PROMPTS = ["a red circle", "on a blue background please", "star", "the green hexagon on top"]


@pytest.fixture(scope="module")
def gen(any_ckpt):
    return Generator(load_checkpoint(any_ckpt))


def docs(texts):
    return [Document([TextSegment(t)]) for t in texts]


def full_recompute_greedy(gen: Generator, prompt: list[int], answer: list[int],
                          target: str = "text") -> list[int]:
    """Greedy continuation by re-running the whole sequence each step, under the same masks
    (`prompt` ends with the target's opening ids)."""
    grammar = gen.grammar(GenerationSettings(target=target))
    state, _ = grammar.start(len(answer))
    seq, out = list(prompt), []
    with torch.no_grad():
        while not state.done:
            logits = gen.model(torch.tensor([seq]))[0, -1].float()
            logits[~grammar.allowed(state)] = float("-inf")
            token = int(logits.argmax())
            grammar.advance(state, token)
            seq.append(token)
            out.append(token)
    return out


def test_greedy_matches_full_recompute(gen):
    settings = GenerationSettings(target="text", greedy=True, max_new_tokens=20)
    [answer] = gen.generate(docs(PROMPTS[:1]), settings)
    generated = answer.ids + ([gen.vocab.special("<eos>")] if len(answer.ids) < 20 else [])
    assert generated == full_recompute_greedy(gen, answer.prompt_ids, generated)


@pytest.mark.parametrize("ckpt", ["grid_ckpt", "near_ckpt", "cnn_ckpt"])
def test_greedy_image_with_2d_positions_matches_full_recompute(ckpt, request):
    """Decode steps feed each code's (row, column), and neighbours, from the grammar; the full
    forward finds them in the ids: both must agree, inside the prompt's image and the
    generated one."""
    gen = Generator(load_checkpoint(request.getfixturevalue(ckpt)))
    h, w = gen.image_grid()
    codes = torch.arange(h * w).reshape(h, w) % 7
    prompt = [Document([TextSegment("a red circle"), ImageSegment(codes), TextSegment("star")])]
    settings = GenerationSettings(target="image", greedy=True, batch_size=2)
    answers = gen.generate(prompt * 2, settings)
    generated = answers[0].ids[1:]  # grid(h) grid(w) codes <eoi>, after the opening <boi>
    assert len(generated) == h * w + 3
    assert generated == full_recompute_greedy(gen, answers[0].prompt_ids, generated, "image")
    assert answers[0].ids == answers[1].ids


@pytest.mark.parametrize("target", ["text", "image", "audio", "auto"])
def test_batched_greedy_equals_single_runs(gen, target):
    settings = GenerationSettings(target=target, greedy=True, max_new_tokens=40,
                                  max_audio_seconds=0.02, batch_size=4)
    batched = gen.generate(docs(PROMPTS), settings)
    settings.batch_size = 1
    single = gen.generate(docs(PROMPTS), settings)
    assert [a.ids for a in batched] == [a.ids for a in single]
    assert len({len(a.prompt_ids) for a in batched}) == len(PROMPTS)  # different lengths


def test_seeds_reproduce_and_do_not_depend_on_the_batch(gen):
    settings = GenerationSettings(target="auto", max_new_tokens=60, seed=5, batch_size=4)
    a = gen.generate(docs(PROMPTS), settings)
    b = gen.generate(docs(PROMPTS), settings)
    assert [x.ids for x in a] == [x.ids for x in b]
    settings.batch_size = 1
    c = gen.generate(docs(PROMPTS), settings)
    assert [x.ids for x in a] == [x.ids for x in c]
    settings.seed = 6
    d = gen.generate(docs(PROMPTS), settings)
    assert [x.ids for x in a] != [x.ids for x in d]


@pytest.mark.parametrize("ckpt", ["any_ckpt", "near_ckpt"])
def test_guidance_combines_conditional_and_unconditional_logits(ckpt, request):
    gen = Generator(load_checkpoint(request.getfixturevalue(ckpt)))
    scale = 3.0
    settings = GenerationSettings(target="image", greedy=True, cfg_scale=scale)
    [answer] = gen.generate(docs(PROMPTS[:1]), settings)
    assert isinstance(answer.document[0], ImageSegment)
    # reference: two separate full forwards per step, combined by hand
    grammar = gen.grammar(settings)
    state, opening = grammar.start(grammar.image_cost() - 1)
    cond = list(answer.prompt_ids)
    uncond = [gen.vocab.special("<bos>"), gen.vocab.special("<uncond>")] + opening
    expected = []
    with torch.no_grad():
        while not state.done:
            c = gen.model(torch.tensor([cond]))[0, -1].double()
            u = gen.model(torch.tensor([uncond]))[0, -1].double()
            logits = u + scale * (c - u) if state.modality == "image" else c
            logits[~grammar.allowed(state)] = float("-inf")
            token = int(logits.argmax())
            grammar.advance(state, token)
            cond.append(token)
            uncond.append(token)
            expected.append(token)
    assert answer.ids == opening + expected


def test_finished_rows_leave_the_batch(gen, monkeypatch):
    sizes = []
    forward = gen.model.forward

    def spy(idx, *args, **kwargs):
        sizes.append(idx.shape[0])
        return forward(idx, *args, **kwargs)

    monkeypatch.setattr(gen.model, "forward", spy)
    settings = GenerationSettings(target="text", batch_size=4, seed=1, greedy=True)
    answers = gen.generate(docs(PROMPTS), settings)  # budgets: the rest of each context
    lengths = sorted(len(a.ids) for a in answers)
    assert lengths[0] < lengths[-1]  # rows finished at different steps
    assert sizes[0] == 4 and sizes[-1] < 4 and sizes == sorted(sizes, reverse=True)


def test_context_limits(gen):
    long = Document([TextSegment("red " * 300)])
    with pytest.raises(Exception, match="no room|fills the model's context"):
        gen.generate([long], GenerationSettings(target="image"))
    with pytest.raises(Exception, match="prompt is empty"):
        gen.generate([Document([TextSegment("")])], GenerationSettings())


def test_compiled_decode_step_gives_the_eager_answers(any_ckpt):
    settings = GenerationSettings(target="auto", greedy=True, max_new_tokens=24, batch_size=2)
    eager = Generator(load_checkpoint(any_ckpt)).generate(docs(PROMPTS[:2]), settings)
    compiled = Generator(load_checkpoint(any_ckpt), compile=True).generate(docs(PROMPTS[:2]),
                                                                          settings)
    assert [a.ids for a in eager] == [a.ids for a in compiled]


@pytest.mark.parametrize("target", ["text", "image", "audio", "auto"])
def test_a_thousand_answers_of_the_untrained_model_decode(gen, target):
    hot = ModalitySampling(*[SamplingParams(1.5, 0, 1.0, 1.0)] * 3)
    settings = GenerationSettings(target=target, max_new_tokens=60, max_audio_seconds=0.04,
                                  sampling=hot, batch_size=250, seed=len(target))
    answers = gen.generate(docs(["a"] * 1000), settings)  # each answer decoded by the codec
    kinds = {type(s).__name__ for a in answers for s in a.document}
    expected = {"text": {"TextSegment"}, "image": {"ImageSegment"},
                "audio": {"AudioSegment"}}.get(target, {"TextSegment", "ImageSegment",
                                                        "AudioSegment"})
    assert kinds == expected


@pytest.mark.parametrize("ckpt", ["near_ckpt", "cnn_ckpt"])
def test_decode_steps_feed_the_image_they_close_summarised(ckpt, monkeypatch, request):
    """A sampled answer that draws an image and goes on: every decode step's logits equal
    the full forward's, including the step that feeds the image's <eoi> with its summary."""
    gen = Generator(load_checkpoint(request.getfixturevalue(ckpt)))
    outputs = []
    forward = gen.model.forward

    def spy(idx, *args, **kwargs):
        out = forward(idx, *args, **kwargs)
        outputs.append(out[:, -1])
        return out

    monkeypatch.setattr(gen.model, "forward", spy)
    settings = GenerationSettings(target="auto", seed=0, max_new_tokens=120)
    [answer] = gen.generate(docs(PROMPTS[:1]), settings)
    eoi = gen.vocab.special("<eoi>")
    assert eoi in answer.ids[:-1]  # an image, then more ids: <eoi> was fed to a decode step
    steps = torch.cat(outputs[1:len(answer.ids)])  # after the prefill, one per fed id
    with torch.no_grad():
        full = forward(torch.tensor([answer.prompt_ids + answer.ids]))[0]
    start = len(answer.prompt_ids)
    torch.testing.assert_close(steps.double(), full[start:start + len(steps)].double(),
                               rtol=1e-4, atol=1e-4)

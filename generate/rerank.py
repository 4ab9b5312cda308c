"""Reading back: the model (or a reader beside it) scores answers against the prompt.

A model that draws from text also reads: `write:` + an image -> its caption. `--rerank N`
draws N candidates for each prompt and keeps the best-scored one. An image or audio answer is
scored by the log-likelihood the model, reading the candidate back, gives the prompt's text
(the reading instruction, `write:` by default, is put before the candidate, as in the
image->text and audio->text documents the model was trained on); where the generator has a
reader of the answer's kind (model/reader.py: the caption reader for images, the speech
reader for audio), that reader scores it instead. A text answer to a prompt with media is
scored by the likelihood of the text given the prompt, plus for each of the prompt's media
the reader's log p(text | media) where the generator has a reader of its kind, else the
likelihood of the media given the text after the instruction that asks for such media
(`draw:` for an image, `say:` for speech), so that a caption is kept for the media it
describes, not only for how readily it is written. Each kind of media has a weight in that
last term: 1 for images, 0 for speech by default, since the built-in default model does not
yet speak captions it is given (held-out audio->text, 100 lines per split, best of 8: 31% /
24% exact with speech weighed in alone, against 74% / 58% plain).

`--via-text` answers a prompt whose media carry the meaning (speech -> image, image ->
speech) in two steps with the same model: it first writes what the media say, then answers
the prompt's instruction with that text in place of the media.

The reading text of a prompt is its text with a leading instruction (a first word that ends in
":", such as "draw:") taken off: "draw: a red circle on a blue background" is read back as
"a red circle on a blue background".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from omnitok import OmnitokError
from omnitok.tokenizers.document import (
    AudioSegment,
    Document,
    DocumentCodec,
    ImageSegment,
    TextSegment,
)

MEDIA = (ImageSegment, AudioSegment)


def split_instruction(text: str) -> tuple[str, str]:
    """("draw:", "a red circle") from "draw: a red circle"; ("", text) without one."""
    head, _, rest = text.strip().partition(" ")
    if head.endswith(":"):
        return head, rest.strip()
    return "", text.strip()


def prompt_text(prompt: Document) -> str:
    """Every text segment of the prompt, joined with spaces."""
    return " ".join(s.text.strip() for s in prompt if isinstance(s, TextSegment)
                    and s.text.strip())


def reading_text(prompt: Document) -> str:
    """What a candidate answer to `prompt` is read back against: its text, no instruction."""
    return split_instruction(prompt_text(prompt))[1]


def media_of(doc: Document) -> ImageSegment | AudioSegment | None:
    """The first non-empty image or audio segment of an answer."""
    return next((s for s in doc if isinstance(s, MEDIA) and s.codes.numel() > 0), None)


def transcription_prompt(prompt: Document, instruction: str) -> Document | None:
    """`instruction` + the prompt's media (what the model writes to tell what they say); None
    where the prompt has no media."""
    media = [s for s in prompt if isinstance(s, MEDIA)]
    return Document([TextSegment(instruction), *media]) if media else None


def with_text(prompt: Document, text: str) -> Document:
    """The prompt's instruction with `text` in place of its media: "draw: <text>"."""
    instruction = split_instruction(prompt_text(prompt))[0]
    return Document([TextSegment(f"{instruction} {text}".strip())])


@torch.inference_mode()
def suffix_log_likelihoods(model, rows: Sequence[tuple[list[int], int]], pad: int,
                           batch_size: int = 16) -> list[float]:
    """log p(ids[start:] | ids[:start]) for each (ids, start) under `model`, one forward pass
    per batch of rows (padded at the end: causal, so padding is never attended to); -inf for
    a row longer than the model's context, which it cannot score."""
    if model.has_cache:
        raise OmnitokError("scoring answers needs the model without a KV cache")
    device = next(model.parameters()).device
    scores = [float("-inf")] * len(rows)
    fits = [k for k, (ids, _) in enumerate(rows) if len(ids) - 1 <= model.args.max_seq_len]
    for b in range(0, len(fits), batch_size):
        chunk = fits[b:b + batch_size]
        width = max(len(rows[k][0]) for k in chunk)
        x = torch.full((len(chunk), width), pad, dtype=torch.long)
        for r, k in enumerate(chunk):
            x[r, :len(rows[k][0])] = torch.tensor(rows[k][0])
        logits = model(x[:, :-1].to(device)).cpu()
        for r, k in enumerate(chunk):  # only the suffix's positions
            ids, start = rows[k]
            logp = torch.log_softmax(logits[r, start - 1:len(ids) - 1].float(), dim=-1)
            target = torch.tensor(ids[start:])
            scores[k] = logp[torch.arange(len(target)), target].sum().item()
    return scores


def read_back_scores(model, codec: DocumentCodec, answers: Sequence[Document],
                     texts: Sequence[str], instruction: str, batch_size: int = 16
                     ) -> list[float]:
    """log p(text + <eos> | <bos> instruction media) for each answer's media under `model`
    (-inf for an answer without media)."""
    rows: list[tuple[list[int], int]] = []
    where: list[int] = []  # the answer each row scores
    for i, (answer, text) in enumerate(zip(answers, texts)):
        media = media_of(answer)
        if media is None:
            continue
        ids = codec.encode(Document([TextSegment(instruction), media]), eos=False)
        start = len(ids)
        rows.append((ids + codec.encode(Document([TextSegment(text)]), bos=False), start))
        where.append(i)
    scores = [float("-inf")] * len(answers)
    pad = codec.vocab.special("<pad>")
    for i, score in zip(where, suffix_log_likelihoods(model, rows, pad, batch_size)):
        scores[i] = score
    return scores


def caption_scores(model, codec: DocumentCodec, prompts: Sequence[Document],
                   texts: Sequence[str], instructions: dict[str, str],
                   weights: dict[str, float] | None = None, batch_size: int = 16
                   ) -> list[float]:
    """How well each text answer fits its prompt's media, both ways (a noisy channel):
    log p(text + <eos> | <bos> prompt) plus, for each of the prompt's media segments,
    `weights[kind]` (default 1) times log p(segment | <bos> instruction text), with the
    instruction of the segment's kind (`instructions["image"]`, e.g. "draw:", and
    `instructions["audio"]`, e.g. "say:"): the model's reading of the media, checked by how
    likely it finds the media drawn or spoken from that text. A kind of weight 0 is not
    scored that way."""
    weights = weights or {}
    rows: list[tuple[list[int], int]] = []
    owner: list[tuple[int, float]] = []  # the answer each row adds to, and its weight
    for i, (prompt, text) in enumerate(zip(prompts, texts)):
        ids = codec.encode(prompt, eos=False)
        rows.append((ids + codec.encode(Document([TextSegment(text)]), bos=False), len(ids)))
        owner.append((i, 1.0))
        for media in (s for s in prompt if isinstance(s, MEDIA) and s.codes.numel() > 0):
            kind = "image" if isinstance(media, ImageSegment) else "audio"
            weight = weights.get(kind, 1.0)
            if weight == 0:
                continue
            asked = TextSegment(f"{instructions[kind]} {text}".strip())
            start = len(codec.encode(Document([asked]), eos=False))
            rows.append((codec.encode(Document([asked, media]), eos=False), start))
            owner.append((i, weight))
    scores = [0.0] * len(prompts)
    pad = codec.vocab.special("<pad>")
    for (i, weight), score in zip(owner, suffix_log_likelihoods(model, rows, pad, batch_size)):
        scores[i] += weight * score
    return scores


def best_index(scores: Sequence[float], n_prompts: int, n: int) -> list[int]:
    """For each prompt i, the index j * n_prompts + i of its best-scored candidate (the
    candidates of a prompt are laid out one round of all prompts after another; ties keep the
    earliest)."""
    out = []
    for i in range(n_prompts):
        picks = [j * n_prompts + i for j in range(n)]
        out.append(max(picks, key=lambda k: scores[k]))
    return out

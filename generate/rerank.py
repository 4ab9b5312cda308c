"""Reading back: the model scores its own image and audio answers against the prompt's text.

A model that draws from text also reads: `write:` + an image -> its caption. `--rerank N`
draws N candidates for each prompt and keeps the one under which the model, reading the
candidate back, gives the prompt's text the highest log-likelihood (the reading instruction,
`write:` by default, is put before the candidate, as in the image->text and audio->text
documents the model was trained on). `--via-text` answers a prompt whose media carry the
meaning (speech -> image, image -> speech) in two steps with the same model: it first writes
what the media say, then answers the prompt's instruction with that text in place of the media.

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
def read_back_scores(model, codec: DocumentCodec, answers: Sequence[Document],
                     texts: Sequence[str], instruction: str, batch_size: int = 16
                     ) -> list[float]:
    """log p(text + <eos> | <bos> instruction media) for each answer's media under `model`
    (one forward pass per batch; -inf for an answer without media)."""
    if model.has_cache:
        raise OmnitokError("reading back needs the model without a KV cache")
    rows: list[tuple[int, list[int], int]] = []  # (answer index, ids, where the text starts)
    scores = [float("-inf")] * len(answers)
    for i, (answer, text) in enumerate(zip(answers, texts)):
        media = media_of(answer)
        if media is None:
            continue
        ids = codec.encode(Document([TextSegment(instruction), media]), eos=False)
        start = len(ids)
        ids += codec.encode(Document([TextSegment(text)]), bos=False)
        rows.append((i, ids, start))
    pad = codec.vocab.special("<pad>")
    device = next(model.parameters()).device
    for b in range(0, len(rows), batch_size):
        chunk = rows[b:b + batch_size]
        width = max(len(ids) for _, ids, _ in chunk)
        x = torch.full((len(chunk), width), pad, dtype=torch.long)
        for r, (_, ids, _) in enumerate(chunk):
            x[r, :len(ids)] = torch.tensor(ids)  # padding after: causal, never attended to
        logits = model(x[:, :-1].to(device)).cpu()
        for r, (i, ids, start) in enumerate(chunk):  # only the text's positions
            logp = torch.log_softmax(logits[r, start - 1:len(ids) - 1].float(), dim=-1)
            target = torch.tensor(ids[start:])
            scores[i] = logp[torch.arange(len(target)), target].sum().item()
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

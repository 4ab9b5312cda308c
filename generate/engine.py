"""Batched decoding under the modality grammar: prefill, then one token per step.

A batch holds rows of different prompt lengths. Prefill runs them right-padded in one
forward with per-row positions; padded cache slots lie beyond each row's position, so they are
never attended to and are overwritten as the row grows. Each decode step feeds every live row
its own position; a row that finishes leaves the batch (its cache row is dropped). With
classifier-free guidance every request has a conditional and an unconditional row in the same
batch (one forward per step), and both take the token drawn from the guided logits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from omnitok import OmnitokError
from omnitok.generate.grammar import Grammar, RowState
from omnitok.generate.sampling import ModalitySampling, SamplingParams, sample_rows
from omnitok.model.config import NEIGHBOURS
from omnitok.model.transformer import Transformer


@dataclass
class Guidance:
    """Classifier-free guidance: logits = uncond + scale * (cond - uncond).

    Applies inside the listed modalities' segments, for the steps whose fraction of the segment
    (image: of its h*w codes; audio: of `max_audio_frames`) lies in [interval[0], interval[1]).
    """

    scale: float = 3.0
    modalities: tuple[str, ...] = ("image", "audio")
    interval: tuple[float, float] = (0.0, 1.0)

    def applies(self, state: RowState, max_audio_frames: int) -> bool:
        if state.modality not in self.modalities:
            return False
        if state.modality == "image":
            h, w = state.grid
            done = h * w - state.image_left if state.image_left else 0
            frac = done / max(h * w, 1)
        else:
            frac = (state.audio.opened_frames() if state.audio else 0) / max(max_audio_frames, 1)
        return self.interval[0] <= frac < self.interval[1] or frac == self.interval[1] == 1.0


@dataclass
class Request:
    """One sequence to continue: its prompt ids (ending with the answer's opening ids)."""

    prompt: list[int]
    state: RowState
    uncond_prompt: list[int] | None = None  # the guidance row's prompt (None: no guidance)
    seed: int | None = None
    tokens: list[int] = field(default_factory=list)  # generated so far


def compiled_decode_step(model: Transformer):
    """`model`'s one-token decode step through torch.compile (compiled once per model and
    shape: the first steps of a new batch size or cache length pay the compile time)."""
    step = getattr(model, "_compiled_decode_step", None)
    if step is None:
        def decode(tokens: torch.Tensor, pos: torch.Tensor,
                   image_pos: torch.Tensor | None = None,
                   neighbours: torch.Tensor | None = None,
                   summary: torch.Tensor | None = None) -> torch.Tensor:
            return model(tokens, input_pos=pos, image_pos=image_pos, neighbours=neighbours,
                         summary=summary)[:, -1]

        step = torch.compile(decode, dynamic=False)
        object.__setattr__(model, "_compiled_decode_step", step)
    return step


class Engine:
    """Runs requests through `model` with a grammar, sampling settings and optional guidance."""

    def __init__(self, model: Transformer, grammar: Grammar, sampling: ModalitySampling,
                 guidance: Guidance | None = None, pad_id: int = 0,
                 compile: bool = False) -> None:
        self.model, self.grammar, self.sampling = model, grammar, sampling
        self.guidance = guidance if guidance is not None and guidance.scale != 1.0 else None
        self.pad_id = pad_id
        self.device = model.tok_embeddings.weight.device
        self.compiled = compiled_decode_step(model) if compile else None

    def max_len(self, requests: Sequence[Request]) -> int:
        """Cache length these requests need: the longest prompt plus its token budget."""
        return max(max(len(r.prompt), len(r.uncond_prompt or [])) + r.state.remaining
                   for r in requests)

    @torch.inference_mode()
    def run(self, requests: Sequence[Request]) -> Iterator[list[tuple[int, int]]]:
        """Decode every request to the end; yield each step's (request index, token) pairs."""
        if not requests:
            return
        guided = self.guidance is not None
        if guided and any(r.uncond_prompt is None for r in requests):
            raise OmnitokError("guidance needs an unconditional prompt for every request")
        total = self.max_len(requests)
        if total > self.model.args.max_seq_len:
            raise OmnitokError(f"prompt + answer need {total} positions; the model's context "
                               f"is {self.model.args.max_seq_len}")
        n_rows = len(requests) * (2 if guided else 1)
        generators = [torch.Generator(self.device).manual_seed(r.seed) if r.seed is not None
                      else None for r in requests]
        seen = torch.zeros(len(requests), self.model.args.vocab_size, dtype=torch.bool,
                           device=self.device)
        for i, r in enumerate(requests):
            seen[i, torch.tensor(r.prompt, device=self.device)] = True
        self.model.setup_cache(n_rows, total)
        try:
            yield from self._loop(requests, generators, seen)
        finally:
            self.model.clear_cache()

    def _rows(self, live: list[int], n: int) -> list[int]:
        """Cache rows of batch positions `live` (their guidance rows follow the n cond rows)."""
        return live + [j + n for j in live] if self.guidance is not None else live

    def _loop(self, requests: Sequence[Request], generators: list[torch.Generator | None],
              seen: torch.Tensor) -> Iterator[list[tuple[int, int]]]:
        prompts = [r.prompt for r in requests]
        if self.guidance is not None:
            prompts += [r.uncond_prompt for r in requests]
        logits, pos = self._prefill(prompts)
        batch = list(range(len(requests)))  # the request in each (conditional) cache row
        while True:
            live = [j for j, i in enumerate(batch) if not requests[i].state.done]
            if not live:
                return
            if len(live) < len(batch) and self.compiled is None:  # finished rows leave
                keep = torch.tensor(self._rows(live, len(batch)), device=self.device)
                self.model.keep_cache_rows(keep)
                logits, pos = logits[keep], pos[keep]
                batch, live = [batch[j] for j in live], list(range(len(live)))
            ids = [batch[j] for j in live]
            rows = torch.tensor(self._rows(live, len(batch)), device=self.device)
            step, tokens = self._step(requests, ids, logits[rows], seen[ids],
                                      [generators[i] for i in ids])
            seen[ids, tokens] = True
            yield step
            if all(requests[i].state.done for i in ids):
                return
            going = torch.zeros(len(batch), dtype=torch.long, device=self.device)
            going[live] = 1
            feed = torch.full((len(batch),), self.pad_id, dtype=torch.long, device=self.device)
            feed[live] = tokens
            grid = self._image_inputs(requests, batch, live)
            if self.guidance is not None:
                feed, going = torch.cat([feed, feed]), torch.cat([going, going])
                grid = tuple(None if g is None else torch.cat([g, g]) for g in grid)
            logits = self._forward(feed[:, None], pos[:, None], *grid)
            pos = pos + going  # a finished row (kept for static shapes) stays where it is

    def _prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits at each prompt's last id (R, V) and each row's next position (R,)."""
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        if int(lengths.min()) == 0:
            raise OmnitokError("a prompt is empty")
        width = int(lengths.max())
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long, device=self.device)
        for i, p in enumerate(prompts):
            ids[i, :len(p)] = torch.tensor(p, device=self.device)
        positions = torch.arange(width, device=self.device)
        logits = self.model(ids, input_pos=positions, kv_len=width)
        return logits[torch.arange(len(prompts)), lengths - 1], lengths

    def _image_inputs(self, requests: Sequence[Request], batch: list[int], live: list[int]
                      ) -> tuple[torch.Tensor | None, ...]:
        """For a model that embeds them, the ids fed next's image (row, column) (R, 1, 2),
        neighbours (R, 1, K) and image summary (R, 1, hidden); None for what it does not
        embed."""
        args = self.model.args
        if args.image_positions is None:
            return None, None, None
        rows, states = set(live), [requests[i].state for i in batch]
        grid = [self.grammar.grid_position(s) if j in rows else (0, 0)
                for j, s in enumerate(states)]
        grid = torch.tensor(grid, device=self.device)[:, None]
        if args.image_neighbours is None:
            return grid, None, None
        near = [self.grammar.grid_neighbours(s) if j in rows else [-1] * len(NEIGHBOURS)
                for j, s in enumerate(states)]
        summary = torch.zeros(len(batch), 1, args.image_neighbours.summary_size,
                              device=self.device, dtype=self.model.tok_embeddings.weight.dtype)
        for j, s in enumerate(states):
            segment = self.grammar.closed_image(s) if j in rows else None
            if segment is not None:  # the <eoi> goes in next: the image it closes, summarised
                summary[j, 0] = self.model.image_summary_of(
                    torch.tensor(segment, device=self.device))
        return grid, torch.tensor(near, device=self.device)[:, None], summary

    def _forward(self, tokens: torch.Tensor, pos: torch.Tensor, image_pos: torch.Tensor | None,
                 neighbours: torch.Tensor | None, summary: torch.Tensor | None
                 ) -> torch.Tensor:
        if self.compiled is not None:  # static shapes: the whole cache, every row
            return self.compiled(tokens, pos, image_pos, neighbours, summary)
        return self.model(tokens, input_pos=pos, kv_len=int(pos.max()) + 1,
                          image_pos=image_pos, neighbours=neighbours, summary=summary)[:, -1]

    def _step(self, requests: Sequence[Request], alive: list[int], logits: torch.Tensor,
              seen: torch.Tensor, generators: list[torch.Generator | None]
              ) -> tuple[list[tuple[int, int]], torch.Tensor]:
        states = [requests[i].state for i in alive]
        n = len(alive)
        cond = logits[:n].float()
        if self.guidance is not None:
            frames = self.grammar.max_audio_frames
            use = torch.tensor([self.guidance.applies(s, frames) for s in states],
                               device=cond.device)
            uncond = logits[n:].float()
            guided = uncond + self.guidance.scale * (cond - uncond)
            cond = torch.where(use[:, None], guided, cond)
        allowed = torch.stack([self.grammar.allowed(s) for s in states]).to(cond.device)
        params: list[SamplingParams] = [self.sampling.for_modality(s.modality) for s in states]
        tokens = sample_rows(cond, params, allowed=allowed, seen=seen, generators=generators)
        step = []
        for i, state, token in zip(alive, states, tokens.tolist()):
            self.grammar.advance(state, token)
            requests[i].tokens.append(token)
            step.append((i, token))
        return step, tokens

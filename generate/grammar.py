"""The modality grammar: which ids may come next, so that every finished sequence decodes.

One `RowState` per sequence walks the id-stream grammar of `tokenizers/document.py`:

    text  : text ids, <boi> (opens an image), <boa> (opens audio), <eos> (ends)
    image : <boi> grid(h) grid(w), then exactly h*w image ids in raster order, then <eoi>
    audio : <boa>, whole RVQ frames in the pattern's order (flatten or delay), then <eoa>

`Grammar.allowed(state)` gives the (V,) mask of ids that keep the stream valid AND closable
within the tokens the row has left: an image is not begun if it cannot fit, audio stops
opening frames when only the ids needed to close it remain (or at `max_audio_frames`).
`--to image|audio` opens that segment in the prompt and ends the answer when it closes;
`--to text` never opens media; `--to auto` lets the model choose, any number of segments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch

from omnitok import OmnitokError
from omnitok.model.config import NEIGHBOURS
from omnitok.model.image_positions import neighbours_in_image
from omnitok.tokenizers.vocab import Modality, Vocab

TARGETS = ("text", "image", "audio", "auto")


class GrammarError(OmnitokError, ValueError):
    """An id the grammar does not allow, or a target the checkpoint cannot produce."""


class Phase(str, Enum):
    TEXT = "text"
    IMAGE_H = "image_h"  # after <boi>: the grid row count
    IMAGE_W = "image_w"  # then the grid column count
    IMAGE = "image"  # h*w codes
    IMAGE_END = "image_end"  # <eoi>
    AUDIO = "audio"
    DONE = "done"


@dataclass
class AudioCursor:
    """Position inside an audio segment for `n_q` levels in flatten or delay order.

    n: ids so far. Flatten: level n % K; a frame opens at level 0. Delay (see patterns.py):
    step s holds levels lo..hi of frames s - level; while the frame count `t` is open each step
    may start a new frame (level 0) or fix t = s and start closing (lowest level lo >= 1).
    """

    n_q: int
    delay: bool
    n: int = 0
    step: int = 0  # delay: current step s
    pos: int = 0  # delay: index inside the step
    frames: int | None = None  # delay: the frame count once fixed

    def opened_frames(self) -> int:
        if not self.delay:
            return -(-self.n // self.n_q)
        return self.frames if self.frames is not None else self.step + (1 if self.pos else 0)

    def _bounds(self, step: int, frames: int | None) -> tuple[int, int]:
        lo = 0 if frames is None else max(0, step - frames + 1)
        return lo, min(step, self.n_q - 1)

    def options(self) -> tuple[list[int], bool, bool]:
        """(levels that may come next, whether one of them opens a new frame, <eoa> allowed)."""
        k = self.n_q
        if not self.delay:
            at_boundary = self.n % k == 0
            return [self.n % k], at_boundary, at_boundary and self.n > 0
        if self.frames is None and self.pos == 0:
            closing = self._bounds(self.step, self.step)
            levels = [0] + ([closing[0]] if self.step and closing[0] <= closing[1] else [])
            return levels, True, bool(self.step) and k == 1
        if self.frames is not None and self.pos == 0 and self.step > self.frames + k - 2:
            return [], False, True
        lo, _ = self._bounds(self.step, self.frames)
        return [lo + self.pos], False, False

    def closing_cost(self) -> int:
        """Ids still needed (without <eoa>) if no new frame is opened from here."""
        return self.opened_frames() * self.n_q - self.n

    def frame_of_next(self, level: int) -> int:
        """The frame that the next id, of RVQ level `level`, belongs to."""
        return self.step - level if self.delay else self.n // self.n_q

    def advance(self, level: int) -> None:
        if not self.delay:
            self.n += 1
            return
        if self.frames is None and self.pos == 0 and level != 0:
            self.frames = self.step
        lo, hi = self._bounds(self.step, self.frames)
        self.n += 1
        self.pos += 1
        if lo + self.pos > hi:
            self.step, self.pos = self.step + 1, 0


@dataclass
class RowState:
    """Where one sequence stands; `remaining` is how many more ids it may take."""

    phase: Phase
    remaining: int
    grid: tuple[int, int] = (0, 0)
    image_left: int = 0
    audio: AudioCursor | None = None
    segments: int = 0  # media segments closed so far
    history: list[int] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.phase == Phase.DONE or self.remaining <= 0

    @property
    def modality(self) -> str:
        """The sampling settings that apply at this step: text, image or audio."""
        if self.phase in (Phase.IMAGE_H, Phase.IMAGE_W, Phase.IMAGE, Phase.IMAGE_END):
            return "image"
        return "audio" if self.phase == Phase.AUDIO else "text"


class Grammar:
    """Masks of legal next ids for a vocabulary, its tokenizers and a target."""

    def __init__(self, vocab: Vocab, *, text_ok: torch.Tensor | None = None,
                 image_grid: tuple[int, int] | None = None, audio: bool = False,
                 target: str = "auto", max_audio_frames: int = 500,
                 min_audio_frames: int = 1, allow_eos: bool = True) -> None:
        if target not in TARGETS:
            raise GrammarError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
        if target == "image" and image_grid is None:
            raise GrammarError("this checkpoint has no image tokenizer: it cannot generate images")
        if target == "audio" and not audio:
            raise GrammarError("this checkpoint has no audio tokenizer: it cannot generate audio")
        if audio and not 1 <= min_audio_frames <= max_audio_frames:
            raise GrammarError(f"audio length: need 1 <= minimum ({min_audio_frames} frames) "
                               f"<= maximum ({max_audio_frames} frames)")
        self.vocab, self.target, self.max_audio_frames = vocab, target, max_audio_frames
        self.min_audio_frames, self.allow_eos = min_audio_frames, allow_eos
        self.image_grid = image_grid if vocab.has(Modality.IMAGE) else None
        self.audio_spec = vocab.audio if audio else None
        v = vocab.padded_size
        self._text = text_ok.clone() if text_ok is not None else self._range_mask(["text"])
        self._image = self._range_mask(["image"]) if self.image_grid else None
        self._levels = [self._range_mask([r.name]) for r in vocab.audio_ranges]
        self._empty = torch.zeros(v, dtype=torch.bool)
        self.ids = {s: vocab.special(s) for s in ("<bos>", "<eos>", "<boi>", "<eoi>", "<boa>",
                                                  "<eoa>")}

    def _range_mask(self, names: list[str]) -> torch.Tensor:
        mask = torch.zeros(self.vocab.padded_size, dtype=torch.bool)
        for name in names:
            r = self.vocab.range(name)
            mask[r.start:r.stop] = True
        return mask

    # ---- costs ---------------------------------------------------------------------------
    def image_cost(self) -> int:
        """Ids of a whole image segment: <boi> h w codes <eoi>."""
        h, w = self.image_grid
        return 4 + h * w

    def audio_min_cost(self) -> int:
        """Ids of the shortest audio segment: <boa>, `min_audio_frames` frames, <eoa>."""
        return 2 + self.audio_spec.n_q * self.min_audio_frames

    # ---- state ---------------------------------------------------------------------------
    def start(self, remaining: int) -> tuple[RowState, list[int]]:
        """The state at the start of an answer and the ids that open it (prompt suffix)."""
        state = RowState(Phase.TEXT, remaining)
        opening = {"image": [self.ids["<boi>"]], "audio": [self.ids["<boa>"]]}.get(self.target,
                                                                                     [])
        for token in opening:  # they come with the prompt, not from the budget
            state.history.append(token)
            self._transition(state, token)
        return state, opening

    def allowed(self, state: RowState) -> torch.Tensor:
        """(V,) bool mask of the ids that may come next."""
        if state.done:
            return self._empty
        phase = state.phase
        if phase == Phase.TEXT:
            return self._text_mask(state)
        if phase in (Phase.IMAGE_H, Phase.IMAGE_W):
            side = state.grid[0] if phase == Phase.IMAGE_H else state.grid[1]
            return self._one(self.vocab.grid(side))
        if phase == Phase.IMAGE:
            return self._image
        if phase == Phase.IMAGE_END:
            return self._one(self.ids["<eoi>"])
        return self._audio_mask(state)

    def _one(self, token: int) -> torch.Tensor:
        mask = self._empty.clone()
        mask[token] = True
        return mask

    def _text_mask(self, state: RowState) -> torch.Tensor:
        mask = self._text.clone()
        mask[self.ids["<eos>"]] = self.allow_eos  # False: run to the budget (benchmarks)
        if self.target == "auto":
            if self.image_grid and state.remaining >= self.image_cost():
                mask[self.ids["<boi>"]] = True
            if self.audio_spec and state.remaining >= self.audio_min_cost():
                mask[self.ids["<boa>"]] = True
        return mask

    def _audio_mask(self, state: RowState) -> torch.Tensor:
        cursor = state.audio
        levels, opens, eoa = cursor.options()
        can_open = (cursor.opened_frames() < self.max_audio_frames
                    and state.remaining >= cursor.closing_cost() + cursor.n_q + 1)
        short = cursor.opened_frames() < self.min_audio_frames
        mask = self._empty.clone()
        for level in levels:
            opening = opens and level == 0
            if (opening and not can_open) or (opens and not opening and short):
                continue
            mask |= self._levels[level]
        if eoa and not short:
            mask[self.ids["<eoa>"]] = True
        if not mask.any():  # cannot happen while budgets hold: fail loudly, never emit junk
            raise GrammarError("audio segment cannot be closed within the remaining ids")
        return mask

    def advance(self, state: RowState, token: int) -> None:
        """Move `state` past `token`; raises GrammarError if the token is not allowed."""
        if not bool(self.allowed(state)[token]):
            raise GrammarError(f"id {token} is not allowed in phase {state.phase.value}")
        state.remaining -= 1
        state.history.append(token)
        self._transition(state, token)

    def grid_position(self, state: RowState) -> tuple[int, int]:
        """1-based (row, column) in its image of the last id `state` advanced past when that id
        is an image code, else (0, 0): what `model.image_positions.grid_positions` finds."""
        if state.phase not in (Phase.IMAGE, Phase.IMAGE_END):
            return 0, 0
        h, w = state.grid
        k = h * w - state.image_left - 1  # the code just taken; -1 right after the header
        return (k // w + 1, k % w + 1) if k >= 0 else (0, 0)

    def grid_neighbours(self, state: RowState) -> list[int]:
        """The ids at each `NEIGHBOURS` offset from the last id `state` advanced past when that
        id is an image code, -1 where none: what `model.image_positions.grid_neighbours`
        finds."""
        if state.phase not in (Phase.IMAGE, Phase.IMAGE_END):
            return [-1] * len(NEIGHBOURS)
        h, w = state.grid
        taken = h * w - state.image_left
        return neighbours_in_image(state.history[len(state.history) - taken:], w)

    def closed_image(self, state: RowState) -> list[int] | None:
        """The whole segment `<boi> h w codes <eoi>` when the last id `state` advanced past
        closed an image, else None."""
        if not state.history or state.history[-1] != self.ids["<eoi>"]:
            return None
        h, w = state.grid
        return state.history[-(h * w + 4):]

    def _transition(self, state: RowState, token: int) -> None:
        ids, phase = self.ids, state.phase
        if phase == Phase.TEXT:
            if token == ids["<eos>"]:
                state.phase = Phase.DONE
            elif token == ids["<boi>"]:
                state.phase, state.grid = Phase.IMAGE_H, self.image_grid
            elif token == ids["<boa>"]:
                state.phase = Phase.AUDIO
                state.audio = AudioCursor(self.audio_spec.n_q,
                                          self.audio_spec.pattern == "delay")
        elif phase == Phase.IMAGE_H:
            state.phase = Phase.IMAGE_W
        elif phase == Phase.IMAGE_W:
            state.phase, state.image_left = Phase.IMAGE, state.grid[0] * state.grid[1]
        elif phase == Phase.IMAGE:
            state.image_left -= 1
            if state.image_left == 0:
                state.phase = Phase.IMAGE_END
        elif phase == Phase.IMAGE_END:
            self._close(state)
        elif token == ids["<eoa>"]:
            self._close(state)
        else:
            state.audio.advance(self.vocab.to_local(token)[0].level)

    def _close(self, state: RowState) -> None:
        state.segments += 1
        state.audio = None
        state.phase = Phase.TEXT if self.target in ("auto", "text") else Phase.DONE

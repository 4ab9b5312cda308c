"""The generation API: documents in, documents out, for one checkpoint.

    gen = Generator(load_checkpoint("ckpt/"))
    [answer] = gen.generate([Document([TextSegment("a red circle on a blue background")])],
                            GenerationSettings(target="image", cfg_scale=3.0))
    answer.document  # Document([ImageSegment(codes (h, w))])

A prompt is encoded as <bos> + its segments; the target's opening id follows (<boi> for
`image`, <boa> for `audio`). The unconditional prompt of guidance is <bos> <uncond> + opening,
or the negative prompt's segments in place of <uncond>. Request i of a call draws from its own
generator seeded with `seed + i`, so its answer does not depend on the batch it runs in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch

from omnitok import OmnitokError
from omnitok.generate.engine import Engine, Guidance, Request
from omnitok.generate.grammar import Grammar, GrammarError
from omnitok.generate.rerank import (
    MEDIA,
    best_index,
    caption_scores,
    media_of,
    prompt_text,
    read_back_scores,
    reading_text,
    split_instruction,
    transcription_prompt,
    with_text,
)
from omnitok.generate.sampling import ModalitySampling, SamplingParams
from omnitok.model.checkpoint import Checkpoint
from omnitok.model.reader import Reader, pick_readers
from omnitok.tokenizers.document import AudioSegment, Document, ImageSegment, TextSegment
from omnitok.tokenizers.text import TextTokenizer
from omnitok.tokenizers.vocab import Modality, Vocab

DEFAULT_TEXT_TOKENS = 256
READ_TOKENS = 64  # --via-text: the longest text written of a prompt's media
ROUND_SEEDS = 100_003  # --rerank: candidate j of prompt i draws with seed + j * this + i
WORD_SEEDS = 1_000_003  # --word-by-word: word k of prompt i draws with seed + k * this + i


@dataclass
class GenerationSettings:
    target: str = "auto"  # text | image | audio | auto
    max_new_tokens: int | None = None  # None: text 256, image exactly one, audio/auto context
    max_audio_seconds: float = 10.0
    min_audio_seconds: float = 0.0
    sampling: ModalitySampling = field(default_factory=ModalitySampling)
    greedy: bool = False
    cfg_scale: float = 1.0  # 1: no guidance
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    negative_prompt: Document | None = None
    seed: int = 0
    batch_size: int = 8
    rerank: int = 1  # draw this many, keep the one that reads back best
    via_text: bool = False  # image/audio from media: write what they say, answer from that
    read_instruction: str = "write:"  # put before a candidate when the model reads it back
    draw_instruction: str = "draw:"  # --rerank of text: put before a text to score an image
    say_instruction: str = "say:"  # --rerank of text: put before a text to score speech
    image_weight: float = 1.0  # --rerank of text: weight of log p(prompt image | text)
    speech_weight: float = 0.0  # --rerank of text: weight of log p(prompt speech | text)
    word_by_word: bool = False  # audio: speak the prompt's text one word at a time
    max_word_seconds: float = 1.5  # --word-by-word: the longest speech of one word
    word_cfg_scale: float | None = None  # --word-by-word: guidance of each word (cfg_scale)


@dataclass
class Answer:
    prompt_ids: list[int]
    ids: list[int]  # the answer: opening ids + generated ids (a trailing <eos> dropped)
    document: Document
    seed: int
    via: str | None = None  # --via-text: what the model wrote of the prompt's media
    score: float | None = None  # --rerank: the reading-back log-likelihood of the kept one


def text_allowed(vocab: Vocab, text: TextTokenizer | None) -> torch.Tensor:
    """(padded_size,) bool: the text ids worth generating (not control pieces like <unk>)."""
    mask = torch.zeros(vocab.padded_size, dtype=torch.bool)
    r = vocab.range(Modality.TEXT)
    if text is None:
        mask[r.start:r.stop] = True
        return mask
    for i in range(text.vocab_size):
        piece = text.id_to_piece(i)
        mask[r.start + i] = not (piece.startswith("<") and piece.endswith(">")
                                 and not piece.startswith("<0x"))
    return mask


def check_reading(settings: GenerationSettings) -> None:
    """--rerank applies to text, image and audio answers, --via-text to image and audio."""
    if settings.rerank < 1:
        raise OmnitokError(f"--rerank must be >= 1, got {settings.rerank}")
    if settings.rerank > 1 and settings.target not in ("text", "image", "audio"):
        raise OmnitokError(f"--rerank picks one answer of a kind: use --to text, --to image "
                           f"or --to audio (got --to {settings.target})")
    if settings.via_text and settings.target not in ("image", "audio"):
        raise OmnitokError(f"--via-text applies to image and audio answers: use --to image "
                           f"or --to audio (got --to {settings.target})")
    if settings.word_by_word and settings.target != "audio":
        raise OmnitokError(f"--word-by-word speaks a text: use --to audio "
                           f"(got --to {settings.target})")
    if settings.word_by_word and not settings.max_word_seconds > 0:
        raise OmnitokError(f"--max-word-seconds must be > 0, got {settings.max_word_seconds:g}")


def check_text_rerank(prompt: Document, settings: GenerationSettings, index: int) -> None:
    """A text --rerank scores candidates against the prompt's media: it needs some."""
    if settings.rerank > 1 and settings.target == "text" and media_of(prompt) is None:
        raise OmnitokError(f"--rerank of a text answer scores it against the prompt's image "
                           f"or audio, and prompt {index} has none")


def spoken_words(prompt: Document, index: int) -> tuple[list, list[str]]:
    """(the segments before the words, the words) of a --word-by-word prompt: its closing
    text segment split into its instruction (kept with the segments before it) and words."""
    if not prompt.segments or not isinstance(prompt.segments[-1], TextSegment):
        raise OmnitokError(f"--word-by-word speaks the text a prompt ends with, and prompt "
                           f"{index} does not end with text")
    instruction, text = split_instruction(prompt.segments[-1].text)
    if not text.split():
        raise OmnitokError(f"--word-by-word: prompt {index} has no words to speak after "
                           f"{instruction!r}")
    head = list(prompt.segments[:-1]) + ([TextSegment(instruction)] if instruction else [])
    return head, text.split()


def several_passes(settings: GenerationSettings) -> bool:
    """Whether an answer takes several passes (--rerank, --via-text, --word-by-word), so that
    it cannot be streamed id by id."""
    return settings.rerank > 1 or settings.via_text or settings.word_by_word


def ends_with_words(prompt: Document) -> bool:
    """Whether the prompt ends with a text of words to speak (beyond an instruction)."""
    last = prompt.segments[-1] if prompt.segments else None
    return isinstance(last, TextSegment) and bool(split_instruction(last.text)[1].split())


def check_words(prompts: Sequence[Document], settings: GenerationSettings) -> None:
    """--word-by-word: each prompt ends with words to speak (one-line error otherwise);
    with --via-text, the text the model writes of the media is what it speaks."""
    if settings.word_by_word and not settings.via_text:
        for i, prompt in enumerate(prompts):
            spoken_words(prompt, i)


def candidate_sampling(settings: GenerationSettings) -> GenerationSettings:
    """How the candidates after the first of a text --rerank are drawn: the settings' own
    text sampling, or plain sampling at temperature 1 where that (or --greedy) is greedy, so
    that the candidates differ."""
    text = settings.sampling.text
    if settings.greedy or text.temperature <= 0:
        text = SamplingParams(1.0, 0, 1.0, 1.0)
    sampling = replace(settings.sampling, text=text)
    if settings.greedy:
        sampling = replace(sampling.greedy(), text=text)
    return replace(settings, greedy=False, sampling=sampling)


class Generator:
    """Generation with one checkpoint. On the CPU its linear layers are packed for oneDNN
    (`pack=False` keeps torch's default path); `compile` compiles the decode step."""

    def __init__(self, checkpoint: Checkpoint, *, pack: bool = True,
                 compile: bool = False,
                 reader: Reader | dict[str, Reader] | str | Sequence[str] | None = "auto"
                 ) -> None:
        self.ckpt, self.compile = checkpoint, compile
        self.model, self.tokenizers = checkpoint.model, checkpoint.tokenizers
        self.pack, self.packed_rows = pack, 0
        self.vocab = checkpoint.vocab
        self.codec = self.tokenizers.codec()
        self._text_ok = text_allowed(self.vocab, self.tokenizers.text)
        if isinstance(reader, Reader):
            reader = {reader.config.kind: reader}
        self.readers: dict[str, Reader] = (
            dict(reader) if isinstance(reader, dict)
            else pick_readers(reader, checkpoint.path, self.tokenizers))

    def reader_sources(self) -> dict[str, str | None]:
        """The folder of each reader the generator picks with, by kind (recorded with
        answers)."""
        return {kind: r.source for kind, r in sorted(self.readers.items())}

    def _pack_for(self, rows: int) -> None:
        """oneDNN packs a weight for an expected row count: repack when the batch changes."""
        rows = max(16, rows)
        if self.pack and rows != self.packed_rows:
            self.pack = self.model.pack_linears(batch_hint=rows)
            self.packed_rows = rows

    # ---- pieces --------------------------------------------------------------------------
    def image_grid(self) -> tuple[int, int] | None:
        image = self.tokenizers.image
        return image.grid if image is not None else None

    def audio_frames(self, seconds: float) -> int:
        spec = self.vocab.audio
        return max(1, round(seconds * spec.frame_rate)) if spec is not None else 0

    def grammar(self, settings: GenerationSettings) -> Grammar:
        return Grammar(self.vocab, text_ok=self._text_ok, image_grid=self.image_grid(),
                       audio=self.tokenizers.audio is not None, target=settings.target,
                       max_audio_frames=self.audio_frames(settings.max_audio_seconds),
                       min_audio_frames=self.audio_frames(settings.min_audio_seconds))

    def budget(self, grammar: Grammar, settings: GenerationSettings, prompt_len: int) -> int:
        """New ids a request may take (after its opening ids), checked against the context."""
        room = self.model.args.max_seq_len - prompt_len
        need = {"image": lambda: grammar.image_cost() - 1,
                "audio": lambda: grammar.audio_min_cost() - 1}.get(settings.target)
        if need is not None and room < need():
            raise OmnitokError(f"the prompt takes {prompt_len} of the model's "
                               f"{self.model.args.max_seq_len} positions: no room for "
                               f"{need()} more to make the {settings.target}")
        if room < 1:
            raise OmnitokError(f"the prompt ({prompt_len} ids) fills the model's context of "
                               f"{self.model.args.max_seq_len}")
        if settings.max_new_tokens is not None:
            return min(room, settings.max_new_tokens)
        if settings.target == "image":
            return grammar.image_cost() - 1
        if settings.target == "audio":
            spec = grammar.audio_spec
            return min(room, (grammar.max_audio_frames + spec.n_q - 1) * spec.n_q + 1)
        return min(room, DEFAULT_TEXT_TOKENS) if settings.target == "text" else room

    def encode_prompt(self, prompt: Document) -> list[int]:
        if not prompt.normalized().segments:
            raise OmnitokError("the prompt is empty")
        return self.codec.encode(prompt, bos=True, eos=False)

    def _uncond(self, settings: GenerationSettings, opening: list[int],
                negative: Document | None = None) -> list[int]:
        negative = negative if negative is not None else settings.negative_prompt
        if negative is not None:
            return self.encode_prompt(negative) + opening
        if "<uncond>" not in self.vocab.specials:
            raise OmnitokError("this vocabulary has no <uncond> token for guidance")
        return [self.vocab.special("<bos>"), self.vocab.special("<uncond>")] + opening

    def requests(self, prompts: Sequence[Document], settings: GenerationSettings,
                 grammar: Grammar, first_index: int = 0, seeds: Sequence[int] | None = None,
                 negatives: Sequence[Document] | None = None) -> list[Request]:
        """Request i draws with `seeds[i]`, by default `settings.seed + first_index + i`;
        its guidance row (with `cfg_scale` != 1) has the prompt `negatives[i]`, by default
        `settings.negative_prompt` or <uncond>."""
        out = []
        for i, prompt in enumerate(prompts):
            check_text_rerank(prompt, settings, first_index + i)
            ids = self.encode_prompt(prompt)
            budget = self.budget(grammar, settings, len(ids) + (settings.target in
                                                                 ("image", "audio")))
            state, opening = grammar.start(budget)
            negative = None if negatives is None else negatives[i]
            uncond = (self._uncond(settings, opening, negative) if settings.cfg_scale != 1.0
                      else None)
            seed = settings.seed + first_index + i if seeds is None else seeds[i]
            out.append(Request(ids + opening, state, uncond, seed))
        return out

    def engine(self, settings: GenerationSettings, grammar: Grammar) -> Engine:
        sampling = settings.sampling.greedy() if settings.greedy else settings.sampling
        guidance = None
        if settings.cfg_scale != 1.0:
            guidance = Guidance(settings.cfg_scale, interval=settings.cfg_interval)
        return Engine(self.model, grammar, sampling, guidance, self.vocab.special("<pad>"),
                      compile=self.compile)

    # ---- running -------------------------------------------------------------------------
    def stream(self, prompts: Sequence[Document], settings: GenerationSettings,
               on_batch: Callable[[list[Request]], None] | None = None,
               seeds: Sequence[int] | None = None, negatives: Sequence[Document] | None = None
               ) -> Iterator[tuple[int, int]]:
        """(prompt index, id) for every generated id, batch after batch of `batch_size`;
        prompt i draws with `seeds[i]` (default `settings.seed + i`) and is guided away from
        `negatives[i]` (`requests`)."""
        grammar = self.grammar(settings)
        engine = self.engine(settings, grammar)
        guided = engine.guidance is not None
        self._pack_for(min(settings.batch_size, len(prompts)) * (2 if guided else 1))
        for start in range(0, len(prompts), settings.batch_size):
            stop = start + settings.batch_size
            batch = self.requests(prompts[start:stop], settings, grammar, start,
                                  None if seeds is None else seeds[start:stop],
                                  None if negatives is None else negatives[start:stop])
            if on_batch is not None:
                on_batch(batch)
            for step in engine.run(batch):
                for i, token in step:
                    yield start + i, token

    def generate(self, prompts: Sequence[Document], settings: GenerationSettings) -> list[Answer]:
        """One answer per prompt (the best of `settings.rerank`, via text where asked)."""
        check_reading(settings)
        if settings.via_text:
            return self._via_text(prompts, settings)
        if settings.rerank > 1:
            if settings.target == "text":
                return self._best_text_of(prompts, settings)
            return self._best_of(prompts, settings)
        if settings.word_by_word:
            return self._word_by_word(prompts, settings)
        return self._sampled(prompts, settings)

    def _sampled(self, prompts: Sequence[Document], settings: GenerationSettings,
                 seeds: Sequence[int] | None = None,
                 negatives: Sequence[Document] | None = None) -> list[Answer]:
        requests: list[Request] = []
        for _ in self.stream(prompts, settings, requests.extend, seeds, negatives):
            pass
        return [self.answer(r) for r in requests]

    def stream_answer(self, prompt: Document, settings: GenerationSettings
                      ) -> Iterator[tuple[str, object]]:
        """One answer as it is generated: ("text", new text), ("audio", samples (C, n)) in
        windows as RVQ frames complete (together, the whole segment's decode), then
        ("done", Answer)."""
        from omnitok.generate.outputs import AnswerStream

        events: list[tuple[str, object]] = []
        sink = AnswerStream(self.tokenizers, None, echo=None,
                            on_event=lambda kind, value: events.append((kind, value)))
        requests: list[Request] = []

        def opened(batch: list[Request]) -> None:  # the opening ids came with the prompt
            requests.extend(batch)
            for token in batch[0].state.history:
                sink.push(token)

        for _, token in self.stream([prompt], settings, opened):
            sink.push(token)
            yield from events
            events.clear()
        yield "done", self.answer(requests[0])

    def _best_of(self, prompts: Sequence[Document], settings: GenerationSettings
                 ) -> list[Answer]:
        """`rerank` candidates per prompt (candidate j of prompt i draws with seed
        `seed + j * ROUND_SEEDS + i`: candidate 0 is the plain answer); the one whose reading
        back gives the prompt's reading text the highest likelihood."""
        texts = [reading_text(p) for p in prompts]
        for i, text in enumerate(texts):
            if not text:
                raise OmnitokError(f"--rerank reads answers back against the prompt's text, "
                                   f"and prompt {i} has none beyond an instruction (add "
                                   f"--via-text for a prompt of media)")
        n = settings.rerank
        pool = [a for j in range(n) for a in self.generate(
            prompts, replace(settings, rerank=1, seed=settings.seed + j * ROUND_SEEDS))]
        scores = self.read_back([a.document for a in pool], texts * n, settings)
        return [replace(pool[k], score=scores[k]) for k in best_index(scores, len(prompts), n)]

    def _best_text_of(self, prompts: Sequence[Document], settings: GenerationSettings
                      ) -> list[Answer]:
        """`rerank` text candidates per prompt (candidate 0 is the plain answer; the others
        drawn as `candidate_sampling` says, with the seeds of `_best_of`); the one that fits
        the prompt's media best both ways (`caption_scores`)."""
        for i, prompt in enumerate(prompts):
            check_text_rerank(prompt, settings, i)
        n = settings.rerank
        drawn = candidate_sampling(settings)
        pool = [a for j in range(n) for a in self.generate(
            prompts, replace(settings if j == 0 else drawn, rerank=1,
                             seed=settings.seed + j * ROUND_SEEDS))]
        keys = [(k % len(prompts), prompt_text(a.document)) for k, a in enumerate(pool)]
        distinct = list(dict.fromkeys(keys))  # each (prompt, text) scored once
        found = dict(zip(distinct, self.caption_scores(
            [prompts[i] for i, _ in distinct], [t for _, t in distinct], settings)))
        scores = [found[key] for key in keys]
        return [replace(pool[k], score=scores[k]) for k in best_index(scores, len(prompts), n)]

    def caption_scores(self, prompts: Sequence[Document], texts: Sequence[str],
                       settings: GenerationSettings) -> list[float]:
        """log p(text | prompt) + for each of the prompt's media: the reader's log p(text |
        media) where the generator has a reader of its kind, else the weighted log p(media |
        its instruction + text) by the model."""
        instructions = {"image": settings.draw_instruction, "audio": settings.say_instruction}
        weights = {"image": settings.image_weight, "audio": settings.speech_weight}
        weights.update({kind: 0.0 for kind in self.readers})  # the readers score those
        scores = caption_scores(self.model, self.codec, prompts, texts, instructions, weights,
                                settings.batch_size)
        owner, media = [], []
        for i, prompt in enumerate(prompts):
            for segment in prompt:
                if isinstance(segment, MEDIA) and segment.codes.numel() > 0:
                    owner.append(i)
                    media.append(segment)
        read = self.reader_scores(media, [texts[i] for i in owner])
        for k, score in read.items():
            scores[owner[k]] += score
        return scores

    def read_back(self, answers: Sequence[Document], texts: Sequence[str],
                  settings: GenerationSettings) -> list[float]:
        """log p(text | the answer's media) for each answer: by the reader of its kind where
        the generator has one, else by the model after the reading instruction."""
        media = [media_of(a) for a in answers]
        scores = [0.0] * len(answers)
        read = self.reader_scores(media, texts)
        for i, score in read.items():
            scores[i] = score
        rest = [i for i in range(len(answers)) if i not in read]
        for i, score in zip(rest, read_back_scores(
                self.model, self.codec, [answers[i] for i in rest], [texts[i] for i in rest],
                settings.read_instruction, settings.batch_size)):
            scores[i] = score
        return scores

    def reader_scores(self, media: Sequence[ImageSegment | AudioSegment | None],
                      texts: Sequence[str]) -> dict[int, float]:
        """{i: log p(texts[i] | media[i])} by the readers, for each i whose media has one."""
        found: dict[int, float] = {}
        for kind, reader in self.readers.items():
            segment = ImageSegment if kind == "image" else AudioSegment
            rows = [i for i, m in enumerate(media) if isinstance(m, segment)]
            if not rows:
                continue
            pieces = self.tokenizers.text.encode_batch([texts[i] for i in rows])
            found.update(zip(rows, reader.score([media[i].codes for i in rows], pieces)))
        return found

    def _via_text(self, prompts: Sequence[Document], settings: GenerationSettings
                  ) -> list[Answer]:
        """Write what each prompt's media say (greedy; with --rerank, the best of as many
        texts as fit the media both ways), then answer the prompt's instruction with that
        text in place of the media."""
        asks = [transcription_prompt(p, settings.read_instruction) for p in prompts]
        missing = [i for i, a in enumerate(asks) if a is None]
        if missing:
            raise OmnitokError(f"--via-text writes what a prompt's media say, and prompt "
                               f"{missing[0]} has no image or audio")
        read = replace(settings, target="text", greedy=True, cfg_scale=1.0,
                       via_text=False, word_by_word=False, max_new_tokens=READ_TOKENS)
        heard = [prompt_text(a.document) for a in self.generate(asks, read)]
        for i, text in enumerate(heard):
            if not text:
                raise OmnitokError(f"--via-text: the model wrote nothing for prompt {i}'s "
                                   f"media")
        chained = [with_text(p, text) for p, text in zip(prompts, heard)]
        answers = self.generate(chained, replace(settings, via_text=False))
        return [replace(a, via=text) for a, text in zip(answers, heard)]

    def _word_by_word(self, prompts: Sequence[Document], settings: GenerationSettings
                      ) -> list[Answer]:
        """Speech of each prompt's closing text, one word at a time, as the word-by-word
        documents of training have it: the instruction ("say:"), then each word as its own
        text segment followed by the speech the model makes of it (at most
        `max_word_seconds`). The answer is one audio segment, the words' speech in order.

        With guidance (`word_cfg_scale`, by default `cfg_scale`, != 1; no `negative_prompt`),
        the guidance row of each word
        is the same document without that word's text: guidance then pushes the speech
        toward what this word changes, and keeps the voice and the words before it (the
        <uncond> row has neither). A prompt that does not end with words (`omnitok generate`
        refuses one: `check_words`) is answered whole, as without --word-by-word."""
        out: dict[int, Answer] = {}
        spoken = [i for i, p in enumerate(prompts) if ends_with_words(p)]
        whole = sorted(set(range(len(prompts))) - set(spoken))
        if whole:
            answers = self._sampled([prompts[i] for i in whole], replace(
                settings, word_by_word=False), [settings.seed + i for i in whole])
            out.update(zip(whole, answers))
        if spoken:
            out.update(zip(spoken, self._spoken([prompts[i] for i in spoken], settings,
                                                [settings.seed + i for i in spoken])))
        return [out[i] for i in range(len(prompts))]

    def _spoken(self, prompts: Sequence[Document], settings: GenerationSettings,
                seeds: Sequence[int]) -> list[Answer]:
        """`_word_by_word` of prompts that end with words; prompt i's word k draws with
        `seeds[i] + k * WORD_SEEDS`."""
        heads, words = zip(*(spoken_words(p, i) for i, p in enumerate(prompts)))
        docs = [list(head) for head in heads]
        parts: list[list[torch.Tensor]] = [[] for _ in prompts]
        cfg = settings.cfg_scale if settings.word_cfg_scale is None else settings.word_cfg_scale
        step = replace(settings, word_by_word=False, max_audio_seconds=settings.max_word_seconds,
                       cfg_scale=cfg)
        grammar, stopped = self.grammar(step), set()
        for k in range(max(map(len, words))):
            live = [i for i, w in enumerate(words) if k < len(w) and i not in stopped]
            for i in live:
                docs[i].append(TextSegment(words[i][k]))
            if k > 0:  # a prompt whose next word finds no room in the context stops there
                stopped |= {i for i in live if not self._room(grammar, step, docs[i])}
                live = [i for i in live if i not in stopped]
            without = None
            if cfg != 1.0 and settings.negative_prompt is None:
                without = [Document(docs[i][:-1]) if len(docs[i]) > 1 else None for i in live]
            answers = self._sampled([Document(docs[i]) for i in live], step,
                                    [seeds[i] + k * WORD_SEEDS for i in live], without)
            for i, a in zip(live, answers):
                codes = self._speech_of(a)
                docs[i].append(AudioSegment(codes))
                parts[i].append(codes)
        out = []
        for i, prompt in enumerate(prompts):
            speech = Document([AudioSegment(torch.cat(parts[i], 1))])
            ids = self.codec.encode(speech, bos=False, eos=False)
            out.append(Answer(self.encode_prompt(prompt), ids, speech, seeds[i]))
        return out

    def _room(self, grammar: Grammar, settings: GenerationSettings, doc: list) -> bool:
        """Whether the context has room for the audio answer to `doc`."""
        try:
            self.budget(grammar, settings, len(self.encode_prompt(Document(doc))) + 1)
        except OmnitokError:
            return False
        return True

    def _speech_of(self, answer: Answer) -> torch.Tensor:
        """The codes (K, F) of an audio answer, (K, 0) where it has none."""
        seg = media_of(answer.document)
        if seg is not None:
            return seg.codes.long()
        return torch.zeros(self.vocab.audio.n_q, 0, dtype=torch.long)

    def answer(self, request: Request) -> Answer:
        opening = request.state.history[:len(request.state.history) - len(request.tokens)]
        ids = opening + request.tokens
        if ids and ids[-1] == self.vocab.special("<eos>"):
            ids = ids[:-1]
        try:
            doc = self.codec.decode(ids)
        except (GrammarError, ValueError) as e:  # a grammar bug, never a user error
            raise OmnitokError(f"generated ids do not decode: {e}") from e
        return Answer(request.prompt, ids, doc, request.seed)

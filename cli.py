"""`omnitok` command line: each subcommand is one typed function; flags come from its signature.

Positional parameters without defaults become positional arguments, everything else a
`--kebab-case` flag (`bool` gives `--x/--no-x`, `list[T]` takes several values, `Literal` gives
choices); help text comes from the function's docstring (`Args:` section). Two richer kinds:
- a dataclass parameter gives one flag per field, `--name.field` (`--field.sub` for a
  dataclass with `cli_flatten = True`, nested dataclasses recursively);
- `list[T]` where T has `cli_flags` (e.g. ("text", "image")) gives one repeatable flag per
  name whose values are collected in command-line order as `T.from_flag(name, value)`.
Parameters before `*` are positional (optional when they have a default). `--config FILE`
(JSON, or YAML when PyYAML is installed) supplies flag values; flags on the command line win.
Only the module of the chosen subcommand is imported, so `--help` stays fast.

User errors (`OmnitokError`, missing files) print one line and exit 1; set OMNITOK_DEBUG=1 to
see the traceback.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import inspect
import json
import os
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path

from omnitok import OmnitokError, __version__

SHORT = {"output": "-o"}  # short aliases of common flags
COMMANDS: dict = {
    "demo": {
        "_help": "The built-in default: run it, or train it again from scratch.",
        "_default": ("omnitok.generate.demo:demo",
                     "Run the built-in default end to end and print what it produced."),
        "train": ("omnitok.demo.recipe:demo_train",
                  "The recipe of the built-in default: data, tokenizers, training, eval."),
    },
    "generate": ("omnitok.generate.commands:generate_command",
                 "Generate text, images and audio from mixed prompts."),
    "data": {
        "_help": "Build data sets.",
        "demo": ("omnitok.demo.commands:build_demo_data",
                 "Build the shapes-and-speech world: images, captions, speech, manifests."),
        "judge": ("omnitok.demo.commands:judge_demo_data",
                  "Score the independent judges on a demo manifest's ground-truth media."),
        "probe": ("omnitok.demo.code_probe:probe_command",
                  "How much of each attribute a tokenizer's image codes hold, for 3 readers."),
    },
    "tokenize": ("omnitok.train.commands:tokenize_command",
                 "Pre-tokenize a corpus manifest into shards of unified-vocabulary ids."),
    "train": ("omnitok.train.commands:train_command",
              "Train (or fine-tune, or resume) the model on pre-tokenized shards."),
    "reader": {
        "_help": "The caption and speech readers that --rerank picks answers with.",
        "train": ("omnitok.train.reader:train_reader_command",
                  "Train a caption reader (image-caption pairs) or a speech reader "
                  "(speech-caption pairs)."),
    },
    "eval": ("omnitok.demo.evaluate:eval_command",
             "Score a checkpoint on held-out prompts in every direction with independent judges."),
    "tokenizer": {
        "_help": "Train and inspect tokenizers.",
        "train": {
            "_help": "Train a tokenizer on a corpus.",
            "text": ("omnitok.tokenizers.commands:train_text",
                     "Train the sentencepiece BPE text tokenizer."),
            "image": ("omnitok.tokenizers.image_train:train_image_command",
                      "Train the VQ image tokenizer."),
            "audio": ("omnitok.tokenizers.audio_train:train_audio_command",
                      "Train the RVQ audio codec."),
        },
        "encode": ("omnitok.tokenizers.commands:encode",
                   "Encode an image or audio file to codes."),
        "decode": ("omnitok.tokenizers.commands:decode",
                   "Decode codes (.npy) back to a PNG or WAV."),
        "roundtrip": ("omnitok.tokenizers.commands:roundtrip",
                      "Encode then decode a file: see or hear what the tokenizer keeps."),
        "eval": ("omnitok.tokenizers.evaluate:evaluate",
                 "Reconstruction quality, code usage and speed on held-out data (+ judges)."),
    },
    "convert": {
        "_help": "Import weights from other formats.",
        "hf": ("omnitok.model.commands:convert_hf_command",
               "Import a Hugging Face Llama-architecture model and expand its vocabulary."),
    },
    "bench": {
        "_help": "Measure throughput.",
        "_default": ("omnitok.bench:bench_suite",
                     "The default suite: generation, media, tokenizers, training."),
        "tokenizers": ("omnitok.tokenizers.bench:bench_tokenizers",
                       "Images/s of the image tokenizer, real-time factors of the codec."),
        "generate": ("omnitok.generate.bench:bench_generate",
                     "Decode speed per batch size, side by side with transformers."),
        "train": ("omnitok.train.bench:bench_train_command",
                  "Training step tokens/s and peak memory, side by side with transformers."),
        "kernels": ("omnitok.kernels.bench:bench_kernels",
                    "Time the attention backends (TFLOP/s); on CPU only correctness applies."),
        "packed": ("omnitok.kernels.bench:bench_packed_attention",
                   "Packed-document attention (sdpa): chunked path vs one dense-mask call."),
        "loss": ("omnitok.train.bench:bench_loss",
                 "Training loss on bf16 logits: blockwise vs a float32 copy (fwd + bwd)."),
    },
    "model": {
        "_help": "Create and inspect checkpoints.",
        "init": ("omnitok.model.commands:init_model",
                 "Create a randomly initialised checkpoint from a preset."),
        "info": ("omnitok.model.commands:info",
                 "Validate a checkpoint and print its configuration and vocabulary."),
        "export": ("omnitok.model.commands:export",
                   "Write a checkpoint without training state, weights in bf16 (for shipping)."),
    },
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except KeyboardInterrupt:
        print("omnitok: interrupted", file=sys.stderr)
        return 130
    except (OmnitokError, OSError) as e:
        if os.environ.get("OMNITOK_DEBUG"):
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"omnitok: error: {message}", file=sys.stderr)
        return 1


def _run(argv: list[str]) -> int:
    node, path = COMMANDS, ["omnitok"]
    while isinstance(node, dict) and argv and argv[0] in node and not argv[0].startswith("_"):
        path.append(argv.pop(0))
        node = node[path[-1]]
    if isinstance(node, dict) and "_default" in node and (not argv or argv[0].startswith("-")):
        node = node["_default"]  # a group that runs a default command without a subcommand
    if isinstance(node, dict):
        _group_parser(node, " ".join(path)).parse_args(argv)
        return 2  # parse_args exits (help or a missing subcommand); not reached
    module, _, name = node[0].partition(":")
    fn = getattr(importlib.import_module(module), name)
    parser = build_parser(fn, " ".join(path), node[1])
    args = vars(parser.parse_args(argv))
    args.pop("config", None)
    result = fn(**_assemble(fn, args))
    return result if isinstance(result, int) else 0


def _group_parser(node: dict, prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=node.get("_help"))
    if prog == "omnitok":
        parser.add_argument("--version", action="version", version=f"omnitok {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name, child in node.items():
        if not name.startswith("_"):
            sub.add_parser(name, help=child["_help"] if isinstance(child, dict) else child[1])
    return parser


def build_parser(fn: Callable, prog: str, summary: str) -> argparse.ArgumentParser:
    """An argparse parser whose arguments mirror `fn`'s typed signature."""
    doc = inspect.getdoc(fn) or summary
    parser = _ConfigParser(prog=prog, description=doc.split("\n\nArgs:")[0])
    parser.add_argument("--config", type=Path, help="JSON/YAML file with flag values")
    helps = _param_help(doc)
    hints = typing.get_type_hints(fn)
    for p in inspect.signature(fn).parameters.values():
        _add_param(parser, p, hints.get(p.name, str), helps.get(p.name, ""))
    return parser


def _add_param(parser: argparse.ArgumentParser, p: inspect.Parameter, hint, help_: str) -> None:
    kind, kwargs = _unwrap(hint), {"help": help_ or " "}
    if dataclasses.is_dataclass(kind):
        base = p.default if dataclasses.is_dataclass(p.default) else kind()
        _add_dataclass(parser, base, "" if getattr(kind, "cli_flatten", False) else p.name)
        return
    base, origin = typing.get_origin(kind), kind
    if base is list:
        origin = typing.get_args(kind)[0]
        if hasattr(origin, "cli_flags"):
            _add_ordered(parser, p.name, origin, help_)
            return
        kwargs["nargs"] = "+"
    if typing.get_origin(origin) is typing.Literal:
        kwargs["choices"] = list(typing.get_args(origin))
        origin = type(kwargs["choices"][0])
    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
        if p.default is not inspect.Parameter.empty:
            kwargs.update(nargs="?", default=p.default)
        parser.add_argument(p.name, type=origin, **kwargs)
        return
    flags = ["--" + p.name.replace("_", "-")] + ([SHORT[p.name]] if p.name in SHORT else [])
    if origin is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = origin
        kwargs["metavar"] = p.name.upper()
    if kwargs.get("nargs") == "+" and origin in (int, float):  # --batch 1,8,32 or 1 8 32
        kwargs.update(type=_split(origin), action=_Flatten)
        kwargs.pop("choices", None)
    if p.default is inspect.Parameter.empty:
        kwargs["required"] = True
    else:
        kwargs["default"] = p.default
        if p.default is not None and origin is not bool:
            kwargs["help"] += " (default: %(default)s)"
    parser.add_argument(*flags, dest=p.name, **kwargs)


def _add_dataclass(parser: argparse.ArgumentParser, base, prefix: str) -> None:
    """One flag per field of the dataclass instance `base`: --prefix.field (dest
    "prefix.field"), its value in `base` as the documented default; nested ones recurse."""
    hints = typing.get_type_hints(type(base))
    for f in dataclasses.fields(base):
        name = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(base, f.name)
        if dataclasses.is_dataclass(value):
            _add_dataclass(parser, value, name)
            continue
        kind = _unwrap(hints[f.name])
        flag = "--" + name.replace("_", "-")
        extra = ({"action": argparse.BooleanOptionalAction} if kind is bool
                 else {"type": kind, "metavar": f.name.upper()})
        parser.add_argument(flag, dest=name, default=None, help=f"(default: {value})", **extra)


def _split(kind: type):
    def parse(text: str) -> list:
        return [kind(part) for part in text.split(",") if part]

    parse.__name__ = kind.__name__
    return parse


class _Flatten(argparse.Action):
    """Values that are themselves lists (comma-separated) joined into one list."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, [x for part in values for x in part])


class _Ordered(argparse.Action):
    """Appends `cls.from_flag(flag, value)` to one list shared by several flags, in order."""

    def __init__(self, *args, cls: type, flag: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cls, self.flag = cls, flag

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        items = list(getattr(namespace, self.dest) or [])
        items.append(self.cls.from_flag(self.flag, values))
        setattr(namespace, self.dest, items)


def _add_ordered(parser: argparse.ArgumentParser, dest: str, cls: type, help_: str) -> None:
    helps = getattr(cls, "cli_help", {})
    for flag in cls.cli_flags:
        parser.add_argument(f"--{flag}", dest=dest, action=_Ordered, cls=cls, flag=flag,
                            default=[], metavar=flag.upper(),
                            help=f"{helps.get(flag, help_)} (repeatable, kept in order)")


def _assemble(fn: Callable, args: dict) -> dict:
    """Gather dotted dests back into the dataclass values of `fn`'s parameters."""
    hints = typing.get_type_hints(fn)
    out = {k: v for k, v in args.items() if "." not in k}
    for p in inspect.signature(fn).parameters.values():
        kind = _unwrap(hints.get(p.name, str))
        if not dataclasses.is_dataclass(kind):
            continue
        flat = getattr(kind, "cli_flatten", False)
        base = p.default if dataclasses.is_dataclass(p.default) else kind()
        out[p.name] = _fill(copy.deepcopy(base), "" if flat else p.name, args)
    return out


def _fill(obj, prefix: str, args: dict):
    for f in dataclasses.fields(obj):
        name = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            setattr(obj, f.name, _fill(value, name, args))
        elif args.get(name) is not None:
            setattr(obj, f.name, args[name])
    if hasattr(obj, "__post_init__"):
        obj.__post_init__()  # validate the values that came from flags
    return obj


def _unwrap(hint):
    """X | None -> X."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _param_help(doc: str) -> dict[str, str]:
    """Parameter descriptions from a Google-style `Args:` section."""
    section = doc.split("\n\nArgs:", 1)
    if len(section) < 2:
        return {}
    out: dict[str, str] = {}
    current = None
    for line in section[1].split("\n\n")[0].splitlines():
        m = re.match(r"\s{2,}(\w+)(?: \(.*?\))?:\s*(.*)", line)
        if m and (current is None or len(line) - len(line.lstrip()) <= 4):
            current, out[m.group(1)] = m.group(1), m.group(2)
        elif current:
            out[current] += " " + line.strip()
    return out


class _ConfigParser(argparse.ArgumentParser):
    """Applies `--config FILE` values as defaults before parsing the rest of the line."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config", type=Path)
        known, _ = pre.parse_known_args(args)
        if known.config is not None:
            values = _read_config(known.config)
            dests = {a.dest: a for a in self._actions}
            unknown = sorted(k for k in values if k.replace("-", "_") not in dests)
            if unknown:
                self.error(f"{known.config}: unknown keys {', '.join(unknown)}")
            for key, value in values.items():
                action = dests[key.replace("-", "_")]
                if isinstance(value, list) and callable(action.type):
                    value = [action.type(v) for v in value]
                action.required = False
                action.default = value
                if not action.option_strings:
                    action.nargs = "?"
        return super().parse_args(args, namespace)


def _read_config(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise OmnitokError(f"{path}: YAML configs need PyYAML (pip install pyyaml)") from None
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise OmnitokError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise OmnitokError(f"{path}: expected a mapping of flag names to values")
    return data


if __name__ == "__main__":
    sys.exit(main())

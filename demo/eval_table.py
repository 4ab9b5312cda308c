"""The table `omnitok eval` prints: one row per direction and split, the judges' baselines
beside the model's scores."""

from __future__ import annotations

from omnitok.demo.judges import ATTRIBUTES

SHORT = {"heldout-seen": "seen", "heldout-unseen": "unseen"}
HEAD = (f"{'direction':<19} {'split':<7} {'n':>5} {'accuracy':>8} {'WER':>7} {'shape':>6} "
        f"{'colour':>6} {'backgr.':>7} | {'truth':>6} {'round trip':>10}")
LEGEND = """\
accuracy: text answers equal to the caption; images with shape, colour and background all
  read right by the image judge; speech recognised as the caption by the speech judge.
WER: word error rate of text answers. shape / colour / backgr.: accuracy per attribute.
truth / round trip: the target's judge on the lines' own media and on their tokenizer
  round trips (text: exact match after the text tokenizer). seen / unseen: attribute
  combinations present in training / never seen in training (composition)."""


def _pct(x: float | None, width: int) -> str:
    return f"{'-':>{width}}" if x is None else f"{100 * x:>{width - 1}.1f}%"


def format_row(direction: str, split: str, s: dict, base: dict | None) -> str:
    """One line of the table."""
    truth = base.get("truth", {}).get("all") if base else None
    trip = base.get("roundtrip", {}).get("all") if base else None
    attrs = " ".join(_pct(s[a], w) for a, w in zip(ATTRIBUTES, (6, 6, 7)))
    return (f"{direction:<19} {SHORT.get(split, split):<7} {s['n']:>5} {_pct(s['all'], 8)} "
            f"{_pct(s.get('wer'), 7)} {attrs} | {_pct(truth, 6)} {_pct(trip, 10)}")


def format_table(scores: dict[str, dict], baselines: dict[str, dict]) -> str:
    """Every direction and split, then the legend."""
    rows = [HEAD, "-" * len(HEAD)]
    for direction, splits in scores.items():
        kind = direction.split("->")[-1]
        for split, s in splits.items():
            rows.append(format_row(direction, split, s, baselines.get(kind, {}).get(split)))
    return "\n".join(rows + ["", LEGEND])

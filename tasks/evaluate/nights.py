"""The new model beside the previous one (incremental runs): the figures of the model a continued training started
from (its evaluation, kept with its version in ``versions/train``) next to this evaluation's, per language and
set, with every change beyond a threshold flagged as a regression.

Both evaluations read the same eval segments and the same valid documents of the languages both know (the new
night's valid shards add the new increments' documents, so bits per byte move a little with the data too: a
flag is a prompt to look, not a verdict).
"""

from __future__ import annotations

from typing import Any

#: a change worse than this is a regression: bits per byte up, retrieval acc@1 down, chrF++ down
THRESHOLDS = {"bits_per_byte": 0.02, "retrieval_acc_at_1": 0.02, "chrf": 1.0}


def compare(previous: dict[str, Any], now: dict[str, Any], version: str) -> dict[str, Any]:
    """``{version, bits_per_byte, retrieval_acc_at_1, chrf, regressions}``: per key ``{previous, now, change}``."""
    out: dict[str, Any] = {"version": version, "thresholds": THRESHOLDS}
    sides = {
        "bits_per_byte": (previous.get("bits_per_byte", {}), now.get("bits_per_byte", {}), +1),
        "retrieval_acc_at_1": (_acc(previous), _acc(now), -1),
        "chrf": (_chrf(previous), _chrf(now), -1),
    }
    regressions = []
    for what, (old, new, worse) in sides.items():
        table = {}
        for key in sorted(set(old) & set(new)):
            a, b = old[key], new[key]
            if a is None or b is None:
                continue
            table[key] = {"previous": a, "now": b, "change": b - a}
            if worse * (b - a) > THRESHOLDS[what]:
                regressions.append(f"{what} {key}: {a:.3f} -> {b:.3f}")
        out[what] = table
    out["regressions"] = regressions
    return out


def _acc(m: dict) -> dict[str, float | None]:
    return {s: r.get("acc_at_1") for s, r in m.get("retrieval", {}).items()}


def _chrf(m: dict) -> dict[str, float]:
    return {k: v for k, v in m.get("chrf", {}).items() if "/" not in k}


def markdown(night: dict[str, Any]) -> list[str]:
    """The report.md section: one table per measure, the regressions first."""
    flagged = night["regressions"]
    lines = [
        "",
        f"## Against the previous model ({night['version']})",
        "",
        (
            f"**{len(flagged)} regression(s)** beyond the thresholds {night['thresholds']}: " + "; ".join(flagged)
            if flagged
            else f"No regression beyond the thresholds {night['thresholds']}."
        ),
    ]
    for what in ("bits_per_byte", "retrieval_acc_at_1", "chrf"):
        if night[what]:
            lines += ["", f"| {what} | previous | now | change |", "|---|---|---|---|"]
            lines += [
                f"| {k} | {v['previous']:.3f} | {v['now']:.3f} | {v['change']:+.3f} |" for k, v in night[what].items()
            ]
    return lines

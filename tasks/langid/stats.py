"""The langid stage's counts: per language and reason, per (claimed, detected) pair; stats.json and its artifact."""

from __future__ import annotations

from typing import Any

import polars as pl


def count(stats: dict, df: pl.DataFrame) -> None:
    """Add a batch's counts: kept per language, rejected per reason and language, (claimed, detected) pairs."""
    key = pl.when(pl.col("confident")).then(pl.col("lang")).otherwise(pl.col("claimed_norm")).fill_null("und")
    for lang, n in df.filter(pl.col("reason").is_null()).group_by("lang").len().rows():
        stats["filter_kept"][lang] = stats["filter_kept"].get(lang, 0) + n
    for reason, lang, n in df.filter(pl.col("reason").is_not_null()).group_by("reason", key.alias("k")).len().rows():
        per = stats["rejected"].setdefault(reason, {})
        per[lang] = per.get(lang, 0) + n
    for claimed, det, n in df.filter("mismatched").group_by("claimed_norm", "lang").len().rows():
        per = stats["mismatch"].setdefault(claimed, {})
        per[det] = per.get(det, 0) + n


def summarise(stats: dict[str, Any]) -> dict[str, Any]:
    """stats.json: per language (clean, rejected by reason), per reason, per (claimed, detected) pair."""
    clean = stats.get("clean", {})
    rejected = stats.get("rejected", {})
    langs = sorted(set(clean) | {lang for per in rejected.values() for lang in per})
    per_lang = {
        lang: {
            "clean": clean.get(lang, 0),
            "rejected": {r: per[lang] for r, per in sorted(rejected.items()) if lang in per},
        }
        for lang in langs
    }
    return {
        "documents": {
            "scored": stats.get("scored", 0),
            "clean": sum(clean.values()),
            "rejected": sum(n for per in rejected.values() for n in per.values()),
        },
        "languages": sorted(clean),
        "clean": clean,
        "rejected": rejected,
        "rejected_by_reason": {r: sum(per.values()) for r, per in sorted(rejected.items())},
        "mismatch": stats.get("mismatch", {}),
        "per_language": per_lang,
    }

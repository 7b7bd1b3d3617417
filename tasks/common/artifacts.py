"""What a run shows in the Prefect UI: one markdown artifact per stage and a pipeline summary.

Every stage's artifact is made from its *committed* output, after the stage commit, on every run
(built or cached alike), so a cached rerun shows the same content. Keys name the stage and the run
directory (``langid-demo-3f2a9c``: Prefect keys allow lowercase letters, digits and dashes), so two
run directories never overwrite each other's. Charts are mermaid ``xychart-beta`` blocks, which the
Prefect UI renders inside markdown.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from xlmflow.storage import Location, RunDir, read_manifest
from xlmflow.tasks.common.runtime import logger, plain_step


@dataclass
class Report:
    """A stage's artifact: markdown, a one-line description, and headline numbers for the pipeline summary."""

    markdown: str
    description: str
    headline: dict[str, Any] = field(default_factory=dict)


def key_for(stage: str, run_uri: str) -> str:
    """``<stage>-<run folder name>-<6 hex of its full location>``, in Prefect's key alphabet."""
    name = re.sub(r"[^a-z0-9]+", "-", Location(run_uri).name.lower()).strip("-")[:40] or "run"
    return f"{stage}-{name}-{hashlib.sha256(run_uri.encode()).hexdigest()[:6]}"


#: mermaid's default xychart colour is a pale cream, nearly invisible on the UI's light background
CHART = '```mermaid\n%%{init: {"themeVariables": {"xyChart": {"plotColorPalette": "#2563eb"}}}}%%\nxychart-beta\n'


def bars(title: str, labels: list[str], values: list[float], axis: str) -> str:
    """A mermaid bar chart (labels may not hold quotes or commas)."""
    xs = ", ".join(f'"{label}"' for label in labels)
    ys = ", ".join(f"{v:.6g}" for v in values)
    top = max(values, default=1) * 1.1 or 1
    return f'{CHART}  title "{title}"\n  x-axis [{xs}]\n  y-axis "{axis}" 0 --> {top:.6g}\n  bar [{ys}]\n```'


def lines(title: str, xs: list[int], ys: list[float], axis: str, x_axis: str = "step") -> str:
    """A mermaid line chart over a numeric x range (one label per point would run together)."""
    x = f'"{x_axis}" {xs[0]} --> {xs[-1]}' if xs else f'"{x_axis}" 0 --> 1'
    points = ", ".join(f"{y:.6g}" for y in ys)
    return f'{CHART}  title "{title}"\n  x-axis {x}\n  y-axis "{axis}"\n  line [{points}]\n```'


def table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join("" if c is None else _number(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def publish(stage: str, run_dir: str, make: Callable[[RunDir], Report]) -> dict[str, Any]:
    """Publish the stage's artifact (inside a Prefect run; a no-op outside one); returns its headline."""
    run = RunDir.of(run_dir)
    report = make(run)
    try:
        from prefect.artifacts import create_markdown_artifact
        from prefect.context import FlowRunContext, TaskRunContext

        if TaskRunContext.get() or FlowRunContext.get():
            create_markdown_artifact(
                key=key_for(stage, run.root.uri), markdown=report.markdown, description=report.description
            )
    except Exception as e:  # an artifact is a convenience; never fail the stage for it
        logger().warning("%s: no artifact (%s)", stage, e)
    return {"stage": stage, "key": key_for(stage, run.root.uri), **report.headline}


#: where the UI (Prefect 3.9's default, under /v2) shows one artifact; the classic UI draws no mermaid charts
ARTIFACT_PAGE = "/v2/artifacts/artifact/{id}"


def summary(run: RunDir, headlines: list[dict[str, Any]], links: dict[str, str] | None = None) -> Report:
    """The pipeline's own artifact: each stage's headline numbers and a link to its artifact (``links``: stage
    -> URL path; a stage without one is named in plain text)."""
    links = links or {}
    rows = [
        [f"[{h['stage']}]({links[h['stage']]})" if h["stage"] in links else h["stage"], _headline(h)] for h in headlines
    ]
    md = f"# xlmflow run `{run.root.uri}`\n\n" + table(["stage", "headline"], rows)
    return Report(md, f"pipeline: {len(headlines)} stages committed in {run.root.name}")


def _headline(h: dict[str, Any]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {_number(v)}" for k, v in h.items() if k not in ("stage", "key"))


def _number(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {_number(x)}" for k, x in v.items())
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def publish_summary(run_dir: str, stages: list[tuple[str, Callable[[RunDir], Report]]]) -> None:
    """The pipeline's artifact, from every stage's committed output, linking each stage's latest artifact."""
    run = RunDir.of(run_dir)
    headlines = [{"stage": name, "key": key_for(name, run.root.uri), **make(run).headline} for name, make in stages]
    links = {}
    try:
        from prefect.artifacts import Artifact

        for h in headlines:
            found = Artifact.get(h["key"])
            if found is not None:
                links[h["stage"]] = ARTIFACT_PAGE.format(id=found.id)
    except Exception as e:  # links are a convenience
        logger().warning("pipeline: artifact links unavailable (%s)", e)
    publish("pipeline", run_dir, lambda r: summary(r, headlines, links))


publish_task = plain_step("publish-artifact")(publish)
summary_task = plain_step("publish-summary")(publish_summary)


# ---------------------------------------------------------------- the stages' reports
def ingest_report(run: RunDir) -> Report:
    loc = run.stage("ingest")
    m = read_manifest(loc)
    rows = []
    for unit in sorted({f.path.split("/")[1] for f in m.files if f.path.startswith("parts/")}):
        u = read_manifest(loc.child("parts", unit))
        rows.append([unit, u.stats.get("documents", 0), u.stats.get("quarantined", 0)])
    docs, bad = m.stats.get("documents", 0), m.stats.get("quarantined", 0)
    md = (
        f"# Ingest\n\n{docs:,} documents from {len(rows)} input files; {bad:,} records quarantined "
        f"(their reasons in `ingest/parts/*/quarantine-*.parquet`).\n\n"
        + table(["input", "documents", "quarantined"], rows)
    )
    return Report(md, f"ingest: {docs:,} documents, {bad:,} quarantined", {"documents": docs, "quarantined": bad})


def langid_report(run: RunDir) -> Report:
    with run.stage("langid").child("stats.json").open("rb") as f:
        s = json.loads(f.read())
    clean = sorted(s["clean"].items(), key=lambda kv: (-kv[1], kv[0]))
    kept = [(lang, n) for lang, n in clean if n > 0]
    reasons = [r for r, n in sorted(s["rejected_by_reason"].items(), key=lambda kv: -kv[1])][:5]
    rows = [[lang, n, *(s["per_language"][lang]["rejected"].get(r, 0) for r in reasons)] for lang, n in kept]
    others = [lang for lang in s["per_language"] if lang not in dict(kept)]
    if others:
        rows.append(
            [
                f"{len(others)} other languages (none kept)",
                0,
                *(sum(s["per_language"][x]["rejected"].get(r, 0) for x in others) for r in reasons),
            ]
        )
    pairs = sorted(((c, d, n) for c, per in s["mismatch"].items() for d, n in per.items()), key=lambda x: -x[2])[:15]
    d = s["documents"]
    md = "\n\n".join(
        [
            f"# Language ID and filtering\n\n{d['scored']:,} documents scored, {d['clean']:,} kept in {len(kept)} "
            f"languages, {d['rejected']:,} rejected (every one with its reason under `langid/`).",
            bars("clean documents per language", [x for x, _ in kept], [n for _, n in kept], "documents"),
            table(["language", "clean", *(f"rejected: {r}" for r in reasons)], rows),
            "## Claimed vs detected language (documents relabelled or dropped)",
            table(["claimed", "detected", "documents"], [list(p) for p in pairs]) if pairs else "none",
            "All rejection reasons: " + ", ".join(f"{r} {n:,}" for r, n in s["rejected_by_reason"].items()),
        ]
    )
    return Report(
        md,
        f"langid: {d['clean']:,} of {d['scored']:,} documents kept in {len(kept)} languages",
        {"kept": d["clean"], "languages": len(kept)},
    )


def vocab_report(run: RunDir) -> Report:
    from xlmflow.tasks.vocab.fairness import markdown

    with run.stage("vocab").child("report.json").open("rb") as f:
        r = json.loads(f.read())
    langs = sorted(r["languages"])
    md = (
        markdown(r)
        + "\n\n"
        + bars(
            "fertility (tokens per word; zh/ja per character)",
            langs,
            [r["languages"][x].get("fertility") or 0 for x in langs],
            "fertility",
        )
    )
    return Report(
        md,
        f"vocab: {r['vocab_size']:,} ids for {len(langs)} languages",
        {"vocab_size": r["vocab_size"], "languages": len(langs)},
    )


def shard_report(run: RunDir) -> Report:
    m = read_manifest(run.stage("shard"))
    totals = m.stats["totals"]
    langs = sorted(totals["train"])
    rows = [
        [lang, *(totals[s].get(lang, {}).get(k, 0) for s in ("train", "valid") for k in ("documents", "tokens"))]
        for lang in langs
    ]
    md = (
        f"# Token shards\n\n{m.stats['tokens_total']:,} tokens in {m.stats['units']} shards.\n\n"
        + bars("train tokens per language", langs, [totals["train"][x]["tokens"] for x in langs], "tokens")
        + "\n\n"
        + table(["language", "train docs", "train tokens", "valid docs", "valid tokens"], rows)
    )
    return Report(
        md,
        f"shard: {m.stats['tokens_total']:,} tokens, {len(langs)} languages",
        {"tokens": m.stats["tokens_total"], "shards": m.stats["units"]},
    )


def train_report(run: RunDir) -> Report:
    loc = run.stage("train")
    with loc.child("metrics.jsonl").open("rb") as f:
        rows = [json.loads(x) for x in f.read().decode().splitlines() if x.strip()]
    with loc.child("summary.json").open("rb") as f:
        s = json.loads(f.read())
    losses = [r for r in rows if "loss" in r]
    valid = sorted(s["valid_loss"].items())
    md = "\n\n".join(
        [
            f"# Training\n\n{s['steps']} steps, {s['tokens']:,} tokens, {s['parameters']:,} parameters on "
            f"{s['world_size']} process(es); train loss {s['loss_first']:.3f} -> {s['loss_last']:.3f}.",
            lines("train loss", [r["step"] for r in losses], [r["loss"] for r in losses], "nats/token"),
            bars("validation loss per language", [x for x, _ in valid], [v for _, v in valid], "nats/token"),
            table(
                ["language", "valid loss", "effective epochs"],
                [[x, f"{v:.3f}", f"{s['effective_epochs'].get(x, 0):.2f}"] for x, v in valid],
            ),
        ]
    )
    return Report(
        md,
        f"train: loss {s['loss_first']:.2f} -> {s['loss_last']:.2f} in {s['steps']} steps",
        {"loss": round(s["loss_last"], 3), "steps": s["steps"]},
    )


def evaluate_report(run: RunDir) -> Report:
    loc = run.stage("evaluate")
    with loc.child("metrics.json").open("rb") as f:
        m = json.loads(f.read())
    with loc.child("report.md").open("rb") as f:
        md = f.read().decode()
    bpb = sorted(m["bits_per_byte"].items())
    chart = bars("bits per byte per language (lower is better)", [x for x, _ in bpb], [v for _, v in bpb], "bits/byte")
    md = md.replace("## Bits per byte and generation\n", "## Bits per byte and generation\n\n" + chart + "\n", 1)
    md = md.split("\n## Plots", 1)[0]  # report.md's PNGs lie in the run directory: the UI cannot show them
    mean = sum(v for _, v in bpb) / max(len(bpb), 1)
    retrieval = {s: round(r["mean_acc_at_1"], 3) for s, r in m["retrieval"].items() if r.get("mean_acc_at_1")}
    return Report(
        md,
        f"evaluate: {mean:.3f} bits/byte on average over {len(bpb)} languages",
        {"bits_per_byte": round(mean, 3), "retrieval_acc_at_1": retrieval},
    )

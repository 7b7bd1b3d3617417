"""What a run shows in the Prefect UI: one markdown artifact per stage and a pipeline summary.

Every stage's artifact is made from its *committed* output, after the stage commit, on every run
(built or cached alike), so a cached rerun shows the same content. Keys name the stage and the run
directory (``langid-demo-3f2a9c``: Prefect keys allow lowercase letters, digits and dashes), so two
run directories never overwrite each other's. Charts are mermaid ``xychart-beta`` blocks, which the
Prefect UI renders inside markdown. Each stage's own report is ``report`` in its ``tasks/<stage>/ui.py``;
this module holds what they share: :class:`Report`, publishing, tables, charts and the summary.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from xlmflow.storage import Location, RunDir
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

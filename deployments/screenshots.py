"""Screenshots of what an xlmflow run shows in the Prefect UI, taken with headless Chromium.

Starts a Prefect server of its own (bound to 127.0.0.1, port 4310, its own PREFECT_HOME), runs the demo
pipeline against it, serves the deployments (``xlmflow serve --no-schedule``), then opens the UI pages and
saves PNGs into ``deployments/screenshots/``::

    apt-get install -y chromium fonts-noto-cjk    # Debian's browser; the fonts draw the zh/ja examples
    .venv/bin/python deployments/screenshots.py                      # server + run + serve + shots
    .venv/bin/python deployments/screenshots.py --skip-run           # retake: reuse the server's last run
    .venv/bin/python deployments/screenshots.py --api-url http://127.0.0.1:4200/api --skip-run --no-serve

A run takes 5-20 minutes on a CPU (training most of it); the shots about 2. Chromium is driven over the
DevTools protocol with ``websockets``, which Prefect already depends on: nothing to add to the project.
The pages are the Prefect UI's default one (V2, under ``/v2``), which draws the artifacts' mermaid charts;
the classic UI (``/``, where ``View at`` log links and the summary's links land) shows them as code:
``16-langid-artifact-v1-ui.png``. Each artifact's markdown is also checked for what renders badly (Python
reprs, empty cells or code spans, relative image links): listed as PROBLEM lines, exit status 1.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from websockets.sync.client import connect

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STAGES = ["ingest", "langid", "vocab", "shard", "train", "finetune", "evaluate"]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--run-all-compositor-stages-before-draw",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-color-profile=srgb",
]


def log(msg: str) -> None:
    print(f"[screenshots] {msg}", flush=True)


# ---------------------------------------------------------------- Prefect: server, run, serve, lookups
def xlmflow_bin() -> str:
    found = Path(sys.executable).parent / "xlmflow"
    return str(found) if found.exists() else (shutil.which("xlmflow") or "xlmflow")


def prefect_bin() -> str:
    found = Path(sys.executable).parent / "prefect"
    return str(found) if found.exists() else (shutil.which("prefect") or "prefect")


def wait_healthy(api: str, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api}/health", timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise SystemExit(f"no Prefect server answering at {api}")


def start_server(port: int, env: dict, logs: Path) -> subprocess.Popen:
    """``prefect server start`` on 127.0.0.1:PORT. PREFECT_UI_API_URL matters: without it the UI of a server
    started with ``--port`` still calls the API on the default port 4200."""
    out = open(logs / "server.log", "w")
    cmd = [prefect_bin(), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    log(f"starting {' '.join(cmd)} (log {out.name})")
    return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


class Api:
    def __init__(self, url: str):
        self.http = httpx.Client(base_url=url.rstrip("/") + "/", timeout=30)

    def post(self, path: str, body: dict) -> list | dict:
        r = self.http.post(path, json=body)
        r.raise_for_status()
        return r.json()

    def get(self, path: str) -> dict:
        r = self.http.get(path)
        r.raise_for_status()
        return r.json()

    def flow_names(self, runs: list[dict]) -> dict[str, str]:
        ids = sorted({r["flow_id"] for r in runs})
        return {f["id"]: f["name"] for f in self.post("flows/filter", {"flows": {"id": {"any_": ids}}})} if ids else {}

    def pipeline_run(self, run_dir: str | None) -> dict:
        flows = self.post("flows/filter", {"flows": {"name": {"any_": ["pipeline"]}}})
        if not flows:
            raise SystemExit("no 'pipeline' flow on this server: run the pipeline first (drop --skip-run)")
        runs = self.post(
            "flow_runs/filter",
            {
                "flows": {"id": {"any_": [flows[0]["id"]]}},
                "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
                "sort": "START_TIME_DESC",
                "limit": 50,
            },
        )
        if run_dir:
            mine = [r for r in runs if str(r["parameters"].get("run_dir", "")).rstrip("/") == run_dir.rstrip("/")]
            runs = mine or runs
        if not runs:
            raise SystemExit("no completed pipeline run on this server")
        return runs[0]

    def subflows(self, parent: dict) -> dict[str, dict]:
        """Stage name -> its subflow run (the pipeline's children, by flow name)."""
        runs = self.post("flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [parent["id"]]}}})
        names = self.flow_names(runs)
        return {names[r["flow_id"]]: r for r in runs}

    def artifacts(self, flow_run_ids: list[str]) -> list[dict]:
        return self.post(
            "artifacts/filter", {"artifacts": {"flow_run_id": {"any_": flow_run_ids}}, "sort": "CREATED_DESC"}
        )

    def deployments(self) -> list[dict]:
        return self.post("deployments/filter", {"sort": "NAME_ASC"})


@dataclass
class Found:
    pipeline: dict
    stages: dict[str, dict]
    artifacts: list[dict]
    by_stage: dict[str, dict] = field(default_factory=dict)  # stage (or "pipeline") -> markdown artifact
    progress: dict | None = None

    @classmethod
    def look_up(cls, api: Api, run_dir: str | None) -> Found:
        p = api.pipeline_run(run_dir)
        stages = api.subflows(p)
        arts = api.artifacts([p["id"], *(r["id"] for r in stages.values())])
        found = cls(p, stages, arts)
        for a in arts:  # newest first
            stage = (a.get("key") or "").split("-", 1)[0]
            if a["type"] == "markdown" and stage in [*STAGES, "pipeline"]:
                found.by_stage.setdefault(stage, a)
            if a["type"] == "progress" and found.progress is None:
                found.progress = a
        log(
            f"pipeline run {p['name']} ({p['id']}); subflows {', '.join(sorted(stages))}; artifacts "
            + ", ".join(f"{a.get('key') or a['type']}" for a in arts)
        )
        return found


# ---------------------------------------------------------------- Chromium over the DevTools protocol
class Browser:
    def __init__(self, chromium: str, width: int, height: int):
        self.width, self.height = width, height
        self.profile = tempfile.mkdtemp(prefix="xlmflow-shots-chromium-")
        cmd = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self.profile}",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = Path(self.profile) / "DevToolsActivePort"
        end = time.time() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.time() > end or self.proc.poll() is not None:
                raise SystemExit(f"chromium did not start ({chromium})")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.next_id = 0
        self.cut = 0  # px of the page the last capped shot left out
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.resize(height)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        stop(self.proc)
        shutil.rmtree(self.profile, ignore_errors=True)

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=120))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def resize(self, height: int) -> None:
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def js(self, expr: str):
        r = self.send("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr[:80]}: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def wait(self, expr: str, timeout: float, what: str) -> bool:
        end = time.time() + timeout
        while time.time() < end:
            with contextlib.suppress(RuntimeError):
                if self.js(expr):
                    return True
            time.sleep(0.5)
        log(f"  (gave up waiting for {what} after {timeout:.0f}s)")
        return False

    def goto(self, url: str) -> None:
        self.resize(self.height)
        self.send("Page.navigate", url=url)
        self.wait("document.readyState === 'complete'", 30, "page load")

    def click(self, selector: str, text: str) -> bool:
        """A real mouse click (Radix tabs activate on mousedown, not on a synthetic click())."""
        box = self.js(
            f"""(() => {{
              const el = [...document.querySelectorAll({json.dumps(selector)})]
                .find(e => e.innerText.trim() === {json.dumps(text)} && e.offsetParent !== null);
              if (!el) return null;
              el.scrollIntoView({{block: 'center'}});
              const r = el.getBoundingClientRect();
              return [r.x + r.width / 2, r.y + r.height / 2];
            }})()"""
        )
        if not box:
            log(f"  (no {selector} '{text}' to click)")
            return False
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)
        return True

    def shoot_charts(self, stem: Path, below: int) -> list[Path]:
        """One PNG per mermaid chart that starts lower than ``below`` px (so a capped page shot missed it)."""
        tops = self.js(
            "[...document.querySelectorAll('svg[id^=mermaid]')].map(s => (s.closest('pre') || s)"
            ".getBoundingClientRect().top + window.scrollY)"
        )
        made = []
        for i, top in enumerate(tops or []):
            if top + 200 < below:
                continue
            self.resize(self.height)
            rect = self.js(
                f"""(() => {{
                  const s = document.querySelectorAll('svg[id^=mermaid]')[{i}], el = s.closest('pre') || s;
                  el.scrollIntoView({{block: 'center'}});
                  const r = el.getBoundingClientRect();
                  return [r.x + window.scrollX, r.y + window.scrollY, r.width, r.height];
                }})()"""
            )
            time.sleep(1)
            x, y, w, h = rect
            clip = {"x": max(x - 16, 0), "y": max(y - 16, 0), "width": w + 32, "height": min(h + 32, self.height)}
            clip["scale"] = 1
            path = stem.with_name(f"{stem.name}-chart{'' if len(tops) == 1 else i + 1}.png")
            path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png", clip=clip)["data"]))
            log(f"  wrote {path.name} ({path.stat().st_size // 1024} KB): chart {i + 1}, below the page shot")
            made.append(path)
        return made

    def shoot(self, path: Path, full: bool = False, max_height: int = 2800) -> int:
        """Save a PNG; ``full``: as tall as the page's longest scrolling content (capped), not one screen.
        ``self.cut``: how many px of the page the cap left out (0: none)."""
        height, self.cut = self.height, 0
        if full:
            tall = self.js(
                "Math.max(document.documentElement.scrollHeight, "
                "...[...document.querySelectorAll('*')].filter(e => e.scrollHeight > e.clientHeight + 4 && "
                "['auto','scroll'].includes(getComputedStyle(e).overflowY))"
                ".map(e => e.scrollHeight - e.clientHeight + window.innerHeight))"
            )
            if tall and tall > self.height:
                height = min(int(tall) + 40, max_height)
                self.cut = max(int(tall) + 40 - max_height, 0)
                self.resize(height)
                time.sleep(1.5)
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.write_bytes(base64.b64decode(data))
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        log(f"  wrote {shown} ({path.stat().st_size // 1024} KB)")
        return height

    def shoot_end(self, path: Path, cut: int, max_height: int = 2000) -> Path:
        """The end of a page that a capped ``shoot`` left out (``cut`` px): its last ``max_height`` px at most
        (a screen of dense text takes ~150 KB of PNG per 1000 px), with some overlap, scrolled down."""
        self.resize(max(self.height, min(cut + 300, max_height)))
        time.sleep(1)
        self.js(
            "window.scrollTo(0, document.documentElement.scrollHeight); "
            "[...document.querySelectorAll('*')].filter(e => e.scrollHeight > e.clientHeight + 4 && "
            "['auto','scroll'].includes(getComputedStyle(e).overflowY)).forEach(e => e.scrollTop = e.scrollHeight)"
        )
        time.sleep(1.5)
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        log(f"  wrote {path.name} ({path.stat().st_size // 1024} KB): the page's end ({cut} px were below the shot)")
        return path


# ---------------------------------------------------------------- what to wait for on a page
SPINNING = (
    "!document.querySelector('.animate-spin, .p-loading-icon, [aria-busy=true]') && "
    "!/^\\s*Loading\\.*\\s*$/m.test(document.body.innerText)"
)


def has_text(text: str) -> str:
    return f"document.body && document.body.innerText.includes({json.dumps(text)})"


def mermaid_done(expected: int) -> str:
    """Every mermaid block drawn as an SVG chart (V2 UI), or failed visibly: no block still loading."""
    return (
        f"document.querySelectorAll('svg[id^=mermaid]').length + "
        f"[...document.querySelectorAll('p')].filter(p => p.innerText.includes('Failed to render mermaid')).length"
        f" >= {expected}"
    )


def settle(b: Browser, seconds: float, ready: list[tuple[str, str]], timeout: float) -> None:
    for expr, what in ready:
        b.wait(expr, timeout, what)
    b.wait(SPINNING, timeout, "spinners to stop")
    time.sleep(seconds)


def report_mermaid(b: Browser, name: str) -> dict:
    """What happened to the mermaid blocks on this page: drawn, failed, or left as code."""
    state = b.js(
        """(() => ({
          svgs: document.querySelectorAll('svg[id^=mermaid]').length,
          failed: [...document.querySelectorAll('p')].filter(p => p.innerText.includes('Failed to render mermaid'))
            .length,
          as_code: [...document.querySelectorAll('code')]
            .filter(c => /^(%%\\{.*\\}%%\\s*)?xychart-beta/s.test(c.innerText.trim())).length,
          broken_images: [...document.querySelectorAll('img')].filter(i => i.complete && i.naturalWidth === 0)
            .map(i => i.getAttribute('src')),
          none_text: (((document.querySelector('.prose') || {}).innerText || '').match(/\\bNone\\b/g) || [])
            .length,
        }))()"""
    )
    log(f"  {name}: mermaid charts drawn {state['svgs']}, failed {state['failed']}, shown as code {state['as_code']}")
    if state["none_text"]:
        log(f"  {name}: the artifact's text shows the word 'None' {state['none_text']} time(s)")
    if state["broken_images"]:
        log(f"  {name}: broken images {', '.join(state['broken_images'])}")
    return state


def lint_markdown(md: str) -> list[str]:
    """What looks broken in an artifact's markdown: Python's None/nan or reprs, empty table cells."""
    found = []
    for n, line in enumerate(md.splitlines(), 1):
        if line.startswith(("```", "%%")) or line.lstrip().startswith(("x-axis", "y-axis", "bar", "line", "title")):
            continue
        for bad in re.findall(r"\bNone\b|\bnan\b|\{'|\['|<[a-z_.]+ object at", line):
            found.append(f"line {n} shows {bad!r}: {line.strip()[:100]}")
        if line.startswith("|") and not set(line) <= set("|-: ") and re.search(r"\|\s*\|", line):
            found.append(f"line {n} has an empty table cell: {line.strip()[:100]}")
        for src in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", line):
            if not re.match(r"(https?:|data:|/)", src):
                found.append(f"line {n}: image {src!r} is a relative path, a broken image in the UI")
        if re.search(r"(?<!`)``(?!`)", line):
            found.append(f"line {n}: an empty code span, shown as two backticks: {line.strip()[:100]}")
    return found


# ---------------------------------------------------------------- the shots
PROGRESS_SHOT = "12-train-progress-artifact"
_progress_shot_of: dict = {}  # the progress artifact shot while training, if any


def progress_while_training(api: Api, running: subprocess.Popen, args, ui_base: str, out: Path) -> None:
    """While the pipeline runs, shoot the train task's progress artifact half way (at the end it says 100%)."""
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 5))
    while running.poll() is None:
        time.sleep(5)
        with contextlib.suppress(httpx.HTTPError):
            arts = api.post(
                "artifacts/filter",
                {"artifacts": {"type": {"any_": ["progress"]}}, "sort": "CREATED_DESC", "limit": 1},
            )
            if arts and arts[0]["created"] >= started and 30 <= float(arts[0]["data"] or 0) <= 80:
                log(f"training at {float(arts[0]['data']):.0f}%: {PROGRESS_SHOT}")
                b = Browser(args.chromium, args.width, args.height)
                try:
                    b.goto(f"{ui_base}/artifacts/artifact/{arts[0]['id']}")
                    settle(b, args.wait, [(has_text("Progress"), "the progress")], args.timeout)
                    b.shoot(out / f"{PROGRESS_SHOT}.png")
                    _progress_shot_of["id"] = arts[0]["id"]
                finally:
                    b.close()
                return


def take(
    b: Browser,
    found: Found,
    deployments: list[dict],
    ui: str,
    ui_base: str,
    out: Path,
    wait: float,
    timeout: float,
    keep_progress: bool = False,
) -> tuple[list[Path], list[str]]:
    """Every shot; ``keep_progress``: leave the progress artifact's PNG (taken half way through training)."""
    made, problems = [], []
    p = found.pipeline

    def shot(
        name: str, url: str, ready: list[tuple[str, str]], full: bool = False, tab: str | None = None, end: bool = False
    ):
        log(f"{name}: {url}")
        b.goto(url)
        settle(b, wait, ready, timeout)
        if tab:
            if b.click("[role=tab]", tab) or b.click("button, a", tab):
                time.sleep(1)
                settle(b, wait, [], timeout)
        path = out / f"{name}.png"
        height = b.shoot(path, full=full)
        made.append(path)
        if full:
            cut = b.cut
            made.extend(b.shoot_charts(path.with_suffix(""), height))
            if end and cut > 120:  # more than the "Show Raw Data" button
                made.append(b.shoot_end(out / f"{name}-end.png", cut))
        return path

    def artifact(name: str, a: dict | None, what: str):
        if a is None:
            problems.append(f"{name}: no {what} artifact found")
            log(f"{name}: no {what} artifact found; skipped")
            return
        charts = (a.get("data") or "").count("```mermaid")
        heading = re.sub(r"[`*_#\[\]]", "", (a.get("data") or "").strip().splitlines()[0]).strip()[:30]
        ready = [(has_text(heading), "its heading")]
        if charts and ui == "v2":
            ready.append((mermaid_done(charts), f"{charts} mermaid chart(s)"))
        shot(name, f"{ui_base}/artifacts/artifact/{a['id']}", ready, full=True, end=True)
        state = report_mermaid(b, name)
        if charts and state["svgs"] < charts:
            problems.append(f"{name}: {charts} mermaid charts in the markdown, {state['svgs']} drawn")
        if state["broken_images"]:
            problems.append(f"{name}: broken images in the UI: {', '.join(state['broken_images'])}")
        problems.extend(f"{name}: {p}" for p in lint_markdown(a.get("data") or ""))

    run_ready = [(has_text(p["name"]), "the run's name")]
    shot("01-pipeline-run", f"{ui_base}/runs/flow-run/{p['id']}", run_ready)
    shot("02-pipeline-artifacts-tab", f"{ui_base}/runs/flow-run/{p['id']}", run_ready, tab="Artifacts")
    shot("03-pipeline-subflows-tab", f"{ui_base}/runs/flow-run/{p['id']}", run_ready, tab="Subflow Runs")
    artifact("04-summary-artifact", found.by_stage.get("pipeline"), "pipeline summary")
    for i, stage in enumerate(STAGES):
        artifact(f"{5 + i:02d}-{stage}-artifact", found.by_stage.get(stage), stage)
    train = found.stages.get("train")
    if train:
        shot(
            "11-train-run-artifacts",
            f"{ui_base}/runs/flow-run/{train['id']}",
            [(has_text(train["name"]), "the train run's name")],
            tab="Artifacts",
        )
    if found.progress is None:
        problems.append("no progress artifact found")
    elif not keep_progress:
        shot(PROGRESS_SHOT, f"{ui_base}/artifacts/artifact/{found.progress['id']}", [(has_text("Progress"), "it")])
    if deployments:
        shot("13-deployments", f"{ui_base}/deployments", [(has_text(deployments[0]["name"]), "deployment names")])
        nightly = next((d for d in deployments if d["name"] == "nightly"), deployments[0])
        shot(
            "14-deployment-nightly",
            f"{ui_base}/deployments/deployment/{nightly['id']}",
            [(has_text(nightly["name"]), "the deployment")],
        )
        train_dep = next((d for d in deployments if d["name"] == "train"), nightly)
        shot(
            f"15-deployment-{train_dep['name']}-custom-run",
            f"{ui_base}/deployments/deployment/{train_dep['id']}/run",
            [(has_text("Parameters"), "the run form")],
            full=True,
        )
    lang = found.by_stage.get("langid")
    if lang and ui == "v2":  # the same artifact in the classic UI, which shows mermaid blocks as code
        shot(
            "16-langid-artifact-v1-ui",
            f"{ui_base.removesuffix('/v2')}/artifacts/artifact/{lang['id']}",
            [(has_text("Language ID"), "its heading")],
        )
        report_mermaid(b, "16-langid-artifact-v1-ui")
    return made, problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--api-url", help="use this Prefect server (http://HOST:PORT/api) instead of starting one")
    ap.add_argument("--port", type=int, default=4310, help="port of the server this script starts (default 4310)")
    ap.add_argument(
        "--prefect-home", default="/tmp/xlmflow-shots/prefect-home", help="PREFECT_HOME of the server it starts"
    )
    ap.add_argument("--run-dir", default="/tmp/xlmflow-shots/run", help="run directory of the pipeline run")
    ap.add_argument("--skip-run", action="store_true", help="no new run: shoot the server's last completed one")
    ap.add_argument("--no-serve", action="store_true", help="no `xlmflow serve` (no deployment pages)")
    ap.add_argument("--out", default=str(HERE / "screenshots"), help="folder for the PNGs")
    ap.add_argument("--ui", choices=["v2", "v1"], default="v2", help="Prefect UI: v2 (default, /v2) or v1 (/)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=1000)
    ap.add_argument("--wait", type=float, default=2.0, help="seconds to let a page settle once it looks ready")
    ap.add_argument("--timeout", type=float, default=30.0, help="most seconds to wait for a page to be ready")
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="xlmflow-shots-logs-"))
    env = dict(os.environ)
    server = serving = None
    if args.api_url:
        api_url = args.api_url.rstrip("/")
    else:
        api_url = f"http://127.0.0.1:{args.port}/api"
        Path(args.prefect_home).mkdir(parents=True, exist_ok=True)
        env["PREFECT_HOME"] = args.prefect_home
        env["PREFECT_UI_API_URL"] = api_url
    env["PREFECT_API_URL"] = api_url
    ui_base = api_url.removesuffix("/api") + ("/v2" if args.ui == "v2" else "")
    try:
        if not args.api_url:
            server = start_server(args.port, env, logs)
        wait_healthy(api_url)
        api = Api(api_url)
        if not args.skip_run:
            cmd = [xlmflow_bin(), "run", "--run-dir", args.run_dir]
            log(f"running {' '.join(cmd)} (log {logs / 'run.log'}; a few minutes)")
            with open(logs / "run.log", "w") as f:
                running = subprocess.Popen(
                    cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
                )
                try:
                    progress_while_training(api, running, args, ui_base, out)
                    failed = running.wait()
                except BaseException:
                    stop(running)
                    raise
            if failed:
                raise SystemExit(f"the pipeline run failed: see {logs / 'run.log'}")
        if not args.no_serve:
            cmd = [xlmflow_bin(), "serve", "--run-dir", args.run_dir, "--no-schedule"]
            log(f"serving: {' '.join(cmd)}")
            serving = subprocess.Popen(
                cmd,
                env=env,
                cwd=REPO,
                stdout=open(logs / "serve.log", "w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            end = time.time() + 90
            while len(api.deployments()) < 1 + len(STAGES) and time.time() < end:
                time.sleep(1)
        found = Found.look_up(api, args.run_dir)
        deployments = api.deployments()
        browser = Browser(args.chromium, args.width, args.height)
        try:
            keep = bool(_progress_shot_of) or (args.skip_run and (out / f"{PROGRESS_SHOT}.png").exists())
            made, problems = take(
                browser, found, deployments, args.ui, ui_base, out, args.wait, args.timeout, keep_progress=keep
            )
        finally:
            browser.close()
        log(f"{len(made)} screenshots in {out}")
        for p in problems:
            log(f"PROBLEM: {p}")
        return 1 if problems else 0
    finally:
        stop(serving)
        stop(server)


if __name__ == "__main__":
    sys.exit(main())

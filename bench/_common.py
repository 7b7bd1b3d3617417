"""Shared by the benchmarks: the demo corpus as JSONL (plain, or scaled from real text), the data stages as their
plain functions (the flows' bodies without Prefect), and a child process that reports its own peak RSS.

Scaled corpora (``write_corpus``): factor f < 1 keeps a seeded random f of every demo file's documents; f >= 1
keeps every document and adds (f - 1) x n new ones per file, each spliced from two different documents of the
same file (the first part of one, cut at a random white space in its middle half, and the last part of another),
so a new document is real text of that file's language with the demo's length distribution, and exact or near
dedup does not collapse the copies (two random documents out of n per file rarely pair twice).
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
BENCH_VENV_HINT = (
    "python3 -m venv /tmp/venv-dt && /tmp/venv-dt/bin/pip install 'datatrove[processing]==0.10.1' pyarrow spacy orjson"
)


def demo_files() -> list[Path]:
    return [Path(p) for p in sorted(glob.glob(str(DEMO / "*.jsonl.zst")))]


def read_demo(path: Path) -> list[bytes]:
    import zstandard

    data = zstandard.ZstdDecompressor().decompress(path.read_bytes(), max_output_size=1 << 31)
    return [line for line in data.split(b"\n") if line.strip()]


def _cut(text: str, rng, first: bool) -> str:
    """The first (or last) part of ``text``, cut at a random white space in its middle half (anywhere if none)."""
    n = len(text)
    if n < 2:
        return text
    lo, hi = n // 4, max(n // 4 + 1, 3 * n // 4)
    pos = int(rng.integers(lo, hi))
    space = text.rfind(" ", lo, pos + 1)
    if space <= 0:
        space = text.find(" ", pos, hi)
    if space > 0:
        pos = space
    return text[:pos] if first else text[pos:]


def write_corpus(out: Path, factor: float, seed: int = 0) -> tuple[int, int]:
    """The demo corpus times ``factor`` as one ``.jsonl`` per demo file under ``out`` (reused when complete).

    Returns (documents, bytes)."""
    import numpy as np
    import orjson

    done = out / "_done.json"
    if done.exists():
        info = json.loads(done.read_text())
        return info["documents"], info["bytes"]
    out.mkdir(parents=True, exist_ok=True)
    docs = 0
    for k, path in enumerate(demo_files()):
        rng = np.random.default_rng([seed, k])
        lines = read_demo(path)
        n = len(lines)
        name = path.name.removesuffix(".zst")
        with open(out / name, "wb") as f:
            if factor < 1:
                keep = np.sort(rng.choice(n, size=max(1, round(n * factor)), replace=False))
                chosen = [lines[i] for i in keep]
                f.write(b"\n".join(chosen) + b"\n")
                docs += len(chosen)
                continue
            f.write(b"\n".join(lines) + b"\n")
            docs += n
            extra = round((factor - 1) * n)
            if not extra:
                continue
            recs = [orjson.loads(line) for line in lines]
            texts = [r.get("text") if isinstance(r.get("text"), str) else "" for r in recs]
            lang, source = recs[0].get("lang"), recs[0].get("source")
            a = rng.integers(0, n, extra)
            b = (a + rng.integers(1, max(n, 2), extra)) % n  # a different document
            buf = []
            for j in range(extra):
                text = _cut(texts[a[j]], rng, True) + _cut(texts[b[j]], rng, False)
                buf.append(orjson.dumps({"text": text, "lang": lang, "source": source, "synthetic": j}))
                if len(buf) >= 50_000:
                    f.write(b"\n".join(buf) + b"\n")
                    buf = []
            if buf:
                f.write(b"\n".join(buf) + b"\n")
            docs += extra
    size = sum(p.stat().st_size for p in out.glob("*.jsonl"))
    done.write_text(json.dumps({"documents": docs, "bytes": size, "factor": factor, "seed": seed}))
    return docs, size


# ---------------------------------------------------------------- the data stages as plain functions
def workers() -> int:
    return int(os.environ.get("XLMFLOW_WORKERS", os.cpu_count() or 2))


def _pool_map(fn, units):
    with ThreadPoolExecutor(workers()) as pool:
        return list(pool.map(fn, units))


def run_ingest(run_dir: str, source_glob: str):
    from xlmflow.storage import RunDir
    from xlmflow.tasks import ingest
    from xlmflow.tasks.common.runtime import commit_stage

    run = RunDir.of(run_dir)
    params = ingest.IngestParams(sources=[ingest.Source(path=source_glob, format="jsonl")])
    refs = _pool_map(ingest.ingest_unit, ingest.plan(run, params))
    commit_stage(ingest.stage_for(run, params, refs), refs)


def langid_params(near: bool = True):
    from xlmflow.tasks.langid import LangidParams

    p = LangidParams()  # plain defaults: no evaluation sets held out (the demo's would be)
    p.dedup.near = near
    return p


def run_langid(run_dir: str, near: bool | str = True):
    """The langid flow's body (flows/langid.py) minus Prefect: score and signals side by side, then filter,
    dedup and clean per language, commit."""
    from xlmflow.storage import RunDir
    from xlmflow.tasks import langid

    run = RunDir.of(run_dir)
    params = langid_params(near not in (False, "0", "exact"))
    scores, signals, filters = langid.plan(run, params)
    jobs = [(langid.score_unit, u) for u in scores] + [(langid.signals_unit, u) for u in signals]
    score_refs = _pool_map(lambda job: job[0](job[1]), jobs)
    filter_refs = _pool_map(langid.filter_unit, filters)
    earlier, new, ledger = langid.plan_dedup(run, params, filters, filter_refs)
    dedup_units = earlier + new
    dedup_refs = _pool_map(langid.dedup_unit, earlier) + _pool_map(langid.dedup_unit, new)
    clean_refs = _pool_map(langid.clean_unit, langid.plan_clean(run, dedup_units, dedup_refs))
    refs = score_refs + filter_refs + dedup_refs + clean_refs
    langid.commit_langid(langid.stage_for(run, params, refs), refs, ledger)


def run_vocab(run_dir: str):
    from xlmflow.storage import RunDir
    from xlmflow.tasks import vocab

    vocab.build_vocab(vocab.plan(RunDir.of(run_dir), vocab.VocabParams()))


def run_shard(run_dir: str):
    from xlmflow.storage import RunDir
    from xlmflow.tasks import shard

    run = RunDir.of(run_dir)
    params = shard.ShardParams()
    refs = _pool_map(shard.shard_unit, shard.plan(run, params))
    shard.commit_shards(shard.stage_for(run, params, refs), refs)


STAGE_FUNCS = {"ingest": run_ingest, "langid": run_langid, "vocab": run_vocab, "shard": run_shard}


def stage_child(stage: str, run_dir: str, *args: str) -> None:
    """Entry point of a measured child: run one stage, print its seconds and documents as JSON."""
    t, c = time.perf_counter(), time.process_time()
    STAGE_FUNCS[stage](run_dir, *args)
    seconds, cpu = time.perf_counter() - t, time.process_time() - c
    print(json.dumps({"seconds": seconds, "cpu": cpu, "documents": stage_docs(run_dir, stage)}))


def stage_docs(run_dir: str, stage: str) -> int:
    """Documents the stage read: ingest, its documents; langid, the ingested ones; vocab and shard, the clean ones."""
    from xlmflow.storage import RunDir, load_output

    run = RunDir.of(run_dir)
    if stage in ("ingest", "langid"):
        return int(load_output(run.stage("ingest"), "ingest").stats["documents"])
    return int(load_output(run.stage("langid"), "langid").stats["documents"])


def child_peak(argv: list[str], env: dict | None = None, timeout: float | None = None) -> tuple[str, int, float, float]:
    """Run ``argv`` from a fresh intermediate process: (its stdout, peak RSS in MiB of the largest process in its
    tree, wall seconds, CPU seconds of the whole tree: user + system of every process waited for).

    RUSAGE_CHILDREN is the max (RSS) and sum (CPU) over every waited-for descendant, so the wrapper measures
    one command only. CPU seconds are what contention on a shared machine inflates least."""
    wrapper = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter()\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "w = time.perf_counter() - t\n"
        "sys.stderr.write(r.stderr[-4000:] if r.returncode else '')\n"
        "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(r.stdout.strip()); print(u.ru_maxrss, w, u.ru_utime + u.ru_stime)\n"
        "sys.exit(r.returncode)"
    )
    r = subprocess.run([sys.executable, "-c", wrapper, *argv], capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv[:6])} failed:\n{r.stderr[-3000:]}\n{r.stdout[-2000:]}")
    *out, last = r.stdout.strip().split("\n")
    peak, wall, cpu = last.split()
    return "\n".join(out).strip(), int(peak) // 1024, float(wall), float(cpu)


def prefect_startup(env: dict | None = None) -> float:
    """Seconds a fresh interpreter takes to import xlmflow + Prefect and run one empty flow (temporary server)."""
    code = (
        "import time; t = time.perf_counter()\n"
        "import xlmflow\n"
        "from prefect import flow\n"
        "@flow\n"
        "def noop():\n    return 1\n"
        "noop()\n"
        "print(time.perf_counter() - t)"
    )
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return time.perf_counter() - t


def xlmflow_cmd() -> list[str]:
    return [sys.executable, "-m", "xlmflow.flows.cli"]


def manifest_hashes(run_dir: str, stages: list[str]) -> dict[str, str]:
    """{stage/path: sha256} of every file every stage's manifest lists (the bytes a run committed)."""
    from xlmflow.storage import RunDir, load_output

    run = RunDir.of(run_dir)
    return {f"{s}/{f.path}": f.sha256 for s in stages for f in load_output(run.stage(s), s).files}


if __name__ == "__main__":  # python bench/_common.py STAGE RUN_DIR [ARGS...]: one measured stage
    stage_child(*sys.argv[1:])

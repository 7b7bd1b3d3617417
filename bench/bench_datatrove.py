"""The data half side by side with datatrove 0.10.1: same JSONL documents, same LID model, same machine, one run.

* datatrove (its own venv, ``--datatrove-python``; made on first use unless ``--no-install``): ``JsonlReader ->
  LanguageFilter -> GopherQualityFilter -> GopherRepetitionFilter -> ParquetWriter`` (the filtered documents), then
  its exact dedup (``ExactDedupSignature`` over them, ``ExactFindDedups``, ``ExactDedupFilter -> ParquetWriter``):
  FineWeb's layout. Worker processes are forked (``start_method="fork"``, not its default forkserver) so their CPU
  time is reaped into this measurement; forking also spares them imports. The LanguageFilter's fastText model is the
  very ``lid.176.ftz`` xlmflow loads (``xlmflow.tasks.langid.lid.model_file(None)``, set as the filter's model object,
  nothing downloaded), top-3 labels (``k=3``, our ``top_k``; datatrove's default k=-1 scores all 176 labels:
  measured too, with ``--stock-k``), threshold 0.5 (ours). Heuristics set to our rules where datatrove has one: 3 to
  100k words, mean word length 2-20, >= 40% alphabetic words, <= 30% duplicated lines, <= 30% of characters in
  duplicated word 3-grams; the others off. Dedup key: detected language + lower-cased text with punctuation and
  symbols removed (ours: exact dedup per language on that normalised text). One task per input file, ``--workers``
  processes (default: CPU count).
* xlmflow: ``ingest -> langid`` with near dedup off (``--no-near-dedup``: exact only, as datatrove here), plain
  defaults (no evaluation sets held out), ``XLMFLOW_WORKERS`` threads (default: CPU count). Measured twice:
  the CLI as a user runs it (``xlmflow run --only ingest --only langid --config bench.toml --no-near-dedup``),
  with Prefect's start-up (a fresh interpreter importing xlmflow and running one empty flow on the temporary
  server) reported apart; and the stages' plain functions (the flows' bodies, no Prefect) in a child process.

Documents: the demo corpus (``data/demo/*.jsonl.zst``, 317k documents in 32 files) decompressed to JSONL,
times ``--factor`` (``bench/_common.py``: f < 1 a seeded subset, f > 1 adds documents spliced from real ones).
docs/s = input documents / wall seconds, both sides; docs/CPU-s = input documents / CPU seconds of every process
of the side (user + system, from ``getrusage``), which a busy shared machine inflates far less. Goal: xlmflow >= 5x
datatrove.

    python bench/bench_datatrove.py [--factor 1] [--datatrove-python /tmp/venv-dt/bin/python] [--stock-k] [--quick]
        [--sides xlmflow datatrove] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("XLMFLOW_PREFECT_HOME", tempfile.mkdtemp(prefix="bench-dt-prefect-"))

import _common as common  # noqa: E402

DT_SCRIPT = r'''
import json, os, sys, time
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader, ParquetReader
from datatrove.pipeline.filters import LanguageFilter, GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig, ExactDedupFilter, ExactDedupSignature, ExactFindDedups,
)
from datatrove.pipeline.writers import ParquetWriter

import regex  # a datatrove dependency: \p classes, as our polars normalise()


def dedup_key(doc) -> str:
    text = regex.sub(r"\s+", " ", regex.sub(r"[\p{P}\p{S}]", " ", doc.text.lower())).strip()
    return doc.metadata.get("language", "") + "\x00" + text


class LocalLanguageFilter(LanguageFilter):
    """datatrove's LanguageFilter on a local model file: the model object is set before the first predict."""

    def __init__(self, model_path, k, **kwargs):
        super().__init__(**kwargs)
        self.model_path, self.k = model_path, k

    def run(self, data, rank=0, world_size=1):
        from fasttext.FastText import _FastText

        self.model._model = _FastText(self.model_path)
        self.model.k = self.k
        return super().run(data, rank, world_size)


def main():
    config = ExactDedupConfig(content_getter=dedup_key)
    d = lambda name: os.path.join(work, name)
    filtered = LocalPipelineExecutor(
        pipeline=[
            JsonlReader(src, glob_pattern="*.jsonl", text_key="text"),
            LocalLanguageFilter(model_path, k, language_threshold=0.5),
            GopherQualityFilter(
                min_doc_words=3, max_doc_words=100_000, min_avg_word_length=2, max_avg_word_length=20,
                max_symbol_word_ratio=None, max_bullet_lines_ratio=None, max_ellipsis_lines_ratio=None,
                max_non_alpha_words_ratio=0.4, min_stop_words=None,
            ),
            GopherRepetitionFilter(
                dup_line_frac=0.3, dup_para_frac=None, dup_line_char_frac=None, dup_para_char_frac=None,
                top_n_grams=(), dup_n_grams=((3, 0.3),),
            ),
            ParquetWriter(d("filtered"), output_filename="${rank}.parquet"),
        ],
        tasks=tasks, workers=workers, logging_dir=d("logs/filter"), start_method="fork",
    )
    signatures = LocalPipelineExecutor(
        pipeline=[ParquetReader(d("filtered")), ExactDedupSignature(d("sigs"), config=config)],
        tasks=tasks, workers=workers, logging_dir=d("logs/sigs"), start_method="fork", depends=filtered,
    )
    find = LocalPipelineExecutor(
        pipeline=[ExactFindDedups(d("sigs"), d("dups"), config=config)],
        tasks=1, workers=1, logging_dir=d("logs/find"), depends=signatures,
    )
    final = LocalPipelineExecutor(
        pipeline=[ParquetReader(d("filtered")), ExactDedupFilter(d("dups"), config=config),
                  ParquetWriter(d("clean"), output_filename="${rank}.parquet")],
        tasks=tasks, workers=workers, logging_dir=d("logs/final"), start_method="fork", depends=find,
    )
    t = time.perf_counter()
    final.run()
    seconds = time.perf_counter() - t
    f = json.load(open(d("logs/filter/stats.json")))
    c = json.load(open(d("logs/final/stats.json")))
    print(json.dumps({"seconds": seconds, "read": f[0]["stats"]["documents"]["total"],
                      "lid_kept": f[1]["stats"]["forwarded"], "filtered": f[4]["stats"]["total"],
                      "clean": c[2]["stats"]["total"]}))


if __name__ == "__main__":
    src, work, model_path, tasks, workers, k = sys.argv[1:7]
    tasks, workers, k = int(tasks), int(workers), int(k)
    main()
'''


START = "Prefect start-up (import + empty flow)"
CLI = "xlmflow CLI ingest+langid"
CLI_NET = "xlmflow CLI minus Prefect start-up"
PLAIN = "xlmflow plain functions (stage bodies)"
DT = "datatrove k=3"
DT_STOCK = "datatrove stock k=-1"
STARTUP = "import xlmflow\nfrom prefect import flow\n@flow\ndef noop():\n    return 1\nnoop()"


def ensure_datatrove(python: str, install: bool) -> str | None:
    """None when ``python`` has datatrove 0.10.1 (installed here if asked), else why not."""
    probe = [
        python,
        "-c",
        "import importlib.metadata as m, fasttext, spacy, pyarrow, orjson; assert m.version('datatrove') == '0.10.1'",
    ]
    ok = Path(python).exists() and subprocess.run(probe, capture_output=True, text=True).returncode == 0
    if ok:
        return None
    if not install:
        return f"{python} lacks datatrove (make it: {common.BENCH_VENV_HINT} spacy)"
    venv = Path(python).parents[1]
    print(f"installing datatrove 0.10.1 into {venv} ...", flush=True)
    steps = [
        ["python3", "-m", "venv", str(venv)],
        [str(venv / "bin/pip"), "install", "-q", "datatrove[processing]==0.10.1", "pyarrow", "spacy", "orjson"],
    ]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            return f"{' '.join(cmd)} failed: {r.stderr.strip()[-800:]}"
    return (
        None if subprocess.run(probe, capture_output=True).returncode == 0 else "datatrove import fails after install"
    )


def run_datatrove(python: str, src: Path, work: Path, tasks: int, workers: int, k: int) -> dict:
    from xlmflow.tasks.langid.lid import model_file

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    script = work.parent / "dt_pipeline.py"
    script.write_text(DT_SCRIPT)
    stdout, peak, wall, cpu = common.child_peak(
        [python, str(script), str(src), str(work), model_file(None), str(tasks), str(workers), str(k)]
    )
    return json.loads(stdout.splitlines()[-1]) | {"wall": wall, "cpu": cpu, "peak_mib": peak}


def run_cli(src: Path, run_dir: Path, env: dict) -> tuple[float, float, dict]:
    cfg = run_dir.parent / "bench.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(f'[[ingest.sources]]\npath = "{src}/*.jsonl"\nformat = "jsonl"\n')
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [*common.xlmflow_cmd(), "run", "--run-dir", str(run_dir), "--config", str(cfg)]
    cmd += ["--only", "ingest", "--only", "langid", "--no-near-dedup"]
    _, _, wall, cpu = common.child_peak(cmd, env=env)
    stats = json.loads((run_dir / "langid" / "stats.json").read_text())
    return wall, cpu, stats


def run_plain(src: Path, run_dir: Path, env: dict) -> tuple[float, float]:
    """(wall, CPU) seconds of the two stages' bodies, each timed inside its own child (imports excluded)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    here = str(Path(__file__).resolve().parent / "_common.py")
    wall = cpu = 0.0
    for argv in (["ingest", str(run_dir), f"{src}/*.jsonl"], ["langid", str(run_dir), "exact"]):
        stdout, _, _, _ = common.child_peak([sys.executable, here, *argv], env=env)
        info = json.loads(stdout.splitlines()[-1])
        wall, cpu = wall + info["seconds"], cpu + info["cpu"]
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--factor", type=float, default=1.0, help="corpus size in demo corpora (default 1: 317k docs)")
    ap.add_argument("--quick", action="store_true", help="smoke size: --factor 0.05 (16k documents), one repeat")
    ap.add_argument("--datatrove-python", default="/tmp/venv-dt/bin/python")
    ap.add_argument("--no-install", action="store_true", help="do not create the datatrove venv when missing")
    ap.add_argument("--stock-k", action="store_true", help="also run datatrove with its default k=-1 (all labels)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="datatrove worker processes")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved runs of each side; the best counts")
    ap.add_argument("--workdir", help="default /tmp/bench-datatrove[-quick]")
    ap.add_argument("--sides", nargs="+", default=["xlmflow", "datatrove"], choices=["xlmflow", "datatrove"])
    args = ap.parse_args()
    if args.quick:
        args.factor = 0.05
    work = Path(args.workdir or ("/tmp/bench-datatrove-quick" if args.quick else "/tmp/bench-datatrove"))
    src = Path(f"/tmp/bench-data/x{args.factor:g}")
    n_docs, n_bytes = common.write_corpus(src, args.factor)
    n_files = len(list(src.glob("*.jsonl")))
    print(f"documents: {n_docs:,} in {n_files} JSONL files, {n_bytes / 1e6:.0f} MB; {os.cpu_count()} CPUs")

    env = dict(os.environ, PREFECT_LOGGING_LEVEL="WARNING")
    why = ensure_datatrove(args.datatrove_python, not args.no_install)
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    info: dict[str, dict] = {}

    def keep(name: str, w: float, c: float) -> None:
        wall[name] = min(w, wall.get(name, float("inf")))
        cpu[name] = min(c, cpu.get(name, float("inf")))

    common.prefect_startup(env)  # the first start on a fresh PREFECT_HOME creates its database: not counted
    for _ in range(args.repeat):
        if "xlmflow" in args.sides:
            _, _, w, c = common.child_peak([sys.executable, "-c", STARTUP], env=env)
            keep(START, w, c)
            w, c, stats = run_cli(src, work / "cli-run", env)
            keep(CLI, w, c)
            info["xlmflow"] = stats["documents"]
            keep(PLAIN, *run_plain(src, work / "plain-run", env))
        if why is None and "datatrove" in args.sides:
            dt = run_datatrove(args.datatrove_python, src, work / "dt", n_files, args.workers, 3)
            keep(DT, dt["wall"], dt["cpu"])
            info[DT] = dt
            if args.stock_k:
                dt = run_datatrove(args.datatrove_python, src, work / "dt", n_files, args.workers, -1)
                keep(DT_STOCK, dt["wall"], dt["cpu"])
                info[DT_STOCK] = dt
    if CLI in wall:
        keep(CLI_NET, wall[CLI] - wall[START], cpu[CLI] - cpu[START])

    print(f"\nbest of {args.repeat}; docs/s = {n_docs:,} input documents / seconds (wall; CPU: all processes)")
    print(f"  {'':46s} {'wall s':>8s} {'docs/s':>10s} {'CPU s':>8s} {'docs/CPU-s':>11s}")
    for name in wall:
        if name == START:
            print(f"  {name:46s} {wall[name]:8.1f} {'':10s} {cpu[name]:8.1f}")
        else:
            print(
                f"  {name:46s} {wall[name]:8.1f} {n_docs / wall[name]:10,.0f} {cpu[name]:8.1f} "
                f"{n_docs / cpu[name]:11,.0f}"
            )
    for name, d in info.items():
        print(f"  {name}: {json.dumps({k: v for k, v in d.items() if k not in ('seconds', 'wall', 'cpu')})}")
    if why is not None:
        print(f"datatrove: not run: {why}")
        return
    if DT not in wall or CLI not in wall:
        return
    for ours in (CLI, CLI_NET, PLAIN):
        print(
            f"ratio {ours} / datatrove k=3: {wall[DT] / wall[ours]:.2f}x wall, {cpu[DT] / cpu[ours]:.2f}x CPU "
            f"(goal >= 5x)"
        )
    if DT_STOCK in wall:
        print(
            f"ratio {CLI_NET} / datatrove stock k=-1: {wall[DT_STOCK] / wall[CLI_NET]:.2f}x wall, "
            f"{cpu[DT_STOCK] / cpu[CLI_NET]:.2f}x CPU"
        )


if __name__ == "__main__":
    main()

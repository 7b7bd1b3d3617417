"""Shard stage throughput against bare ``Tokenizer.encode_batch`` and datatrove's ``DocumentTokenizer``.

One run, the same documents and the same tokenizer.json for all three:

* bare: ``encode_batch`` (and ``encode_batch_fast``) over in-memory Python strings,
  batches of ``--batch-docs``; nothing read, nothing written.
* ours: the shard stage's plain functions (plan -> one unit per shard on a thread pool
  of ``XLMFLOW_WORKERS`` -> commit), as the flow runs them minus Prefect; plus its
  phases measured apart: read (Parquet -> filtered record batches), tokenise
  (``tokenize`` on batches already in memory), write (Parquet shards from tokenised tables).
* datatrove: ``ParquetReader`` -> ``DocumentTokenizer`` (no shuffling, eos added) in
  a ``LocalPipelineExecutor`` with one task, run by ``--datatrove-python`` (a separate
  venv with datatrove), timed around ``executor.run()`` inside that process.

Tokens/s counts content tokens (not our language tag / end-of-text, not datatrove's eos),
so every column divides the same number. The documents are the demo corpus ingested
at ``--ingest-run`` (default /tmp/run1), ``--limit`` of them spread evenly over it;
the tokenizer is a byte-level BPE of ``--vocab-size`` trained here (or ``--tokenizer``).

    /tmp/venv1/bin/python bench/bench_shard.py --datatrove-python /tmp/venv-dt/bin/python
    /tmp/venv1/bin/python bench/bench_shard.py --limit 0 --datatrove-python ...   # all documents
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("XLMFLOW_PREFECT_HOME", tempfile.mkdtemp(prefix="bench-shard-prefect-"))  # no flow runs here

from xlmflow.storage import FileWriter, RunDir, load_output, write_table  # noqa: E402
from xlmflow.tasks import shard  # noqa: E402
from xlmflow.tasks.common.runtime import Unit, commit_stage, ensure, stage_unit  # noqa: E402

DT_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import ParquetReader
    from datatrove.pipeline.tokens import DocumentTokenizer
    src, tok, out, logs, batch, tasks = sys.argv[1:7]
    ex = LocalPipelineExecutor(pipeline=[
        ParquetReader(src, glob_pattern="lang=*/*.parquet", text_key="text", id_key="doc_id", read_metadata=False),
        DocumentTokenizer(out, tokenizer_name_or_path=tok, eos_token="<|endoftext|>", shuffle_documents=False,
                          batch_size=int(batch)),
    ], tasks=int(tasks), workers=int(tasks), logging_dir=logs)
    t, c = time.perf_counter(), time.process_time()
    ex.run()  # one task, one worker: runs in this process, so process_time covers its tokenizer threads
    print(json.dumps({"seconds": [time.perf_counter() - t, time.process_time() - c]}))
""")


def load_documents(ingest_run: str, limit: int) -> pl.DataFrame:
    run = RunDir.of(ingest_run)
    m = load_output(run.stage("ingest"), "ingest")
    parts = [run.stage("ingest").child(f.path).path for f in m.files if f.path.rsplit("/", 1)[-1].startswith("part-")]
    df = pl.read_parquet(parts, columns=["doc_id", "text", "claimed_lang"]).rename({"claimed_lang": "lang"})
    df = df.with_columns(pl.col("lang").fill_null("und"))
    if 0 < limit < df.height:
        df = df[np.linspace(0, df.height - 1, limit).astype(np.int64)]
    return df


def train_tokenizer(df: pl.DataFrame, vocab_size: int, langs: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        special_tokens=[shard.EOS, "<pad>"] + [shard.lang_tag(lg) for lg in langs],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    sample = df["text"][np.linspace(0, df.height - 1, min(df.height, 150_000)).astype(np.int64)]
    tok.train_from_iterator((sample[i : i + 4096].to_list() for i in range(0, len(sample), 4096)), trainer=trainer)
    return tok


def write_inputs(run_dir: str, df: pl.DataFrame, tok_json: str, langs: list[str]) -> None:
    """A committed langid stage (one part per claimed language) and a vocab stage holding tok_json."""
    from tokenizers import Tokenizer

    run = RunDir.of(run_dir)
    refs = []
    for (lang,), part in df.group_by(["lang"], maintain_order=True):
        loc = run.unit("langid", f"lang={lang}", group="clean")
        table = (
            part.select("doc_id", "text", "lang")
            .to_arrow()
            .cast(pa.schema([("doc_id", pa.string()), ("text", pa.large_string()), ("lang", pa.string())]))
        )
        unit = Unit(
            stage="langid", name=f"lang={lang}", out=loc.uri, code_version="bench", params={"rows": part.height}
        )
        refs.append(ensure(unit, lambda aside, t=table: write_table(aside.path("part-00000.parquet"), t)))
    commit_stage(stage_unit(run.stage("langid").uri, "langid", refs, "bench", {}), refs)

    def build(aside):
        with aside.path(shard.TOKENIZER_FILE).open("wb") as f:
            f.write(tok_json.encode())
        return {"languages": langs, "vocab_size": Tokenizer.from_str(tok_json).get_vocab_size()}

    ensure(Unit(stage="vocab", name="_stage", out=run.stage("vocab").uri, code_version="bench", params={}), build)


def bare(texts: list[str], tok, batch_docs: int, fast: bool) -> tuple[tuple[float, float], int]:
    """((wall s, CPU s of all threads), content tokens)."""
    encode = tok.encode_batch_fast if fast else tok.encode_batch
    t, c = time.perf_counter(), time.process_time()
    tokens = 0
    for i in range(0, len(texts), batch_docs):
        tokens += sum(map(len, encode(texts[i : i + batch_docs], add_special_tokens=False)))
    return (time.perf_counter() - t, time.process_time() - c), tokens


def ours_whole(run_dir: str, params: shard.ShardParams, workers: int) -> tuple[tuple[float, float], int, int]:
    run = RunDir.of(run_dir)
    t, c = time.perf_counter(), time.process_time()
    units = shard.plan(run, params)
    with ThreadPoolExecutor(workers) as pool:
        refs = list(pool.map(shard.shard_unit, units))
    shard.commit_shards(shard.stage_for(run, params, refs), refs)
    seconds = (time.perf_counter() - t, time.process_time() - c)
    m = load_output(run.stage("shard"), "shard")
    docs = sum(sum(v.values()) for v in m.stats["documents"].values())
    return seconds, m.stats["tokens_total"] - 2 * docs, docs


def ours_phases(run_dir: str, params: shard.ShardParams, out_dir: str) -> dict[str, tuple[float, float]]:
    """Each phase alone over every shard of the plan: read, tokenise (in memory), write (in memory -> files)."""
    from xlmflow.storage import Location

    run = RunDir.of(run_dir)
    units = shard.plan(run, params)
    t, c = time.perf_counter(), time.process_time()
    batches = [(u, b) for u in units for b in shard._documents(u, params.batch_docs)]
    read_s = (time.perf_counter() - t, time.process_time() - c)
    tok = shard.load_tokenizer(run.stage("vocab"))
    ids_type = shard.token_type(tok.get_vocab_size(with_added_tokens=True))
    t, c = time.perf_counter(), time.process_time()
    tables = []
    for u, b in batches:
        ids, n = shard.tokenize(
            tok,
            b.column("text"),
            tok.token_to_id(shard.lang_tag(u.params["lang"])),
            tok.token_to_id(shard.EOS),
            ids_type,
        )
        tables.append(
            (
                u,
                pa.table(
                    {
                        "input_ids": ids,
                        "n_tokens": n,
                        "lang": pa.repeat(pa.scalar(u.params["lang"]), len(n)),
                        "doc_id": b.column("doc_id"),
                    },
                    schema=shard.shard_schema(ids_type),
                ),
            )
        )
    tok_s = (time.perf_counter() - t, time.process_time() - c)
    out = Location.of(out_dir)
    out.makedirs()
    t, c = time.perf_counter(), time.process_time()
    writers = {}
    for u, table in tables:
        if u.name not in writers:
            writers[u.name] = FileWriter(
                out.child(u.name.replace("/", "-") + ".parquet"),
                shard.shard_schema(ids_type),
                weight=("n_tokens", params.row_group_tokens),
            )
        writers[u.name].write(table)
    for w in writers.values():
        w.close()
    write_s = (time.perf_counter() - t, time.process_time() - c)
    return {"read": read_s, "tokenise": tok_s, "write": write_s}


def datatrove(
    python: str, src: str, tok_path: str, work: str, batch_docs: int, tasks: int
) -> tuple[tuple[float, float], int] | str:
    if not python:
        return (
            "skipped: no --datatrove-python given "
            "(make one: python3 -m venv /tmp/venv-dt && /tmp/venv-dt/bin/pip install datatrove)"
        )
    if not Path(python).exists():
        return f"skipped: {python} does not exist"
    out, logs = Path(work, "dt-out"), Path(work, "dt-logs")
    proc = subprocess.run(
        [python, "-c", DT_SCRIPT, src, tok_path, str(out), str(logs), str(batch_docs), str(tasks)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        return f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"
    seconds = tuple(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])
    token_bytes = sum(p.stat().st_size for p in out.rglob("*.ds"))
    return seconds, token_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ingest-run", default="/tmp/run1", help="run directory with a committed ingest stage")
    ap.add_argument("--limit", type=int, default=200_000, help="documents to use, spread over the corpus (0: all)")
    ap.add_argument("--tokenizer", help="a tokenizer.json to use instead of training one")
    ap.add_argument("--vocab-size", type=int, default=16_000)
    ap.add_argument("--batch-docs", type=int, default=8192)
    ap.add_argument("--datatrove-python", help="python of a venv with datatrove (e.g. /tmp/venv-dt/bin/python)")
    ap.add_argument("--datatrove-tasks", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="runs of each contender, interleaved; the best counts")
    ap.add_argument("--workdir", help="where to write (default: a temporary folder, removed afterwards)")
    args = ap.parse_args()

    work = args.workdir or tempfile.mkdtemp(prefix="bench-shard-")
    try:
        df = load_documents(args.ingest_run, args.limit)
        langs = sorted(df["lang"].unique().to_list())
        t = time.perf_counter()
        if args.tokenizer:
            tok_json = Path(args.tokenizer).read_text(encoding="utf-8")
        else:
            tok_json = train_tokenizer(df, args.vocab_size, langs).to_str()
        print(
            f"{df.height} documents, {df['text'].str.len_bytes().sum() / 1e6:.1f} MB of text, {len(langs)} languages; "
            f"tokenizer {'loaded' if args.tokenizer else 'trained'} in {time.perf_counter() - t:.1f}s"
        )
        run_dir = str(Path(work, "run"))
        write_inputs(run_dir, df, tok_json, langs)
        tok = shard.load_tokenizer(RunDir.of(run_dir).stage("vocab"))
        tok_path = RunDir.of(run_dir).stage("vocab").child(shard.TOKENIZER_FILE).path
        params = shard.ShardParams(batch_docs=args.batch_docs)
        workers = int(os.environ.get("XLMFLOW_WORKERS", os.cpu_count() or 2))
        print(
            f"vocab {tok.get_vocab_size()}, {os.cpu_count()} CPUs, {workers} shard workers, "
            f"batches of {args.batch_docs}"
        )

        texts = df["text"].to_list()
        del df
        # the machine may be shared: interleave the contenders and keep each one's best of --repeat,
        # by wall clock and by CPU time (all threads), which contention inflates far less
        wall: dict[str, float] = {}
        cpu: dict[str, float] = {}
        dt_result: tuple[tuple[float, float], int] | str = "not run"

        def keep(name: str, seconds: tuple[float, float]) -> None:
            wall[name] = min(seconds[0], wall.get(name, float("inf")))
            cpu[name] = min(seconds[1], cpu.get(name, float("inf")))

        for _ in range(args.repeat):
            s, bare_tokens = bare(texts, tok, args.batch_docs, fast=False)
            keep("bare encode_batch", s)
            keep("bare encode_batch_fast", bare(texts, tok, args.batch_docs, fast=True)[0])
            shutil.rmtree(RunDir.of(run_dir).stage("shard").path, ignore_errors=True)
            s, our_tokens, our_docs = ours_whole(run_dir, params, workers)
            keep("ours: whole stage", s)
            for name, s in ours_phases(run_dir, params, str(Path(work, "phases"))).items():
                keep(f"ours: {name} only", s)
            dt_result = datatrove(
                args.datatrove_python,
                RunDir.of(run_dir).stage("langid").child("clean").path,
                tok_path,
                work,
                args.batch_docs,
                args.datatrove_tasks,
            )
            shutil.rmtree(Path(work, "dt-out"), ignore_errors=True)
            shutil.rmtree(Path(work, "dt-logs"), ignore_errors=True)
            if not isinstance(dt_result, str):
                keep("datatrove DocumentTokenizer", dt_result[0])
                dt_tokens = dt_result[1] // (2 if tok.get_vocab_size() <= 65536 else 4) - our_docs

        tokens = {name: bare_tokens if name.startswith("bare") else our_tokens for name in wall}
        if "datatrove DocumentTokenizer" in wall:
            tokens["datatrove DocumentTokenizer"] = dt_tokens
        print(
            f"\nbest of {args.repeat} interleaved runs; content tokens: bare {bare_tokens}, ours {our_tokens} "
            f"(+{2 * our_docs} tags/eos)"
            + (f", datatrove {dt_tokens} (+{our_docs} eos)" if "datatrove DocumentTokenizer" in wall else "")
        )
        print(
            f"{'':28s} {'wall tok/s':>11s} {'wall s':>7s} {'x bare':>7s} {'x fast':>7s} | "
            f"{'CPU tok/s':>10s} {'CPU s':>7s} {'x bare':>7s} {'x fast':>7s}"
        )
        for name in wall:
            w, c = tokens[name] / wall[name], tokens[name] / cpu[name]
            bw, bc = bare_tokens / wall["bare encode_batch"], bare_tokens / cpu["bare encode_batch"]
            fw, fc = bare_tokens / wall["bare encode_batch_fast"], bare_tokens / cpu["bare encode_batch_fast"]
            print(
                f"{name:28s} {w / 1e6:10.3f}M {wall[name]:7.2f} {w / bw:7.2f} {w / fw:7.2f} | "
                f"{c / 1e6:9.3f}M {cpu[name]:7.2f} {c / bc:7.2f} {c / fc:7.2f}"
            )
        if "datatrove DocumentTokenizer" in wall:
            dt = "datatrove DocumentTokenizer"
            ratio_wall = our_tokens / wall["ours: whole stage"] / (dt_tokens / wall[dt])
            ratio_cpu = our_tokens / cpu["ours: whole stage"] / (dt_tokens / cpu[dt])
            print(f"ours / datatrove, whole: {ratio_wall:.2f}x wall, {ratio_cpu:.2f}x CPU")
        else:
            print(f"datatrove DocumentTokenizer: {dt_result}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

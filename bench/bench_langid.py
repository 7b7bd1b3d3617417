"""LID throughput of the langid stage's scoring unit against bare batch ``model.predict``, same texts, one run.

Stage: ``score_unit`` end to end (read the ingested Parquet parts, predict top-k,
write the scores Parquet, commit; quality signals are a unit of their own). Bare: ``model.predict(list, k)``
of the same fastText binding on the same texts, already in memory (newlines replaced,
the only preparation predict needs). Documents: the committed demo ingest run
(``--ingest-run``, default /tmp/run1) or, if absent, an ingest of ``data/demo`` first.

    /tmp/venv1/bin/python bench/bench_langid.py [--ingest-run DIR] [--units N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import polars as pl

from xlmflow import PACKAGE_ROOT
from xlmflow.storage import Location, RunDir, read_table
from xlmflow.tasks import ingest, langid
from xlmflow.tasks.common.runtime import commit_stage
from xlmflow.tasks.langid import lid


def ingested_run(src: str | None, work: str) -> str:
    run = os.path.join(work, "run")
    if src and os.path.exists(os.path.join(src, "ingest", "_manifest.json")):
        shutil.copytree(os.path.join(src, "ingest"), os.path.join(run, "ingest"))
        return run
    params = ingest.IngestParams(
        sources=[ingest.Source(path=str(PACKAGE_ROOT / "data" / "demo" / "*.jsonl.zst"), format="jsonl")]
    )
    refs = [ingest.ingest_unit(u) for u in ingest.plan(RunDir.of(run), params)]
    commit_stage(ingest.stage_for(RunDir.of(run), params, refs), refs)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ingest-run", default="/tmp/run1")
    ap.add_argument("--units", type=int, default=0, help="score only the first N ingest units (0 = all)")
    ap.add_argument("--repeat", type=int, default=2, help="best of N timings each")
    args = ap.parse_args()
    params = langid.LangidParams()
    with tempfile.TemporaryDirectory() as work:
        run = ingested_run(args.ingest_run, work)
        units, _, _ = langid.plan(RunDir.of(run), params)
        units = units[: args.units or None]
        texts = pl.concat(
            [pl.from_arrow(read_table(Location(docs.uri), ["text"])) for u in units for _, docs in u.each("docs")]
        )["text"]
        n = len(texts)
        model = lid.load_model(lid.model_file(params.model_path))
        lines = texts.str.replace_all("\n", " ", literal=True).to_list()

        def bare():
            model.predict(lines, k=params.top_k)

        def stage():
            shutil.rmtree(os.path.join(run, "langid"), ignore_errors=True)
            for u in units:
                langid.score_unit(u)

        bare()  # warm up (model load, page cache)
        t_bare = min(_time(bare) for _ in range(args.repeat))
        t_stage = min(_time(stage) for _ in range(args.repeat))
        print(f"documents: {n} in {len(units)} ingest units, {texts.str.len_chars().sum() / 1e6:.1f} M characters")
        print(f"bare model.predict(k={params.top_k}):      {n / t_bare:10,.0f} docs/s  ({t_bare:.2f} s)")
        print(f"stage score_unit (read+LID+write+commit): {n / t_stage:10,.0f} docs/s  ({t_stage:.2f} s)")
        print(f"stage / bare: {t_bare / t_stage:.0%}  (goal >= 70%)")


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()

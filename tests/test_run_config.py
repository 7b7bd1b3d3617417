"""A run directory records its configuration (``<run>/xlmflow.toml``) and every later command starts from it:
a stage run alone never falls back to the demo's settings on a user's run."""

import json
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from test_langid import EN

from xlmflow import PACKAGE_ROOT
from xlmflow.flows.cli import build_parser, config_from, main
from xlmflow.flows.config import PipelineConfig
from xlmflow.flows.registry import BY_NAME
from xlmflow.storage import RunDir, read_record
from xlmflow.tasks.common.progress import PlainProgress


def eval_copies(n: int) -> list[str]:
    """Exact copies of the demo's German eval segments: documents the demo's holdout would reject."""
    table = pq.read_table(PACKAGE_ROOT / "data/parallel/debian-handbook.eval.parquet", columns=["de"])
    return [t for t in table.column("de").to_pylist() if len(t) > 120][:n]


def test_new_run_directories_take_the_demo_only_when_nothing_says_user(tmp_path):
    run = str(tmp_path / "run")
    assert PipelineConfig.for_run(run) == PipelineConfig.demo()
    assert PipelineConfig.for_run(run, user=True) == PipelineConfig()
    (tmp_path / "u.toml").write_text("[langid]\nthreshold = 0.6\n")
    cfg = PipelineConfig.for_run(run, tmp_path / "u.toml")
    assert cfg.langid.threshold == 0.6 and cfg.parallel == [] and cfg.ingest.sources == []


def test_the_record_round_trips_and_a_file_is_laid_over_it(tmp_path):
    run = str(tmp_path / "run")
    for cfg in (PipelineConfig.demo(), PipelineConfig.model_validate({"ingest": {"sources": [{"path": "/c"}]}})):
        assert cfg.record(run) and not cfg.record(run)  # written, then already current: not rewritten
        assert PipelineConfig.for_run(run) == cfg
    (tmp_path / "more.toml").write_text("[langid]\nthreshold = 0.7\n[vocab]\nvocab_size = 3000\n")
    merged = PipelineConfig.for_run(run, tmp_path / "more.toml")
    assert merged.ingest.sources[0].path == "/c"  # kept from the record
    assert (merged.langid.threshold, merged.vocab.vocab_size) == (0.7, 3000)
    assert merged.langid.top_k == cfg.langid.top_k


def test_a_stage_section_recorded_leaves_the_pipeline_sets_to_the_pipeline():
    cfg, vocab = PipelineConfig.demo(), BY_NAME["vocab"]
    assert vocab.section(cfg.stage_params("vocab"), cfg.parallel)["parallel"] == []  # a later --parallel reaches it
    own = cfg.stage_params("vocab").model_copy(update={"parallel": ["/mine"]})
    assert vocab.section(own, cfg.parallel)["parallel"] == ["/mine"]


def test_a_stage_flow_started_without_parameters_reads_the_record(tmp_path):
    """What a deployment run as it is, or a Python caller, gets: the record's section, the demo's only for a
    new run directory; parameters given are recorded."""
    langid = BY_NAME["langid"]
    assert langid.settle(RunDir.of(str(tmp_path / "new")), None) == PipelineConfig.demo().stage_params("langid")
    user = RunDir.of(str(tmp_path / "u"))
    PipelineConfig.model_validate({"langid": {"threshold": 0.8}}).record(str(user.root))
    params = langid.settle(user, None)
    assert params.threshold == 0.8 and params.holdout == []
    langid.settle(user, params.model_copy(update={"threshold": 0.6}))
    assert read_record(user)["langid"]["threshold"] == 0.6 and "package:" not in str(read_record(user))


def test_a_stage_run_alone_keeps_the_users_configuration(prefect_api, tmp_path, capsys):
    corpus = tmp_path / "mine.jsonl"
    held = eval_copies(8)
    corpus.write_bytes(b"".join(orjson.dumps({"text": t}) + b"\n" for t in EN + held))
    (tmp_path / "u.toml").write_text("[langid]\nmin_lang_docs = 1\n")
    run = str(tmp_path / "u")
    assert main(["ingest", "--run-dir", run, "--config", str(tmp_path / "u.toml"), "--source", str(corpus)]) == 0
    out = capsys.readouterr().out  # not a terminal: one plain line per event
    assert "ingest: started" in out and "ingest: finished in" in out and "ingest-file: 1 units" in out

    assert main(["langid", "--run-dir", run, "--quiet"]) == 0  # no --source, no --config: the run's own settings
    stats = json.loads((Path(run) / "langid" / "stats.json").read_text())
    assert stats["rejected_by_reason"].get("eval_holdout", 0) == 0
    assert stats["documents"]["scored"] == len(EN) + len(held)
    record = (Path(run) / "xlmflow.toml").read_text()
    assert "package:" not in record and "data/parallel" not in record  # a user run names no demo path

    assert main(["langid", "--run-dir", run, "--quiet", "--threshold", "0.7"]) == 0
    vocab_args = build_parser().parse_args(["vocab", "--run-dir", run])
    assert config_from(vocab_args).langid.threshold == 0.7 == read_record(RunDir.of(run))["langid"]["threshold"]
    capsys.readouterr()
    assert main(["status", "--run-dir", run]) == 0
    assert "stale" not in capsys.readouterr().out.split("vocab")[0]  # ingest and langid current, as recorded
    (tmp_path / "strict.toml").write_text("[langid]\nthreshold = 0.9\n")
    assert main(["status", "--run-dir", run, "--config", str(tmp_path / "strict.toml")]) == 0
    assert "why: params changed (langid.threshold)" in capsys.readouterr().out

    # the same documents under the demo's parallel sets, asked for: the holdout applies (the test can fail)
    assert main(["langid", "--run-dir", run, "--quiet", "--parallel", "package:data/parallel"]) == 0
    stats = json.loads((Path(run) / "langid" / "stats.json").read_text())
    assert stats["rejected_by_reason"]["eval_holdout"] == len(held)


def test_config_show_prints_the_record(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["config", "show", "--run-dir", run]) == 0
    assert "records no configuration yet" in capsys.readouterr().out  # a new run directory: the demo's would be
    PipelineConfig.model_validate({"langid": {"threshold": 0.65}}).record(run)
    assert main(["config", "show", "--run-dir", run]) == 0
    out = capsys.readouterr().out
    assert "threshold = 0.65" in out and "records no configuration" not in out and "package:" not in out


def test_plain_progress_writes_one_line_per_event(tmp_path):
    log = tmp_path / "log.txt"
    with open(log, "w") as f, PlainProgress(f, every=10) as shown:
        shown.stage("train", "started")
        shown.note("train: resumed from checkpoint step-0000100 at step 100")
        for step in range(100, 131, 5):
            shown.training(step, 130, 5.0 - step / 100, 1234.0)
        shown.units("langid-score", 2, 0)
        shown.unit_done("langid-score", 10)
        shown.unit_done("langid-score", 5)
        shown.units("train-model", 1, 0)
        shown.unit_done("train-model", 0)
        shown.stage("train", "finished", 2.5, 42)
    lines = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    assert lines == [
        "train: started",
        "train: resumed from checkpoint step-0000100 at step 100",
        "train: step 100/130, loss 4.0000, 1,234 tokens/s",
        "train: step 110/130, loss 3.9000, 1,234 tokens/s",
        "train: step 120/130, loss 3.8000, 1,234 tokens/s",
        "train: step 130/130, loss 3.7000, 1,234 tokens/s",
        "langid-score: 2 units, 0 current, 2 to run",
        "langid-score: 2 units done, 15 rows in " + lines[7].split(" rows in ")[1],
        "train-model: 1 units, 0 current, 1 to run",
        "train-model: 1 units done in " + lines[9].split(" done in ")[1],
        "train: finished in 2.5 s, 42 rows",
    ]


@pytest.mark.parametrize("bad", ["[langid]\nthreshold = 'x'\n", "[langid\n"])
def test_a_broken_record_is_a_clear_error(tmp_path, bad):
    run = tmp_path / "run"
    run.mkdir()
    (run / "xlmflow.toml").write_text(bad)
    with pytest.raises(ValueError, match="xlmflow.toml|langid.threshold"):
        PipelineConfig.for_run(str(run))


def test_plain_progress_lines_from_threads_never_run_together():
    """Units run on threads and each reports its progress: every line must stay whole (a log read by tail -f,
    grep or a CI viewer). Before, print wrote a line's text and its newline apart, and two lines could run
    together ("1 to run09:44:46 evaluate-set: ..."). The sink here lets other threads run inside each write, as
    a file's write does when it reaches the OS."""
    import io
    import re
    import threading
    import time

    from xlmflow.tasks.common.progress import PlainProgress

    class SlowFile(io.StringIO):
        def write(self, text):
            time.sleep(0)  # releases the GIL: another thread may write now
            return super().write(text)

    out = SlowFile()
    plain = PlainProgress(out=out)
    threads = [threading.Thread(target=lambda k=k: [plain.note(f"unit {k}-{i}") for i in range(200)]) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 4 * 200 + 1
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d unit \d-\d+", line) for line in lines[:-1])


def test_the_reference_cpu_recipe_is_a_valid_configuration_of_the_demo_corpus(tmp_path):
    """data/reference-cpu.toml (bench/RESULTS.md's reference recipe) validates and plans what it says."""
    config = PipelineConfig.for_run(str(tmp_path / "run"), PACKAGE_ROOT / "data" / "reference-cpu.toml")
    assert config.ingest.sources[0].path == "package:data/demo/*.jsonl.zst" and config.parallel
    assert config.vocab.vocab_size == 4000
    t = config.train.training_resolved()
    assert config.train.model_fields_resolved()["n_embd"] == 256 and t["max_steps"] == 3600
    assert t["parallel_share"] == 0.25 and config.train.parallel_schedule == "late"

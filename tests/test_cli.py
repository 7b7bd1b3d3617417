"""CLI flags and the README's TOML example become the PipelineConfig the flows get (no Prefect needed)."""

import re
from pathlib import Path

import pytest

from xlmflow.flows.cli import build_parser, config_from
from xlmflow.flows.config import PipelineConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def test_flags_override_the_config_file(tmp_path):
    toml = tmp_path / "x.toml"
    toml.write_text('[langid]\nthreshold = 0.6\nkeep_langs = ["de"]\n[vocab]\nalpha = 0.5\n')
    args = build_parser().parse_args(
        [
            "run",
            "--config",
            str(toml),
            "--threshold",
            "0.7",
            "--lang-threshold",
            "hr=0.3",
            "--keep-langs",
            "en, fr",
            "--vocab-size",
            "2000",
            "--valid-fraction",
            "0.05",
            "--no-near-dedup",
            "--source",
            "a.jsonl",
            "--text-field",
            "body",
        ]
    )
    cfg = config_from(args)
    assert cfg.langid.threshold == 0.7 and cfg.langid.thresholds["hr"] == 0.3 and cfg.langid.keep_langs == ["en", "fr"]
    assert cfg.langid.dedup.near is False and cfg.vocab.vocab_size == 2000 and cfg.vocab.alpha == 0.5
    assert cfg.shard.valid_fraction == 0.05
    assert [(s.path, s.text_field) for s in cfg.ingest.sources] == [("a.jsonl", "body")]


def test_stage_commands_take_only_their_flags():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ingest", "--vocab-size", "10"])
    assert build_parser().parse_args(["vocab", "--vocab-size", "10"]).vocab_size == 10


def test_bad_values_are_errors_not_silently_ignored(tmp_path):
    with pytest.raises(ValueError, match="LANG=PROBABILITY"):
        config_from(build_parser().parse_args(["langid", "--lang-threshold", "hr"]))
    with pytest.raises(ValueError):  # pydantic: out of range
        config_from(build_parser().parse_args(["shard", "--valid-fraction", "0.9"]))
    for typo in (
        "[vocabulary]\nvocab_size = 5\n",
        "[langid]\nthreshhold = 0.6\n",
        "[langid.quality]\nmin_wrods = 2\n",
        '[[ingest.sources]]\npath = "x"\ntext_feild = "body"\n',
    ):
        (tmp_path / "typo.toml").write_text(typo)
        with pytest.raises(ValueError, match="Extra inputs are not permitted"):  # a misspelt option is refused
            PipelineConfig.load(tmp_path / "typo.toml")


def test_readme_toml_example_is_a_valid_config(tmp_path):
    block = re.search(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), re.S).group(1)
    (tmp_path / "readme.toml").write_text(block)
    cfg = PipelineConfig.load(tmp_path / "readme.toml")
    assert cfg.ingest.sources[0].text_field == "content" and cfg.vocab.vocab_size == 32000


def test_status_says_why_a_stage_is_stale():
    from xlmflow.storage import Manifest
    from xlmflow.tasks.common.runtime import stale_reasons

    m = Manifest(
        stage="vocab",
        fingerprint="f",
        code_version="c1",
        params={"vocab_size": 1000, "alpha": 0.3, "model": {"n_layer": 2, "vocab_size": 1000}, "src": [{"fmt": "a"}]},
        upstream={"langid/stage": "L1", "units/x": "u"},
    )
    now = {"vocab_size": 1000, "alpha": 0.3, "model": {"n_layer": 2}, "src": [{"fmt": "a", "path": "/x"}]}
    assert stale_reasons(m, "c1", now, {"langid": "L1"}) == []  # unrecorded keys (path) are not compared
    assert stale_reasons(m, "c1", now | {"block_size": None, "alpha": None}, {"langid": "L1"}) == []
    assert stale_reasons(m, "c2", now | {"alpha": 0.5}, {"langid": "L2"}) == [
        "code changed",
        "params changed (alpha)",
        "upstream langid changed",
    ]
    assert stale_reasons(m, "c1", now | {"model": {"n_layer": 3}}, {"langid": None}) == [
        "params changed (model)",
        "upstream langid missing",
    ]
    assert stale_reasons(m, "c1", now | {"src": []}, {"langid": "L1"}) == ["params changed (src)"]

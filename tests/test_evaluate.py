"""The evaluate stage with a tiny trained model: metrics, report, plots, cached units, user sets, bad sets."""

import json
import logging
import shutil
from pathlib import Path

import polars as pl
import pytest
from test_train import PARAMS, build_inputs

from xlmflow.storage import Location, RunDir, load_output
from xlmflow.tasks import evaluate, train
from xlmflow.tasks.common.parallel_sets import read_set
from xlmflow.tasks.evaluate import EvalParams

EN = ["the cat sat on a mat", "the dog ran far away", "a cat and a dog", "the mat and the home", "far from home"]
FR = ["le chat est sur le tapis", "le chien court loin", "un chat et un chien", "le tapis de la maison", "loin de la"]
SMALL = EvalParams(
    max_docs=5, max_segments=50, probe_rows=20, probe_min_class_rows=1, prompts=1, gen_tokens=4, translate_segments=2
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    build_inputs(str(run_dir))
    train.train_unit(train.plan(RunDir.of(str(run_dir)), PARAMS))
    sets = tmp_path_factory.mktemp("sets")
    ids = [f"text/swriter/a{i}.xhp#1" if i % 2 else f"text/scalc/b{i}.xhp#1" for i in range(len(EN))]
    pl.DataFrame({"id": ids, "en": EN, "fr": FR}).write_parquet(sets / "toy.eval.parquet")
    pl.DataFrame({"id": ids, "en": EN, "fr": FR}).write_parquet(sets / "toy.train.parquet")
    return run_dir, sets


def run_stage(run_dir, params):
    run = RunDir.of(str(run_dir))
    lms, sets = evaluate.plan(run, params)
    refs = [evaluate.lm_unit(u) for u in lms] + [evaluate.set_unit(u) for u in sets]
    evaluate.commit_evaluation(evaluate.stage_for(run, params, refs), refs)
    return json.loads((Path(run_dir) / "evaluate" / "metrics.json").read_text())


def test_metrics_report_and_plots(trained, tmp_path):
    run_dir, sets = trained
    user = tmp_path / "mine.tsv"
    rows = ["en\tfr\tnotes"] + [f"{e}\t{f}\tx" for e, f in zip(EN, FR)] + ["\tseul\tx", "same\tsame\tx"]
    user.write_text("\n".join(rows) + "\n")
    m = run_stage(run_dir, SMALL.model_copy(update={"parallel": [str(sets), str(user)]}))
    langs = ["en", "fr", "zh"]
    assert sorted(m["bits_per_byte"]) == langs and all(0 < v < 20 for v in m["bits_per_byte"].values())
    assert sorted(m["generation_language_rate"]) == langs
    assert set(m["retrieval"]) == {"toy", "mine"}
    r = m["retrieval"]["mine"]
    assert r["chance"] == pytest.approx(1 / r["rows"]["en-fr"]) and 0 <= r["acc_at_1"]["en-fr"] <= 1
    assert r["dropped"]["en-fr"]["empty"] == 1 and r["dropped"]["en-fr"]["identical"] == 1
    assert 0 <= r["best_layer"] <= 1 and len(r["per_layer_mean"]) == 2  # embeddings + one block
    assert "toy" in m["chrf"] and "toy/en-fr" in m["bleu"] and "mine" in m["chrf"]
    assert set(m["contamination"]["toy"]["per_language"]) == {"en", "fr"}
    t = m["transfer"]["toy"]
    assert set(t["accuracy"]) == {"en", "fr"} and t["classes"] == 2
    folder = Path(run_dir) / "evaluate"
    report = (folder / "report.md").read_text()
    for png in ("bits_per_byte.png", "loss_curves.png", "retrieval_toy.png", "retrieval_mine.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in report
    manifest = load_output(RunDir.of(str(run_dir)).stage("evaluate"), "evaluate")
    assert {"metrics.json", "report.md", "bits_per_byte.png"} <= {f.path for f in manifest.files}


def test_adding_a_set_runs_only_its_units(trained, tmp_path, caplog):
    run_dir, sets = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    run_stage(copy, SMALL.model_copy(update={"parallel": [str(sets)]}))
    extra = tmp_path / "extra.parquet"
    pl.DataFrame({"en": EN, "fr": FR}).write_parquet(extra)
    caplog.set_level(logging.INFO, logger="xlmflow")
    m = run_stage(copy, SMALL.model_copy(update={"parallel": [str(sets), str(extra)]}))
    log = [line for line in caplog.text.splitlines() if "evaluate/" in line]
    built = [line for line in log if "committed" in line and "nothing to do" not in line]
    assert sum("nothing to do" in line for line in log) == 2  # the model's lm unit and the toy set's unit
    assert any("train--extra" in line for line in built)
    assert not any("train--toy" in line or "evaluate/train:" in line for line in built), built
    assert set(m["retrieval"]) == {"toy", "extra"}


def test_two_models_side_by_side(trained, tmp_path):
    run_dir, sets = trained
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    shutil.rmtree(other / "train")
    train.train_unit(train.plan(RunDir.of(str(other)), PARAMS.model_copy(update={"align": "tie", "max_steps": 4})))
    params = SMALL.model_copy(update={"parallel": [str(sets)], "models": [str(run_dir), str(other)]})
    m = run_stage(run_dir, params)
    assert sorted(m["models"]) == ["other", "run"]
    cmp = m["comparison"]["bits_per_byte"]["fr"]
    assert cmp["other-run"] == pytest.approx(cmp["other"] - cmp["run"])
    assert m["bits_per_byte"] == m["models"]["run"]["bits_per_byte"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.tsv", None, "no such file"),
        ("set.csv", "en,fr\na,b\n", "not a Parquet or TSV file"),
        ("nolang.tsv", "left\tright\na\tb\nc\td\n", "no language column"),
        ("ragged.tsv", "en\tfr\na\tb\nc\td\te\n", "unreadable"),
        ("badcode.tsv", "en\teng\na\tb\nc\td\n", "'eng' is not an ISO 639-1 language code"),
        ("short.tsv", "en\tfr\na\tb\n", "1 row"),
    ],
)
def test_malformed_sets_are_errors_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as e:
        read_set(Location.of(str(path)), min_rows=2)
    assert name in str(e.value)


def test_a_set_sharing_fewer_than_two_languages_with_the_model_is_an_error(trained, tmp_path):
    run_dir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    odd = tmp_path / "odd.tsv"
    odd.write_text("en\tsw\na\tb\nc\td\n")
    with pytest.raises(ValueError, match=r"odd.tsv: shares 1 language\(s\) with model train"):
        run_stage(copy, SMALL.model_copy(update={"parallel": [str(odd)]}))

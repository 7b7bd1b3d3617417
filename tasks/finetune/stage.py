"""Fine-tuning: the train stage's model -> a translation model in ``<run>/finetune/translate``.

One unit per fine-tuned model (today: ``translate``), fingerprinted by the pretrained model's, the shard stage's
translation-pair files (the train parts of the parallel sets: eval parts are never read), the parameters, this code
and the libraries' versions. As for training, the work runs in a subprocess (:mod:`.loop`), its checkpoints outside
the stage folder, keyed by the unit's fingerprint (``<run>/.checkpoints/finetune/<fingerprint>``), so a killed or
retried attempt resumes and a changed configuration starts afresh; only this process commits.

The committed folder loads with plain transformers (``trust_remote_code``: its ``modeling_xlmflow.py``), and
translates with the prompt it was tuned on::

    model = transformers.AutoModelForCausalLM.from_pretrained("runs/demo/finetune/translate", trust_remote_code=True)
    tok = transformers.AutoTokenizer.from_pretrained("runs/demo/finetune/translate")
    ids = tok("<lang:en>Open the file<|endoftext|><lang:fr>", return_tensors="pt").input_ids
    print(tok.decode(model.generate(ids, max_new_tokens=32)[0, ids.shape[1]:], skip_special_tokens=True))

(``xlmflow translate --model runs/demo/finetune/translate --src en --tgt fr`` does it for a file of lines.)
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from dataclasses import asdict, replace
from typing import Any

import pyarrow.parquet as pq

from xlmflow.storage import Location, RunDir, code_version, file_sha256, load_output
from xlmflow.storage.shards import list_pairs
from xlmflow.tasks.common import labelled_sets
from xlmflow.tasks.common.parallel_sets import PIVOT, labelled_rows, parallel_files, read_set, set_name
from xlmflow.tasks.common.runtime import Input, Ref, Unit, commit_stage, logger, plain_step, stage_unit, step
from xlmflow.tasks.common.specials import TOKENIZER_FILE
from xlmflow.tasks.finetune import loop as finetune_loop
from xlmflow.tasks.finetune.params import FinetuneParams
from xlmflow.tasks.train.stage import launch_and_commit, launch_command

PACKAGE = "xlmflow.tasks.finetune"
STAGE = "finetune"
TRAIN, SHARD = "train", "shard"
READS = (SHARD, TRAIN)
TRANSLATE, CLASSIFY = "translate", "classify"
#: speed and bookkeeping, not the weights: kept out of the fingerprint
OPTIONS = ("log_every", "checkpoint_every", "keep_checkpoints")


def model_config(run: RunDir) -> dict[str, Any]:
    """The pretrained model's config.json (committed by the train stage)."""
    with run.stage(TRAIN).child("config.json").open("rb") as f:
        return json.loads(f.read())


def directions(params: FinetuneParams, langs: list[str], paired: set[str]) -> list[str]:
    """The configured directions, or English to and from every other language of the model that the pair files
    hold; every direction's languages must be the model's."""
    if params.directions:
        for d in params.directions:
            unknown = [x for x in d.split("-") if x not in langs]
            if unknown:
                raise ValueError(
                    f"finetune.directions {d!r}: the model has no language {', '.join(unknown)} "
                    f"(its languages: {', '.join(langs)})"
                )
        return list(params.directions)
    if PIVOT not in langs or PIVOT not in paired:
        raise ValueError(f"finetune: no {PIVOT} in the model's languages and the pairs; set finetune.directions")
    others = [x for x in langs if x != PIVOT and x in paired]
    return [f"{a}-{b}" for x in others for a, b in ((PIVOT, x), (x, PIVOT))]


def plan(run: RunDir, params: FinetuneParams) -> list[Unit]:
    """The translation unit and one classification unit per parallel set (none of a kind that is off, or that has
    no data: said in the log); every unit needs the committed pretrained model."""
    train = load_output(run.stage(TRAIN), TRAIN)
    config = model_config(run)
    if params.max_len and params.max_len > config["n_positions"]:
        raise ValueError(
            f"finetune.max_len {params.max_len} is longer than the model's context (n_positions "
            f"{config['n_positions']}): an example must fit in it"
        )
    model = {TRAIN: Input(run.stage(TRAIN).uri, train.fingerprint)}
    shared = params.model_dump(include={"batch_size", "lr", "warmup_steps", "min_lr_ratio", "weight_decay"})
    shared |= params.model_dump(include={"grad_clip", "seed", "num_processes", "precision"})
    shared["max_len"] = params.max_len or config["n_positions"]
    shared["libraries"] = {name: importlib.metadata.version(name) for name in ("torch", "transformers", "accelerate")}
    units = []
    if params.translate:
        units += _translate_unit(run, params, config, model, shared)
    if params.classify:
        units += _classify_units(run, params, config, model, shared)
    options = params.model_dump(include=set(OPTIONS))
    # the units run at once (flows/finetune.py): the cores are shared out, so no process spins threads on another's
    threads = max(1, (os.cpu_count() or 1) // len(units)) if len(units) > 1 else None
    return [
        replace(
            u,
            options=u.options
            | options
            | {"checkpoints": run.checkpoints(STAGE, u.fingerprint).path, "threads": threads},
        )
        for u in units
    ]


def _translate_unit(run: RunDir, params: FinetuneParams, config: dict, model: dict, shared: dict) -> list[Unit]:
    shard_loc = run.stage(SHARD)
    load_output(shard_loc, SHARD)
    pairs = list_pairs(shard_loc)
    if not pairs:  # a user's corpus without parallel sets: nothing to fine-tune on, said, not an error
        logger().warning(
            "finetune: %s has no translation pairs (no parallel set with a train part): no translation model; "
            "give parallel sets with --parallel to fine-tune one",
            shard_loc,
        )
        return []
    paired = {c for p in pairs for c in pq.read_schema(Location(p.uri).path).names}
    task = {"task": TRANSLATE, "max_steps": params.max_steps, "directions": directions(params, config["langs"], paired)}
    return [
        Unit(
            stage=STAGE,
            name=TRANSLATE,
            out=run.stage(STAGE).child(TRANSLATE).uri,
            code_version=code_version(PACKAGE),
            params=shared | task,
            inputs={"model": model, "pairs": {p.path: Input(p.uri, p.sha256) for p in pairs}},
            options={"pairs": [asdict(p) for p in pairs]},
        )
    ]


def _classify_units(run: RunDir, params: FinetuneParams, config: dict, model: dict, shared: dict) -> list[Unit]:
    """One per parallel set whose train part has ids, and one per labelled set (:mod:`..common.labelled_sets`),
    with ``classify_lang`` train rows of two classes or more."""
    lang, files = params.classify_lang, parallel_files(params.parallel, ("train",))
    labelled = [(True, Location.of(path)) for path in params.labelled]
    if (files or labelled) and lang not in config["langs"]:
        raise ValueError(
            f"finetune.classify_lang {lang!r} is not a language of the model ({', '.join(config['langs'])}): set "
            "it to one of them, or turn classification off (--no-classify)"
        )
    units, names = [], set()
    for is_table, loc in [(False, loc) for _, loc in files] + labelled:
        name = set_name(loc)
        if params.classify_sets and name not in params.classify_sets:
            continue
        if name in names:
            raise ValueError(f"finetune: two sets are named {name!r} ({loc}); rename one (its classifier's folder)")
        names.add(name)
        if is_table:
            rows = labelled_sets.train_rows(labelled_sets.read_labelled(loc), lang, params.classify_min_rows)
        else:
            rows = labelled_rows(read_set(loc), lang, params.classify_min_rows)
        if rows["class"].n_unique() < 2:
            logger().warning("finetune: %s has fewer than two classes of %s train rows: no classifier", loc, lang)
            continue
        task = {"task": CLASSIFY, "set": name, "lang": lang, "min_rows": params.classify_min_rows}
        task |= {"labelled": True} if is_table else {}
        units.append(
            Unit(
                stage=STAGE,
                name=f"{CLASSIFY}-{name}",
                out=run.stage(STAGE).child(f"{CLASSIFY}-{name}").uri,
                code_version=code_version(PACKAGE),
                params=shared | task | {"max_steps": params.classify_steps},
                inputs={"model": model, "set": {loc.name: Input(loc.uri, file_sha256(loc.fs, loc.path)[0])}},
            )
        )
    return units


def spec_of(unit: Unit) -> dict[str, Any]:
    """What the fine-tuning process reads (spec.json)."""
    ckpt = unit.options["checkpoints"]
    p = unit.params
    model = Location(unit.input("model").uri)
    spec = {
        "task": p["task"],
        "model": model.path,
        "train": {k: v for k, v in p.items() if k not in ("libraries", "task", "set")}
        | {k: unit.options[k] for k in OPTIONS},
        "checkpoints": ckpt,
        "final": f"{ckpt}/final",
        "fingerprint": unit.fingerprint,
    }
    if p["task"] == CLASSIFY:
        return spec | {"set": unit.input("set").uri, "tokenizer": model.child(TOKENIZER_FILE).path}
    return spec | {"pairs": unit.options["pairs"]}


def finetune_unit(unit: Unit) -> Ref:
    """Fine-tune (or resume) in a subprocess, then commit the model folder with the run's tokenizer files."""
    return launch_and_commit(
        unit,
        spec_of(unit),
        lambda spec_path: launch_command(unit.params["num_processes"], "auto", None, spec_path, finetune_loop.__name__),
        Location(unit.input("model").uri),
        f"{STAGE} {unit.name}",
        finetune_loop.SUMMARY,
        unit.options.get("threads"),
    )


def stage_for(run: RunDir, params: FinetuneParams, refs: list[Ref]) -> Unit:
    settings = params.model_dump(mode="json", exclude={"parallel", *OPTIONS})  # what `status` compares
    return stage_unit(run.stage(STAGE).uri, STAGE, refs, code_version(PACKAGE), settings)


# ---------------------------------------------------------------- Prefect tasks

plan_task = plain_step("finetune-plan")(plan)
finetune_task = step(name="finetune-model", retries=2)(finetune_unit)
commit_task = step(name="finetune-commit")(commit_stage)

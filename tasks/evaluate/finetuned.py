"""The fine-tuned translation unit, one per parallel set: the finetune stage's model translating from English on the
rows the pretrained model's few-shot translation is scored on (:func:`.sets.test_rows`), with the prompt it was tuned
on and no examples, scored by :func:`.scores.translation_scores` beside copying the source. The report puts it
beside the few-shot figure of the model it was tuned from."""

from __future__ import annotations

from xlmflow.storage import Aside, Location
from xlmflow.tasks.common.parallel_sets import PIVOT, languages, read_set
from xlmflow.tasks.common.runtime import Ref, Unit, ensure, logger
from xlmflow.tasks.common.specials import lang_tag
from xlmflow.tasks.evaluate.sets import test_rows
from xlmflow.tasks.evaluate.units import detected, load_model, spread, write_metrics
from xlmflow.tasks.langid import lid

FINETUNED = "finetuned"  # the key of a unit's figures in its metrics.json


def finetuned_unit(unit: Unit) -> Ref:
    """chrF++/BLEU/ROUGE per pair ``en-xx`` of the fine-tuned model on one parallel set's eval part."""
    from xlmflow.tasks.evaluate import measures, scores

    ((label, model_in),) = unit.each("finetuned")
    p, batch, name = unit.params, unit.options["batch_size"], unit.params["set"]
    eval_loc = Location(unit.inputs["set"]["eval"].uri)

    def build(aside: Aside) -> dict:
        model, tok = load_model(model_in.uri, model_in.fingerprint)
        lid_model = lid.load_model(unit.input("lid").uri)
        df = spread(read_set(eval_loc), p["max_segments"])  # the set unit's rows
        langs = [x for x in model.config.langs if x in languages(df)]
        texts = {x: df[x].to_list() for x in langs}
        ok = {x: detected(lid_model, texts[x], x) for x in langs}
        pairs, examples, fmt = {}, {}, None
        for tgt in [x for x in langs if x != PIVOT] if PIVOT in langs else []:
            rows = test_rows(texts, ok, tgt, p, "train" in unit.inputs["set"])
            if not rows:
                continue
            sources, refs = [texts[PIVOT][i] for i in rows], [texts[tgt][i] for i in rows]
            new = min(64, model.config.n_positions // 4)
            hyps, fmt = measures.translate(model, tok, [], sources, PIVOT, tgt, new, batch)
            pairs[f"{PIVOT}-{tgt}"] = scores.translation_scores(hyps, refs, sources, tgt, seed=p["seed"])
            examples[f"{PIVOT}-{tgt}"] = [
                {"source": s, "reference": r, "hypothesis": h} for s, r, h in list(zip(sources, refs, hyps))[:3]
            ]
            logger().info("evaluate %s %s %s-%s: chrF++ %.1f", label, name, PIVOT, tgt, pairs[f"{PIVOT}-{tgt}"]["chrf"])
        out = {"model": label, "tuned_from": p["tuned_from"], "set": name}
        fmt = fmt and fmt.replace(lang_tag(tgt), lang_tag("xx"))  # the same prompt into every language
        out[FINETUNED] = {"translation": pairs, "examples": examples, "prompt_format": fmt}
        write_metrics(aside, out)
        return {"pairs": len(pairs)}

    return ensure(unit, build)

"""`run_pairs`: the pairs stage's entry point (``ja-instruct pairs`` and ``ja-instruct run``).

Sample and judge (``pairs.model``)::

    <out>/prompts.jsonl      the prompts as a one-turn question set (`ja_instruct.pairs.prompts`)
    <out>/answers/<id>.jsonl k samples per prompt, by the generate stage (`generate_for_model`):
                             current answers are kept, stale ones regenerated, a killed run resumes
    <out>/samples/s<i>.jsonl pairwise mode: sample i of every prompt, as pseudo-model s<i>
    <out>/judge/             the judge stage's own folder (cache.jsonl, judgments.jsonl, manifest)
    <out>/pairs.jsonl        one `PairRecord` per kept prompt (`ja_instruct.pairs.select`)
    <out>/stats.json, stats.md, config.yaml
    <out>/manifest.json      LAST: the resolved section's hash; inputs: the prompts (the dataset's
                             fingerprint, or the question set's content), the sampling model's
                             fingerprint, the judge's identity, prompt files and endpoint

Or read a preference set as it is (``pairs.input``; `ja_instruct.pairs.hub.read_input`); its
manifest's input is that set's fingerprint.

Either way, pairs without a ``split`` of their own are held out by a seeded hash of their prompt
(``heldout_fraction``). A run whose manifest matches does nothing (one log line, no model, no
file written). Otherwise it logs why, and redoes what changed: the generate stage keeps every
current answer and the judge's cache every judgment, so a new ``margin`` re-selects with no
generation and no judge call, and a new judge prompt or model asks the judge again.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections import Counter
from pathlib import Path

from ja_instruct.errors import UserError
from ja_instruct.manifest import input_changes, make_manifest, read_manifest, remove_manifest
from ja_instruct.pairs.judging import ANSWERS_DIR, JUDGE_DIR, PROMPTS_FILE, SAMPLES_DIR
from ja_instruct.pairs.stats import OUTPUTS, UNKNOWN, ordered_drops, split_counts

log = logging.getLogger(__name__)

STAGE = "pairs"
FORMAT_VERSION = 1
# Model-spec keys that change how fast answers come, never which (as `generation_settings` says).
_SPEC_RUN_ONLY = ("batch_size", "concurrency", "max_retries", "timeout", "device")
_INPUT_KEYS = ("input", "split", "limit", "heldout_fraction", "license", "judge_terms", "seed")


def run_pairs(recipe, out_dir: str | Path | None = None, *, restart: bool = False, check_only: bool = False) -> Path:
    """Bring the recipe's preference pairs up to date; returns their folder (`load_pairs` reads it).

    Args:
        recipe: a `ja_instruct.recipe.Recipe` with a ``pairs`` section.
        out_dir: output folder (registered in the run layout, so ``train.method: dpo`` finds it);
            default ``recipe.stage_dir("pairs")``.
        restart: sample and judge everything again (the folder's answers and judge cache are
            deleted; a ``judge.cache`` outside it is kept).
        check_only: when sampling and judging would be needed, raise `UserError` instead (the
            train stage under torchrun: the other ranks cannot wait hours at a barrier).

    Raises:
        UserError: no model/judge, a missing dataset or question set, ``path: trained`` in a DPO
            recipe, an unreadable ``input``, no pair kept... checked before any model is loaded
            where possible.
    """
    cfg = recipe.require(STAGE)
    out = Path(out_dir) if out_dir is not None else recipe.stage_dir(STAGE)
    if out_dir is not None:
        recipe.layout.register(STAGE, out)
    seed = cfg.seed if cfg.seed is not None else recipe.seed
    if restart:
        remove_manifest(out)
        for name in (ANSWERS_DIR, SAMPLES_DIR, JUDGE_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
    if cfg.input is not None:
        return _from_input(cfg, out, seed)
    return _sample_and_judge(recipe, cfg, out, seed, check_only)


# --------------------------------------------------------------------------- identity

def hashed_config(cfg, seed: int, jcfg=None) -> dict:
    """The section as the manifest hashes it: the resolved seed; with ``input`` only the keys that
    change what is read; otherwise the judge's settings (`hashed_judge`) and the model spec
    without its speed knobs."""
    from ja_instruct.pairs.judging import hashed_judge

    data = cfg.model_dump(mode="json")
    data.update(seed=seed, format=FORMAT_VERSION)
    if cfg.input is not None:
        return {k: data[k] for k in (*_INPUT_KEYS, "format")}
    data["judge"] = hashed_judge(jcfg)
    for k in _SPEC_RUN_ONLY:
        data["model"].pop(k, None)
    return data


def _current(old, expected, out: Path) -> bool:
    return (old is not None and expected is not None and old.fingerprint == expected.fingerprint
            and all((out / f).is_file() for f in old.outputs.values()))


def _reasons(old, inputs: dict | None, hashed: dict, out: Path, known: dict | None = None) -> list[str]:
    """Why the stage runs. ``inputs`` None: the judge's inputs (made from this stage's own files)
    could not be read, so only the ``known`` ones are compared."""
    if inputs is None:
        if old is None:
            return ["no complete output yet"]
        kept = {k: v for k, v in old.inputs.items() if not k.startswith("judge:")}
        old = dataclasses.replace(old, inputs=kept)
        reasons = input_changes(old, known or {}, hashed) or ["answers or judgments of the last run are missing"]
        return reasons
    reasons = input_changes(old, inputs, hashed)
    if old is not None:
        reasons += [f"output {name} missing" for name in old.outputs.values() if not (out / name).is_file()]
    return reasons or ["the output is incomplete"]


def _log_up_to_date(old, out: Path) -> None:
    counts = old.details.get("counts", {})
    log.info("pairs: up to date (%s pairs: train %s, held out %s in %s)", counts.get("kept", "?"),
             counts.get("train", "?"), counts.get("heldout", "?"), out)


# --------------------------------------------------------------------------- pairs.input

def _from_input(cfg, out: Path, seed: int) -> Path:
    from ja_instruct.pairs.hub import read_input
    from ja_instruct.pairs.select import heldout_ids, margin_histogram
    from ja_instruct.pairs.stats import write_outputs

    if cfg.model is not None:
        log.info("pairs: input is set, so pairs.model is not used")
    hashed = hashed_config(cfg, seed)
    given = read_input(cfg.input, cfg.split, cfg.limit)
    inputs = {"input": given.fingerprint}
    old = read_manifest(out, STAGE)
    if _current(old, make_manifest(STAGE, hashed, inputs, outputs=OUTPUTS), out):
        _log_up_to_date(old, out)
        return out
    log.info("pairs: reading %s: %s", cfg.input, "; ".join(_reasons(old, inputs, hashed, out)))
    remove_manifest(out)
    out.mkdir(parents=True, exist_ok=True)
    held = heldout_ids({r.id: r.prompt for r in given.records if r.id not in given.own_split},
                       cfg.heldout_fraction, seed)
    records = [r if r.id in given.own_split else dataclasses.replace(r, split="heldout" if r.id in held else "train")
               for r in given.records]
    judges = sorted({r.judge for r in records if r.judge})
    meta = {"license": cfg.license or given.meta.get("license") or UNKNOWN,
            "judge": given.meta.get("judge") or ("+".join(judges) if judges else None),
            "judge_terms": cfg.judge_terms or given.meta.get("judge_terms")}
    margins = [float(r.margin) for r in records if isinstance(r.margin, (int, float))]
    stats = {"stage": STAGE, "mode": "input",
             "prompts": {"source": cfg.input, "available": len(records), "used": len(records)},
             "pairs": split_counts(records), "dropped": {},
             "margin_histogram": margin_histogram(margins, [True] * len(margins)),
             "licence": {"prompts": meta["license"], "judge": meta["judge"], "judge_terms": meta["judge_terms"]}}
    details = {"counts": {"prompts": len(records), **split_counts(records)}, "meta": meta}
    resolved = cfg.model_copy(update={"seed": seed})
    write_outputs(out, resolved, records, stats, make_manifest(STAGE, hashed, inputs, OUTPUTS, details))
    log.info("pairs: %d pairs from %s (train %d, held out %d) -> %s", len(records), cfg.input,
             stats["pairs"]["train"], stats["pairs"]["heldout"], out)
    return out


# --------------------------------------------------------------------------- sample and judge

def _check_model(recipe, spec) -> None:
    from ja_instruct.generate.config import TRAINED

    train = recipe.train
    if spec.path == TRAINED and train is not None and getattr(train, "method", "sft") == "dpo":
        raise UserError("pairs.model.path is 'trained', but this recipe's train stage is the DPO run these pairs "
                        "feed", field="pairs.model.path",
                        hint="Point it at the SFT model's folder (e.g. runs/<sft recipe>/train/final).")


def _model_identity(recipe, spec) -> tuple[str | None, str]:
    """(what the backend loads, the model's fingerprint); the generate stage's `model_identity`,
    with a missing ``path: trained`` model named as this stage's problem."""
    from ja_instruct.generate.config import TRAINED
    from ja_instruct.generate.identity import model_identity

    try:
        return model_identity(spec, recipe)
    except UserError as e:
        if spec.path != TRAINED:
            raise
        raise UserError(e.message, field="pairs.model.path",
                        hint="`ja-instruct run` runs pairs before train: train first (`ja-instruct train RECIPE`), "
                             "or point pairs.model.path at the SFT model's folder.") from None


def _inputs(prompts_fp: str, model_fp: str, jcfg) -> dict[str, str] | None:
    """The manifest inputs, or None when the judge's inputs (this stage's files) are missing."""
    from ja_instruct.pairs.judging import judge_inputs

    try:
        judge = judge_inputs(jcfg)
    except UserError:
        return None
    return {"prompts": prompts_fp, "model": model_fp, "judge": _judge_identity(jcfg), **judge}


def _judge_identity(jcfg) -> str:
    """Hash of who judges (`ja_instruct.judge.backends.judge_identity` of each judge)."""
    from ja_instruct.io import stable_hash
    from ja_instruct.judge.backends import judge_identity

    return stable_hash([judge_identity(b) for b in [jcfg.backend, *jcfg.panel]])


def _sample_and_judge(recipe, cfg, out: Path, seed: int, check_only: bool = False) -> Path:
    from ja_instruct.generate.questions import questions_to_jsonl_records
    from ja_instruct.io import write_jsonl
    from ja_instruct.pairs.judging import judge_section, resolve_judge, run_judge, write_sample_files
    from ja_instruct.pairs.prompts import data_prompts, prompts_fingerprint, question_prompts

    spec = cfg.model
    _check_model(recipe, spec)
    # cheap checks first: a typo in the judge section must not cost a dataset build or a model load
    section = judge_section(recipe, cfg)
    jcfg = resolve_judge(recipe, cfg, out, spec.id)
    prompts_fp, data_dir = prompts_fingerprint(recipe, cfg)
    model_path, model_fp = _model_identity(recipe, spec)
    hashed = hashed_config(cfg, seed, jcfg)
    old = read_manifest(out, STAGE)
    inputs = _inputs(prompts_fp, model_fp, jcfg) if old is not None else None
    if inputs is not None and _current(old, make_manifest(STAGE, hashed, inputs, outputs=OUTPUTS), out):
        _log_up_to_date(old, out)
        return out
    known = {"prompts": prompts_fp, "model": model_fp}
    if inputs is None and old is not None:
        known["judge"] = _judge_identity(jcfg)
    why = "; ".join(_reasons(old, inputs, hashed, out, known))
    if check_only:
        raise UserError(f"the preference pairs in {out} are not up to date ({why}), and sampling and judging "
                        "them under torchrun would keep every other rank waiting", field="pairs",
                        hint="Run `ja-instruct pairs RECIPE` (one process) first, then train under torchrun.")
    log.info("pairs: running: %s", why)
    remove_manifest(out)  # from here on the folder is incomplete until the new manifest lands
    out.mkdir(parents=True, exist_ok=True)

    pset = data_prompts(data_dir, cfg.limit) if data_dir is not None else \
        question_prompts(cfg.prompts, cfg.split, cfg.limit)
    if not pset.prompts:
        raise UserError(f"no usable prompt in {cfg.prompts} ({pset.available} rows; dropped: "
                        f"{ordered_drops(pset.dropped) or 'none'})", field="pairs.prompts",
                        hint="Only single-turn prompts without their own system message are sampled (docs/pairs.md).")
    questions = pset.questions()
    write_jsonl(out / PROMPTS_FILE, questions_to_jsonl_records(questions))
    answers, generated, model_fp = _sample(recipe, cfg, spec, model_path, model_fp, seed, questions, out)
    if jcfg.mode == "pairwise":
        write_sample_files(answers, [q.question_id for q in questions], out / SAMPLES_DIR, cfg.samples)
    judged = run_judge(jcfg, out)
    records, stats = _select(cfg, spec, jcfg, pset, answers, seed, out)
    stats.update(answers={"total": sum(len(t) for t, _ in answers.values()), "generated_now": generated,
                          "truncated": sum(sum(c) for _, c in answers.values())}, judged=judged)
    inputs = _inputs(prompts_fp, model_fp, jcfg)
    if inputs is None:  # the judge has just written them: a missing one is a bug, not a user error
        raise RuntimeError(f"pairs: the judge's inputs in {out} are missing after judging")
    _finish(out, cfg, seed, section, hashed, inputs, records, stats)
    return out


def _sample(recipe, cfg, spec, model_path, model_fp, seed, questions, out: Path):
    """The k samples of every prompt through the generate stage; (answers, samples generated now,
    the model fingerprint the answers carry)."""
    from ja_instruct.generate.backends import get_backend_class
    from ja_instruct.generate.config import GenerateConfig
    from ja_instruct.generate.run import generate_for_model, plan_answers, sampling_params
    from ja_instruct.io import read_jsonl_store
    from ja_instruct.pairs.judging import read_answers

    gcfg = GenerateConfig(questions=str(out / PROMPTS_FILE), models=[spec], samples=cfg.samples,
                          temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                          max_new_tokens=cfg.max_new_tokens, repetition_penalty=cfg.repetition_penalty, seed=seed)
    folder = out / ANSWERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.id}.jsonl"
    plan = plan_answers(read_jsonl_store(path), questions, spec, model_fp,
                        lambda q: sampling_params(gcfg, spec, q.category, seed), cfg.samples)
    generated = sum(len(job.samples) for job in plan.pending)
    if plan.pending:
        get_backend_class(spec.backend).check(spec, model_path)
    _, model_fp = generate_for_model(spec, model_path, model_fp, gcfg, questions, folder, seed, recipe)
    return read_answers(path, cfg.samples), generated, model_fp


def _select(cfg, spec, jcfg, pset, answers, seed: int, out: Path):
    """(kept `PairRecord`s, the stats of the selection) from the judge's verdicts."""
    from ja_instruct.pairs.judging import pairwise_verdicts, read_judgments, single_scores
    from ja_instruct.pairs.records import PairRecord
    from ja_instruct.pairs.select import heldout_ids, margin_histogram, select_pairwise, select_single
    from ja_instruct.pairs.stats import judge_label, licence_block

    k, single = cfg.samples, jcfg.mode == "single"
    judgments = read_judgments(out)
    scores = single_scores(judgments, spec.id, k) if single else pairwise_verdicts(judgments, k)
    system = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
    dropped, margins, kept_flags, picked = Counter(pset.dropped), [], [], []
    for p in pset.prompts:
        texts, cut = answers.get(p.key, ([], []))
        if len(texts) < k:  # cannot happen after generate; counted, never guessed
            dropped["judge_error"] += 1
            continue
        sel = (select_single(scores.get(p.key, [None] * k), cut, cfg.margin) if single
               else select_pairwise(k, scores.get(p.key, {}), cut, cfg.margin))
        if sel.margin is not None:
            margins.append(sel.margin)
            kept_flags.append(sel.kept)
        if sel.kept:
            picked.append((p, sel, texts))
        else:
            dropped[sel.reason] += 1
    prompts = {p.key: system + [{"role": "user", "content": p.text}] for p, _, _ in picked}
    held = heldout_ids(prompts, cfg.heldout_fraction, seed)
    label = judge_label(jcfg)
    records = [PairRecord(id=p.key, prompt=prompts[p.key], chosen=texts[sel.chosen], rejected=texts[sel.rejected],
                          split="heldout" if p.key in held else "train", scores=sel.scores, margin=sel.margin,
                          judge=label, source=p.source) for p, sel, texts in picked]
    stats = {"stage": STAGE, "mode": jcfg.mode, "model": spec.id, "samples": k, "margin": cfg.margin,
             "judge": label, "prompts": {"source": cfg.prompts, "available": pset.available,
                                         "used": len(pset.prompts)},
             "pairs": split_counts(records), "dropped": ordered_drops(dropped),
             "margin_histogram": margin_histogram(margins, kept_flags),
             "licence": licence_block(cfg, pset.licenses(), jcfg)}
    return records, stats


def _finish(out: Path, cfg, seed: int, section, hashed: dict, inputs: dict, records, stats: dict) -> None:
    """Write the outputs (the manifest last); no pair at all is an error after stats.json/md."""
    from ja_instruct.io import write_json, write_text
    from ja_instruct.pairs.stats import format_markdown, write_outputs

    lic = stats["licence"]
    meta = {"license": lic["prompts"], "judge": stats["judge"], "judge_terms": lic["judge_terms"]}
    details = {"counts": {"prompts": stats["prompts"]["used"], **split_counts(records),
                          "dropped": stats["dropped"]}, "meta": meta}
    dropped = ", ".join(f"{k} {v}" for k, v in stats["dropped"].items()) or "none"
    if not records:
        write_json(out / "stats.json", stats)
        write_text(out / "stats.md", format_markdown(stats))
        hint = ("Raise pairs.max_new_tokens (a cut-off answer is never chosen). "
                if "truncated_chosen" in stats["dropped"] else "")
        raise UserError(f"no pair kept of {stats['prompts']['used']} prompts (dropped: {dropped})",
                        file=out / "stats.md", hint=hint + "Lower pairs.margin, raise pairs.samples or "
                                                           "pairs.temperature, or use more prompts.")
    # the section as it was used: the seed and the judge resolved, without the judge's stage-set keys
    used_judge = section.model_copy(update={"answers_dir": None, "models": None, "questions": None})
    resolved = cfg.model_copy(update={"seed": seed, "judge": used_judge})
    write_outputs(out, resolved, records, stats, make_manifest(STAGE, hashed, inputs, OUTPUTS, details))
    p = stats["pairs"]
    log.info("pairs: %d pairs kept of %d prompts (train %d, held out %d); dropped: %s -> %s", p["kept"],
             stats["prompts"]["used"], p["train"], p["heldout"], dropped, out)

"""``ja-instruct judge import``: bring existing FastChat judgment files into our format.

FastChat's llm_judge writes

* ``*_single.jsonl``: ``question_id, model, judge: [judge model, prompt name], user_prompt,
  judgment, score (-1 when FastChat could not parse), turn, tstamp``;
* ``*_pair.jsonl``: ``question_id, model_1, model_2, g1_winner, g2_winner (model_1 | model_2 |
  tie | error, already in model terms), judge, g1_user_prompt, g1_judgment, g2_user_prompt,
  g2_judgment, turn, tstamp``; game 1 shows model_1 as A, game 2 shows model_2 as A.

Every stored judgment text is parsed again with OUR parser (`ja_instruct.judge.parse`):
the record keeps our score/verdict, FastChat's (``stored_score`` / ``stored_verdict``)
and ``parse_mismatch: true`` where the two differ (e.g. FastChat took the first
``[[n]]`` where we take the last, or gave -1 where a full-width ``［［８］］`` is readable).
Pair rows become two ordered records, like our own pairwise judgments.

Imported single judgments are on FastChat's 1-10 scale (``scale: [1, 10]``, ``sample: 0``).
Given the answers that were judged (``answers_dir``, FastChat answer files ``<model>.jsonl``),
each single record gets the answer's ``language`` (hidden reasoning removed first) and the
language guard is applied; its default for imports is ``flag`` (shown, scores as the judge
gave them: an imported run is a record of what that judge said), ``floor`` caps like our own
runs. Without answers ``language`` is None and no guard can act.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ja_instruct.errors import UserError
import yaml

from ja_instruct.io import iter_jsonl, write_json, write_jsonl, write_text
from ja_instruct.judge.config import JudgeConfig
from ja_instruct.judge.parse import parse_judgment, parse_rating, parse_verdict123, unswap
from ja_instruct.judge.store import make_key

log = logging.getLogger(__name__)

_WINNER = {"model_1": "A", "model_2": "B", "tie": "tie"}
DEFAULT_THINK = JudgeConfig.model_fields["think_pattern"].default  # the judge stage's own default


def _judge_fields(rec: dict) -> tuple[str, str]:
    j = rec.get("judge")
    if isinstance(j, (list, tuple)) and len(j) >= 2:
        return str(j[0]), str(j[1])
    return str(j or "unknown"), "unknown"


def _pair_verdict(prompt_name: str, text: str) -> str | None:
    if "[[" in (text or "") or prompt_name.startswith("pair-v") or prompt_name.startswith("pair-math"):
        v = parse_judgment("verdict", text)[1]
        if v is not None:
            return v
    return parse_verdict123(text)  # Rakuda's pair-ja: 1/2/3 on the last line


def import_single(path: Path, line: int, rec: dict, categories: dict) -> dict:
    for k in ("question_id", "model", "judgment"):
        if k not in rec:
            raise UserError(f"not a FastChat single judgment: no '{k}'", file=path, line=line,
                            hint="Expected the *_single.jsonl schema of FastChat llm_judge.")
    judge, prompt = _judge_fields(rec)
    score = parse_rating(rec["judgment"])
    stored = rec.get("score")
    stored = None if stored is None or stored == -1 else float(stored)
    turn = int(rec.get("turn", 1))
    return {"mode": "single", "question_id": rec["question_id"], "category": categories.get(str(rec["question_id"])),
            "turn": turn, "model": rec["model"], "model_a": None, "model_b": None, "judge": judge,
            "prompt": f"{prompt}@fastchat", "score": score, "verdict": None,
            "status": "ok" if score is not None else "parse_error", "text": rec["judgment"], "repeat": 0,
            "key": make_key(src="fastchat-single", qid=str(rec["question_id"]), model=rec["model"], judge=judge,
                            prompt=prompt, turn=turn, text=rec["judgment"]),
            "usage": {"prompt_tokens": 0, "completion_tokens": 0},
            "stored_score": stored, "parse_mismatch": score != stored, "source": f"{path}:{line}",
            "sample": 0, "scale": [1, 10], "language": None, "reasoning": None}


def import_pair(path: Path, line: int, rec: dict, categories: dict) -> list[dict]:
    for k in ("question_id", "model_1", "model_2", "g1_judgment", "g2_judgment"):
        if k not in rec:
            raise UserError(f"not a FastChat pair judgment: no '{k}'", file=path, line=line,
                            hint="Expected the *_pair.jsonl schema of FastChat llm_judge.")
    judge, prompt = _judge_fields(rec)
    turn = int(rec.get("turn", 1))
    out = []
    for game, order in (("g1", "AB"), ("g2", "BA")):
        text = rec[f"{game}_judgment"]
        shown = _pair_verdict(prompt, text)
        verdict = unswap(shown) if order == "BA" else shown  # in model_1 (= model_a) terms
        stored = _WINNER.get(rec.get(f"{game}_winner"))  # FastChat already maps g2 to model terms
        out.append({"mode": "pairwise", "question_id": rec["question_id"],
                    "category": categories.get(str(rec["question_id"])), "turn": turn, "model": None,
                    "model_a": rec["model_1"], "model_b": rec["model_2"], "order": order, "judge": judge,
                    "prompt": f"{prompt}@fastchat", "score": None, "verdict": verdict, "verdict_shown": shown,
                    "status": "ok" if verdict is not None else "parse_error", "text": text, "repeat": 0,
                    "key": make_key(src="fastchat-pair", qid=str(rec["question_id"]), models=[rec["model_1"], rec["model_2"]],
                                    judge=judge, prompt=prompt, turn=turn, order=order, text=text),
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0},
                    "stored_verdict": stored, "parse_mismatch": verdict != stored, "source": f"{path}:{line}",
                    "sample": 0})
    return out


def _identity(r: dict) -> tuple:
    """What makes two imported judgments the same one: judge, model(s) in the order shown,
    question and turn (a pair row repeated with its models swapped holds the same two games)."""
    if r["mode"] == "single":
        return ("single", r["judge"], r["model"], str(r["question_id"]), r["turn"])
    shown = (r["model_a"], r["model_b"]) if r["order"] == "AB" else (r["model_b"], r["model_a"])
    return ("pair", r["judge"], shown, str(r["question_id"]), r["turn"])


def _drop_duplicates(records: list[dict]) -> tuple[list[dict], int]:
    """Keep the first of every judgment that occurs more than once.

    FastChat files concatenated twice, or re-runs appended to the same file, repeat rows. They
    are not repeats of the judge (``repeat`` is always 0 here): counting them would weight those
    items twice and invent a ``repeat_std``.
    """
    first: dict[tuple, str] = {}
    kept, dups = [], []
    for r in records:
        k = _identity(r)
        if k in first:
            dups.append((r["source"], first[k]))
        else:
            first[k] = r["source"]
            kept.append(r)
    if dups:
        log.warning("judge import: %d duplicate judgment(s) ignored (same judge, model(s), question, turn and "
                    "order; the first is kept), e.g. %s repeats %s", len(dups), *dups[0])
    return kept, len(dups)


def _add_language(records: list[dict], answers_dir: Path, think_pattern: str | None) -> None:
    """Set ``language`` / ``reasoning`` / ``answer_chars`` of single records from the answers judged."""
    from ja_instruct.generate.health import language_label
    from ja_instruct.judge.inputs import answer_files, load_answer_samples, prepare_answer

    files = answer_files(Path(answers_dir), None)
    answers = {m: load_answer_samples(p) for m, p in files.items()
               if m in {r["model"] for r in records}}
    missing = 0
    for r in records:
        samples = answers.get(r["model"], {}).get(str(r["question_id"]))
        if not samples or len(samples[0].turns) < r["turn"]:
            missing += 1
            continue
        shown, r["reasoning"] = prepare_answer(samples[0].turns[:r["turn"]], think_pattern)
        r["language"] = language_label(shown[-1])
        r["answer_chars"] = len(shown[-1])
        r["answer_tokens"] = samples[0].tokens[r["turn"] - 1]
    if missing:
        log.warning("judge import: %d judgment(s) have no answer in %s: no language for them", missing, answers_dir)


def import_fastchat(files: list[str | Path], out_dir: str | Path, questions: str | None = None,
                    bootstrap: int = 200, seed: int = 0, answers_dir: str | Path | None = None,
                    language_guard: str | None = None, think_pattern: str | None = DEFAULT_THINK) -> Path:
    """Convert FastChat judgment files into ``out_dir/judgments.jsonl`` + ``summary.json``.
    ``answers_dir``: the FastChat answer files judged (for the language of each answer);
    ``language_guard``: off | flag | floor, None = ``flag`` (see module doc)."""
    from ja_instruct.judge.single import apply_language_guard
    from ja_instruct.judge.summary import build_summary

    from ja_instruct.judge.single import GUARDS

    guard = language_guard or "flag"
    if guard not in GUARDS:
        raise UserError(f"unknown language guard {guard!r}", hint=f"Use one of {', '.join(GUARDS)}.")
    if guard == "floor" and answers_dir is None:
        raise UserError("the language guard 'floor' needs the answers that were judged",
                        hint="Give the FastChat answer folder (answers_dir), or use the guard 'flag'.")

    categories: dict[str, str] = {}
    if questions:
        from ja_instruct.judge.inputs import load_question_set

        categories = {q.key: q.category for q in load_question_set(questions)}
    single, pair = [], []
    for f in files:
        path = Path(f)
        for line, rec in iter_jsonl(path):
            if "model_1" in rec or "g1_judgment" in rec:
                pair.extend(import_pair(path, line, rec, categories))
            else:
                single.append(import_single(path, line, rec, categories))
    if single and pair:
        raise UserError("mixed single and pair judgment files", hint="Import *_single.jsonl and *_pair.jsonl separately.")
    records, duplicates = _drop_duplicates(single or pair)
    if not records:
        raise UserError("no judgments in the given files", file=files[0] if files else None)
    mode = "single" if single else "pairwise"
    if single and answers_dir is not None:
        _add_language(records, Path(answers_dir), think_pattern)
    records = [apply_language_guard(r, guard) for r in records]
    models = sorted({r["model"] for r in single}) if single else sorted(
        {r["model_a"] for r in pair} | {r["model_b"] for r in pair})
    out = Path(out_dir)
    write_jsonl(out / "judgments.jsonl", records)
    mismatches = sum(r["parse_mismatch"] for r in records)
    judges = sorted({r["judge"] for r in records})
    summary = build_summary(records, mode, models, judge=",".join(judges), question_set=questions,
                            answers_dir=str(answers_dir) if answers_dir else None,
                            bootstrap=bootstrap, seed=seed, judges=judges,
                            extra={"import": {"files": [str(f) for f in files], "rows": len(records),
                                              "parse_mismatches": mismatches, "duplicates": duplicates},
                                   "language_guard": guard})
    write_json(out / "summary.json", summary)
    write_text(out / "config.yaml", yaml.safe_dump({"import": [str(f) for f in files], "questions": questions,
                                                    "answers_dir": str(answers_dir) if answers_dir else None,
                                                    "language_guard": guard}, allow_unicode=True, sort_keys=False))
    if mismatches:
        log.warning("%d of %d judgments parse differently from the stored score/verdict (parse_mismatch: true)",
                    mismatches, len(records))
    return out

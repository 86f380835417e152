"""The data stage at the seed's real size: a synthetic ~150k-conversation Japanese mixture.

    python benchmarks/data_build.py [--n 150000] [--json PATH] [--ngram N] [--keep DIR]
    python benchmarks/data_build.py --near-dedup-only [--n 100000] [--json PATH]
    python benchmarks/data_build.py --ngram-study [--shared ../shared/data] [--json PATH]

Writes four sources as JSONL into a temporary folder (two Alpaca-format sources, one OpenAI
``messages`` source with 1-3 exchanges, one ShareGPT ``conversations`` source), made of
Japanese-looking sentences: words of kanji, kana and katakana drawn from a Zipf-distributed
vocabulary with particles and polite endings, ~450 characters per conversation. Planted in the
later sources: exact copies of earlier conversations (1.5%, about half of them with "？" made "?"
and spaces around, so only the normalised dedupe sees them), near copies (1.5%, 2-3 characters changed) and 24 lightly
edited questions of the embedded question set (one character dropped, wrapped in a prompt).

Then runs `ja_instruct.data.build_dataset` with the normalised exact dedupe, near dedupe
(``clean.near_dedup`` defaults) and the contamination check against the embedded questions (no
judge), and prints the seconds of each step (read, clean, near dedupe, contamination, write),
the total, the peak resident memory of the build (the kernel's VmHWM, reset just before it; the
generation of the data is not counted), and what was found against what was planted.
Targets (issue 12, 2 cores): <= 5 minutes for the whole build; near dedupe of 100k examples
alone (``--near-dedup-only``) <= 60 s.

``--ngram-study`` measures the contamination check's n on real data (docs/data.md): the Rakuda,
Japanese MT-Bench (question_full) and embedded questions against every real answer in
``../shared/data`` (15 Rakuda and 9 MT-Bench answer files, the GPT-4 references) plus the 355
embedded instructions: accidental hits (an answer containing a question other than its own),
answers quoting their own question, and how many lightly edited questions are still caught.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
KANJI = ("日本語学校会社時間情報問題自分世界社会経済政治文化歴史科学技術教育環境健康生活仕事家族友人地域都市"
         "国際関係研究開発説明理由方法結果影響重要必要可能簡単特別一般具体例特徴利点欠点比較分析提案計画目標課題"
         "解決意見考察検討実験観察記録資料作成表現内容形式構造電気交通農業医療料理季節旅行音楽映画写真新聞雑誌")
HIRA = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをん"
KATA = "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワン"
PARTICLES = ("は", "が", "を", "に", "で", "と", "の", "も", "から", "まで", "について", "によって", "として")
ENDINGS = ("です。", "ます。", "でした。", "と考えられます。", "してください。", "があります。", "になります。",
           "ましょう。", "ですか？")
SOURCES = (("alpaca-main", "alpaca", 0.45), ("alpaca-extra", "alpaca", 0.2), ("chat", "messages", 0.25),
           ("sharegpt", "sharegpt", 0.1))
PLANT_SHARE = 0.015
BENCH_PLANTED = 24


class Text:
    """Japanese-looking sentences from a seeded Zipf vocabulary."""

    def __init__(self, seed: int, size: int = 4000) -> None:
        self.rng = rng = random.Random(seed)
        words = []
        for _ in range(size):
            r = rng.random()
            if r < 0.6:
                words.append("".join(rng.choice(KANJI) for _ in range(rng.choice((2, 2, 3, 4)))))
            elif r < 0.8:
                words.append("".join(rng.choice(KATA) for _ in range(rng.randint(3, 6))) + rng.choice(("ー", "")))
            else:
                words.append("".join(rng.choice(KANJI) for _ in range(rng.randint(1, 2)))
                             + "".join(rng.choice(HIRA) for _ in range(rng.randint(1, 3))))
        self.words = words
        self.cum = list(itertools.accumulate(1 / (i + 1) for i in range(size)))

    def sentence(self) -> str:
        rng = self.rng
        ws = rng.choices(self.words, cum_weights=self.cum, k=rng.randint(3, 9))
        return "".join(w + rng.choice(PARTICLES) for w in ws[:-1]) + ws[-1] + rng.choice(ENDINGS)

    def para(self, lo: int, hi: int) -> str:
        return "".join(self.sentence() for _ in range(self.rng.randint(lo, hi)))

    def edit(self, text: str, k: int) -> str:
        """``text`` with ``k`` characters replaced."""
        chars = list(text)
        for _ in range(k):
            chars[self.rng.randrange(len(chars))] = self.rng.choice(HIRA)
        return "".join(chars)


def conversation(t: Text, turns: int) -> list[dict]:
    msgs = []
    for _ in range(turns):
        msgs += [{"role": "user", "content": t.para(1, 3)}, {"role": "assistant", "content": t.para(4, 14)}]
    return msgs


def record(fmt: str, i: int, msgs: list[dict]) -> dict:
    if fmt == "alpaca":
        return {"index": str(i), "instruction": msgs[0]["content"], "input": "", "output": msgs[1]["content"]}
    if fmt == "messages":
        return {"id": str(i), "messages": msgs}
    return {"id": str(i), "conversations": [{"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]}
                                            for m in msgs]}


def lightly_edited(question: str) -> str:
    mid = len(question) // 2
    return f"次の質問に答えてください。\n{question[:mid] + question[mid + 1:]}"


def make_mixture(folder: Path, n: int, seed: int = 0) -> tuple[list[dict], dict]:
    """Write the sources as JSONL into ``folder``; returns their recipe entries and what was planted."""
    from ja_instruct.generate.questions import load_questions

    t = Text(seed)
    pool: list[list[dict]] = []  # conversations of earlier sources to copy from
    planted = {"exact": 0, "normalised": 0, "near": 0, "benchmark": 0, "chars": 0}
    questions = load_questions("embedded:questions_ja.jsonl")[::2][:BENCH_PLANTED]
    sources = []
    for s, (name, fmt, share) in enumerate(SOURCES):
        path = folder / f"{name}.jsonl"
        count = round(n * share)
        with open(path, "w", encoding="utf-8") as f:
            for i in range(count):
                msgs = conversation(t, 1 if fmt == "alpaca" else t.rng.choice((1, 1, 2, 3)))
                r = t.rng.random()
                if s and pool and r < PLANT_SHARE:  # an exact copy (half re-spaced / full-width)
                    msgs = [dict(m) for m in t.rng.choice(pool)][:2]
                    if i % 2 and "？" in msgs[0]["content"]:  # the same text after NFKC and strip
                        msgs[0]["content"] = "\u3000 " + msgs[0]["content"].replace("？", "?") + "\n"
                        planted["normalised"] += 1
                    else:
                        planted["exact"] += 1
                elif s and pool and r < 2 * PLANT_SHARE:
                    base = t.rng.choice(pool)[:2]
                    msgs = [base[0], {"role": "assistant", "content": t.edit(base[1]["content"], t.rng.randint(2, 3))}]
                    planted["near"] += 1
                elif s == len(SOURCES) - 1 and planted["benchmark"] < len(questions) and \
                        i % (count // (len(questions) + 1)) == 1:
                    msgs[0]["content"] = lightly_edited(questions[planted["benchmark"]].turns[0])
                    planted["benchmark"] += 1
                elif len(pool) < 20000 and r < 0.5 and len(msgs) == 2:
                    pool.append(msgs)
                planted["chars"] += sum(len(m["content"]) for m in msgs)
                f.write(json.dumps(record(fmt, i, msgs), ensure_ascii=False) + "\n")
        sources.append({"name": name, "path": str(path), "format": "messages" if fmt == "sharegpt" else fmt,
                        "license": "Apache-2.0"})
    return sources, planted


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _peak_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_build(n: int, ngram: int | None, keep: str | None) -> dict:
    from ja_instruct.data.build import build_dataset  # the package-level wrapper has no `timer`
    from ja_instruct.data.config import DataConfig

    if keep is None:
        with tempfile.TemporaryDirectory(prefix="data-build-bench-") as tmp:
            return bench_build(n, ngram, tmp) | {"folder": None}
    folder = Path(keep)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sources, planted = make_mixture(folder, n)
    gen = time.perf_counter() - t0
    contamination = {"benchmarks": ["embedded:questions_ja.jsonl"], **({"ngram": ngram} if ngram else {})}
    cfg = DataConfig(sources=sources, clean={"dedup": "normalized", "near_dedup": {}},
                     heldout={"fraction": 0.01, "max_examples": 500}, contamination=contamination)
    steps: dict[str, float] = {}
    exact_peak = _reset_peak()
    rss0 = _peak_mib()
    t0 = time.perf_counter()
    stats = build_dataset(cfg, folder / "out", force=True, echo=lambda s: print(s, file=sys.stderr),
                          timer=lambda step, s: steps.__setitem__(step, s))
    total = time.perf_counter() - t0
    peak = _peak_mib()
    dropped = {r: sum(s["dropped"].get(r, 0) for s in stats["sources"].values())
               for r in ("duplicate", "near_duplicate", "contaminated")}
    c = stats["contamination"]
    return {"mode": "build", "conversations": sum(s["conversations"] for s in stats["sources"].values()),
            "chars_per_conversation": round(planted.pop("chars") / n), "generate_s": round(gen, 1),
            "steps_s": {k: round(v, 2) for k, v in steps.items()}, "total_s": round(total, 1),
            "other_s": round(total - sum(steps.values()), 2),
            "peak_rss_mib": round(peak), "rss_before_mib": round(rss0), "peak_is_build_only": exact_peak,
            "planted": planted, "removed": dropped, "kept": sum(s["kept"] for s in stats["sources"].values()),
            "contamination": {"ngram": c["ngram"], "min_overlap": c["min_overlap"],
                              "found": c["benchmarks"]["embedded:questions_ja"]["found"], "hits": len(c["hits"])},
            "folder": str(folder)}


def bench_near_dedup(n: int) -> dict:
    """Near dedupe alone over ``n`` cleaned conversations (1.5% of them near copies)."""
    from collections import Counter

    from ja_instruct.data.config import NearDedupConfig
    from ja_instruct.data.neardup import near_dedup
    from ja_instruct.data.records import SourceStats

    t = Text(1)
    examples, planted = [], 0
    for i in range(n):
        if examples and t.rng.random() < PLANT_SHARE:
            base = t.rng.choice(examples)["messages"]
            msgs = [base[0], {"role": "assistant", "content": t.edit(base[1]["content"], t.rng.randint(2, 3))}]
            planted += 1
        else:
            msgs = conversation(t, 1)
        examples.append({"id": str(i), "messages": msgs})
    chars = sum(len(m["content"]) for ex in examples for m in ex["messages"]) / n
    cfg = NearDedupConfig()
    stats = {"a": SourceStats(kept=n)}
    _reset_peak()
    t0 = time.perf_counter()
    _, removed = near_dedup([("a", examples)], cfg, "conversation", stats)
    seconds = time.perf_counter() - t0
    return {"mode": "near_dedup", "conversations": n, "chars_per_conversation": round(chars),
            "threshold": cfg.threshold, "ngram": cfg.ngram, "num_perm": cfg.num_perm,
            "near_dedup_s": round(seconds, 1), "per_1k_s": round(seconds / n * 1000, 3),
            "planted": planted, "removed": sum(Counter(removed).values()), "peak_rss_mib": round(_peak_mib())}


EDITS = {
    "re-punctuated": lambda q: q.replace("。", ". ").replace("、", ", ").replace("？", "?"),
    "politer forms": lambda q: q.replace("してください", "して下さい").replace("ですか", "でしょうか")
                                .replace("ください", "下さい"),
    "1 char replaced": lambda q: _replace(q, 1),
    "2 chars replaced": lambda q: _replace(q, 2),
    "wrapped in a prompt": lambda q: f"次の質問に日本語で答えてください。\n質問：{q}\n回答はできるだけ詳しく。",
    "1 char dropped + wrapped": lightly_edited,
}


def _replace(q: str, k: int) -> str:
    """``q`` with ``k`` characters at evenly spaced places replaced by another kana."""
    chars = list(q)
    for j in range(1, k + 1):
        p = len(chars) * j // (k + 1)
        chars[p] = "あ" if chars[p] != "あ" else "い"
    return "".join(chars)


def ngram_study(shared: Path, ns: tuple[int, ...] = (8, 10, 13, 16, 20, 30), min_overlap: float = 0.5) -> dict:
    """Accidental and edited-question hits of the contamination check per n (module doc)."""
    from ja_instruct.config import ASSETS_DIR
    from ja_instruct.data.config import ContaminationConfig
    from ja_instruct.data.contamination import BenchmarkSet, QuestionIndex, find_hits
    from ja_instruct.generate.questions import load_questions
    from ja_instruct.io import iter_jsonl

    sets = [BenchmarkSet("rakuda", "", load_questions(shared / "rakuda/questions.jsonl")),
            BenchmarkSet("ja_mt_bench", "", load_questions(shared / "ja_mt_bench/question_full.jsonl")),
            BenchmarkSet("embedded:questions_ja", "", load_questions("embedded:questions_ja.jsonl"))]
    corpus, own = [], {}
    for label, pattern in (("rakuda", "rakuda/answers/*.jsonl"), ("ja_mt_bench", "ja_mt_bench/model_answer/*.jsonl"),
                           ("ja_mt_bench", "ja_mt_bench/reference_answer/*.jsonl")):
        for f in sorted(shared.glob(pattern)):
            for _, rec in iter_jsonl(f):
                turns = [t for t in rec["choices"][0]["turns"] if t]
                if turns:
                    own[str(len(corpus))] = (label, str(rec["question_id"]))
                    corpus.append({"id": str(len(corpus)), "messages": [{"role": "assistant", "content": t}
                                                                         for t in turns]})
    for _, rec in iter_jsonl(ASSETS_DIR / "instructions_ja.jsonl"):
        corpus.append({"id": str(len(corpus)), "messages": rec["messages"]})
    firsts = [(b.label, q.key, q.turns[0]) for b in sets for q in b.questions]
    res = {"corpus_examples": len(corpus), "corpus_chars": sum(len(m["content"]) for ex in corpus
                                                               for m in ex["messages"]),
           "questions": len(firsts), "turns": sum(len(q.turns) for b in sets for q in b.questions),
           "min_overlap": min_overlap, "by_n": {}}
    for n in ns:
        hits = find_hits([("c", corpus)], ContaminationConfig(ngram=n, min_overlap=0.05), sets)
        foreign = [h.overlap for h in hits if own.get(h.id) != (h.benchmark, h.question_id)]
        row = {"turns_unchecked": res["turns"] - len(QuestionIndex(sets, n).turns),
               "accidental": sum(o >= min_overlap for o in foreign),
               "accidental_max_overlap": round(max(foreign, default=0.0), 2),
               "quoting_own_question": sum(h.overlap >= min_overlap for h in hits
                                           if own.get(h.id) == (h.benchmark, h.question_id)),
               "edited_caught": {}}
        cfg = ContaminationConfig(ngram=n, min_overlap=min_overlap)
        for name, edit in EDITS.items():
            exs = [{"id": str(i), "messages": [{"role": "user", "content": edit(q)},
                                                {"role": "assistant", "content": "はい、お答えします。"}]}
                   for i, (_, _, q) in enumerate(firsts)]
            found = {int(h.id) for h in find_hits([("e", exs)], cfg, sets)
                     if (h.benchmark, h.question_id) == firsts[int(h.id)][:2]}
            row["edited_caught"][name] = len(found)
        res["by_n"][n] = row
    return res


def print_study(res: dict) -> None:
    print(f"contamination n study: {res['questions']} questions ({res['turns']} turns: Rakuda, JA MT-Bench "
          f"question_full, embedded) vs {res['corpus_examples']} real answers/instructions "
          f"({res['corpus_chars']} chars); min_overlap {res['min_overlap']}")
    names = list(EDITS)
    print("| n | turns too short | accidental hits | max accidental overlap | answers quoting own question | "
          + " | ".join(names) + " |")
    print("|---" * (5 + len(names)) + "|")
    for n, r in res["by_n"].items():
        print(f"| {n} | {r['turns_unchecked']} | {r['accidental']} | {r['accidental_max_overlap']} | "
              f"{r['quoting_own_question']} | "
              + " | ".join(f"{r['edited_caught'][k]}/{res['questions']}" for k in names) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="conversations (default 150000; 100000 with --near-dedup-only)")
    ap.add_argument("--near-dedup-only", action="store_true", help="time near dedupe alone (target <= 60 s at 100k)")
    ap.add_argument("--ngram", type=int, default=None,
                    help="data.contamination.ngram (default: the config default)")
    ap.add_argument("--ngram-study", action="store_true", help="measure the contamination n on ../shared/data")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
                    help="the real data folder for --ngram-study")
    ap.add_argument("--keep", default=None, help="write the sources and the dataset here and keep them")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.ngram_study:
        res = ngram_study(Path(args.shared))
        print_study(res)
    elif args.near_dedup_only:
        res = bench_near_dedup(args.n or 100_000)
        print(f"near dedupe: {res['conversations']} conversations (~{res['chars_per_conversation']} chars) in "
              f"{res['near_dedup_s']} s ({res['per_1k_s']} s per 1k; target <= 60 s at 100k); removed "
              f"{res['removed']} (planted near copies: {res['planted']}); peak RSS {res['peak_rss_mib']} MiB")
    else:
        res = bench_build(args.n or 150_000, args.ngram, args.keep)
        print(f"data build: {res['conversations']} conversations (~{res['chars_per_conversation']} chars each), "
              f"no judge")
        for step, s in res["steps_s"].items():
            print(f"  {step:<14} {s:8.2f} s")
        print(f"  {'(other)':<14} {res['other_s']:8.2f} s   held-out split, weights, shuffle, stats")
        print(f"  {'total':<14} {res['total_s']:8.1f} s   (target <= 300 s); peak RSS {res['peak_rss_mib']} MiB "
              f"(before the build: {res['rss_before_mib']} MiB)")
        p, r, c = res["planted"], res["removed"], res["contamination"]
        print(f"  planted: {p['exact']} exact + {p['normalised']} re-spaced copies -> duplicate {r['duplicate']}; "
              f"{p['near']} near copies -> near_duplicate {r['near_duplicate']}; {p['benchmark']} benchmark "
              f"questions -> found {c['found']} (n={c['ngram']}, min_overlap {c['min_overlap']}, {c['hits']} hits)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""The judge stage: LLM-as-a-judge grading of generated answers (Rakuda / Japanese MT-Bench).

Commands (``run`` is the default action, so the first two lines are the same)::

    ja-instruct judge RECIPE [--out DIR] [--set judge.KEY=VALUE] [--judge-prompts FILE] [--repeats N] [--retry-errors]
    ja-instruct judge run RECIPE ...
    ja-instruct judge import FILE... --out DIR [--questions Q]     # FastChat *_single / *_pair.jsonl

Python: ``ja_instruct.judge.run.run_judging(recipe, out_dir=None, *, retry_errors=None, ...) -> Path``.

Modes: ``single`` (1-10 per answer and turn; reference-guided for reference categories;
turn 2+ judged with the whole conversation), ``pairwise`` (every pair, BOTH orders; a
verdict that flips with the order is a tie and counts as an inconsistency),
``pairwise-baseline`` (every model vs ``baseline``, both orders).

Modules: `config` (JudgeConfig), `prompt` (our YAML prompts in ``prompts/`` and FastChat's
judge_prompts.jsonl), `parse` (every output format), `backends` (``openai`` / ``hf``
logprob judge / ``fake``; registry ``BACKENDS``), `store` (the append-only cache),
`engine` (concurrency, parse retries, usage), `single` / `pairwise` (what to judge),
`summary` (summary.json, its statistics from `ja_instruct.stats`:
Bradley-Terry with a position term, question-resampling bootstrap, position bias), `importer` (``judge import``), `run` (the entry point, the manifest).
The fault-injecting OpenAI-compatible server of the tests and the benchmark is
`ja_instruct.testing.loopback` (test doubles stay out of this package).

Outputs in the judge folder: ``cache.jsonl`` (every judgment, appended and fsynced as it
arrives: kill the run any time and re-run to resume; two runs may share it),
``judgments.jsonl``, ``summary.json``, ``config.yaml`` and, last, ``manifest.json``
(formats in docs/judge.md).
"""

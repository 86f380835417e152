"""Test doubles shared by the test suite and the benchmarks; never used by a stage.

* `ja_instruct.testing.loopback`: a fault-injecting OpenAI-compatible chat server on
  127.0.0.1 (`LoopbackJudgeServer`), for the judge's HTTP tests and ``benchmarks/judge_throughput.py``.

Kept out of the stage packages so that nothing a user runs can pick a test double by default.
"""

"""Fixtures of the report tests (helpers live in report_helpers.py, importable by name)."""

from __future__ import annotations

from pathlib import Path

import pytest

from report_helpers import RAKUDA_MODELS, write_judge_dir, write_synthetic_run

@pytest.fixture
def synthetic_run(tmp_path) -> dict:
    return write_synthetic_run(tmp_path / "run")

@pytest.fixture(scope="session")
def rakuda_report(shared_data, tmp_path_factory) -> Path:
    """A report over the real Rakuda answers of 5 models, judged by the fake judge (single + pairwise)."""
    from ja_instruct.report import build_report
    from ja_instruct.report.config import ReportConfig

    root = tmp_path_factory.mktemp("rakuda")
    judge = write_judge_dir(root / "judge", shared_data / "rakuda" / "answers", shared_data / "rakuda" / "questions.jsonl",
                            RAKUDA_MODELS, pairwise=True, parse_error_every=37)
    return build_report([judge], root / "report", ReportConfig(bootstrap=300), title="Rakuda (fake judge)")

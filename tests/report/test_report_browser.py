"""The report in a real browser: headless Chromium loads it offline with no script errors.

Chromium runs with networking features off and a throwaway profile. The page's first
script records every script/resource error into ``data-js-errors`` and, on ``load``,
counts decoded images into ``data-images-ok``; ``--dump-dom`` shows the DOM after load.
Skipped only where Chromium is absent (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import urllib.parse

import pytest

from report_helpers import CHROMIUM, run_chromium

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


def _attrs(dom: str) -> dict[str, str]:
    tag = re.search(r"<html[^>]*>", dom).group(0)
    return dict(re.findall(r'([\w-]+)="([^"]*)"', tag))


def test_rakuda_report_loads_without_errors_and_shows_plots(rakuda_report, tmp_path):
    url = rakuda_report.resolve().as_uri()
    dom = run_chromium(["--virtual-time-budget=10000", "--dump-dom", url], tmp_path)
    a = _attrs(dom)
    assert a.get("data-ready") == "1", "the page's script did not run to the load event"
    assert a.get("data-js-errors") == "", f"script errors: {a.get('data-js-errors')}"
    assert int(a["data-images-total"]) >= 6  # mean, box, histogram, categories, heat map, BT
    assert a["data-images-ok"] == a["data-images-total"], "some plot did not decode"
    assert dom.count('class="qrow"') == 40

    # the category filter (driven by the URL fragment here) hides the other categories' rows
    dom = run_chromium(["--virtual-time-budget=10000", "--dump-dom", url + "#category=" + urllib.parse.quote("歴史")],
                       tmp_path)
    assert _attrs(dom).get("data-js-errors") == ""
    rows = re.findall(r'<tr class="qrow" data-category="([^"]+)"([^>]*)>', dom)
    shown = [c for c, rest in rows if "hidden" not in rest]
    assert len(rows) == 40 and len(shown) == 10 and set(shown) == {"歴史"}
    assert "10 questions shown" in dom

    shot = tmp_path / "report.png"
    run_chromium(["--virtual-time-budget=10000", "--window-size=1400,2600", f"--screenshot={shot}", url], tmp_path)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG")
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1400, 2600) and len(data) > 50_000  # a rendered page, not a blank one
    keep = os.environ.get("JA_INSTRUCT_KEEP_SCREENSHOT")  # copy it somewhere to look at it
    if keep:
        shutil.copy(shot, keep)


def test_hostile_answers_stay_text_in_the_browser(synthetic_run, tmp_path):
    from ja_instruct.report import build_report
    from ja_instruct.report.config import ReportConfig

    page = build_report([synthetic_run["judge"]], tmp_path / "report", ReportConfig(bootstrap=100))
    dom = run_chromium(["--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()], tmp_path)
    a = _attrs(dom)
    assert a.get("data-ready") == "1" and a.get("data-js-errors") == ""
    assert "data-pwned" not in a, "an answer's <script> ran"
    assert "&lt;script&gt;document.documentElement.setAttribute" in dom
    assert a["data-images-ok"] == a["data-images-total"] == "7"

"""End to end in a real browser: `synthehr serve` as a subprocess, headless Chromium driven by Playwright.

The server runs on loopback on a free port with a temporary workspace and the `fake` LLM backend,
scripted to call the REAL tools: generate_cohort for the headline request (a real DP-GAN, kept tiny
with SYNTHEHR_TRAINING__EPOCHS=1), then answer; in the same conversation "what is their mean HbA1c?"
(cohort_stats on "last") and "plot their HbA1c distribution" (cohort_stats with a plot: the agent drops
plots the user did not ask for). The test checks what a clinician sees: the step blocks, the progress
bar, the download links (the CSV served has the requested rows), the data card, the mean matching
the CSV, the plot, the sidebar, a new conversation, and that the page loads nothing from outside the server. A screenshot goes to
tests/artifacts/web-screenshot.png.

Needs Debian's chromium (/usr/bin/chromium) and the `playwright` Python package (no browser download:
Playwright drives the system Chromium through executable_path). Skipped when either is missing,
unless SYNTHEHR_REQUIRE_BROWSER=1 (CI sets it), where a missing browser fails the test.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
HEADLINE = (
    "generate 2000 Type 2 diabetes patients EHR data with 20 important diabetes observations based on the US population"
)
FOLLOW_UP = "what is their mean HbA1c?"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TURN_TIMEOUT_MS = 240_000


def _chromium() -> str | None:
    for cand in (os.environ.get("SYNTHEHR_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                 shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if cand and Path(cand).is_file():
            return cand
    return None


def _need_browser() -> str:
    required = os.environ.get("SYNTHEHR_REQUIRE_BROWSER") == "1"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        if required:
            pytest.fail("the playwright package is missing: pip install playwright (no browser download needed)")
        pytest.skip("the playwright package is not installed (pip install playwright)")
    exe = _chromium()
    if exe is None:
        if required:
            pytest.fail("Chromium is missing: apt-get install -y chromium chromium-driver")
        pytest.skip("Chromium is not installed (apt-get install -y chromium chromium-driver)")
    return exe


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _react(thought: str, tool: str, args: dict[str, Any]) -> str:
    return f"Thought: {thought}\nAction: {tool}\nAction Input: {json.dumps(args)}"


def _final(text: str) -> str:
    return f"Thought: I can answer now\nFinal Answer: {text}"


# The fake LLM's replies, in order, across the three turns (the backend is strict: one more call fails).
# The agent grounds arguments in the user's words (it drops a plot nobody asked for), so the plot comes
# from a third request that asks for one.
SCRIPT = [
    _react("The user wants a synthetic cohort: generate it.", "generate_cohort",
           {"condition": "type 2 diabetes", "n": 2000, "observations": 20, "population": "US"}),
    _final("I generated the synthetic Type 2 diabetes cohort from NHANES 2017-2018 (US population); "
           "the data card lists the source, the model and epsilon. Download it below."),
    _react("They ask a statistic of the last data set.", "cohort_stats", {"dataset": "last", "columns": ["hba1c_pct"]}),
    _final("The mean HbA1c of these synthetic patients is in the cohort_stats result above."),
    _react("They want a plot of the last data set.", "cohort_stats",
           {"dataset": "last", "columns": ["hba1c_pct"], "plot": ["hba1c_pct"]}),
    _final("Here is the HbA1c distribution of the synthetic cohort."),
]
PLOT_REQUEST = "plot their HbA1c distribution"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT), encoding="utf-8")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHEHR_")}
    env.update({
        "SYNTHEHR_HOME": str(tmp_path / "ws"),
        "SYNTHEHR_LLM__BACKEND": "fake",
        "SYNTHEHR_LLM__MODEL": str(script),
        "SYNTHEHR_TRAINING__EPOCHS": "1", "SYNTHEHR_TRAINING__HIDDEN_DIM": "64",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False", "TQDM_DISABLE": "1",
        "PYTHONUNBUFFERED": "1",
    })
    log_path = tmp_path / "server.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "synthehr", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"synthehr serve exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"synthehr serve did not answer in 60 s:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        yield {"base": base, "log": log_path, "workspace": tmp_path / "ws"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _mean(values: list[str]) -> float:
    nums = [float(v) for v in values if v not in ("", "NA", "nan", "NaN")]
    return sum(nums) / len(nums)


def test_chat_page_end_to_end(server: dict[str, Any], tmp_path: Path) -> None:
    exe = _need_browser()
    from playwright.sync_api import expect, sync_playwright

    base = server["base"]
    outside: list[str] = []
    problems: list[str] = []
    timings: dict[str, float] = {}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=exe, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1360, "height": 1080}, accept_downloads=True)
        try:
            page = ctx.new_page()
            page.on("request", lambda r: None if r.url.startswith((base, "data:", "blob:")) else outside.append(r.url))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            t0 = time.monotonic()
            page.goto(base + "/")
            expect(page.locator("body[data-ready='1']")).to_have_count(1, timeout=30_000)
            expect(page.locator("#new-chat")).to_be_visible()

            # ---- the headline request ----
            page.fill("#input", HEADLINE)
            page.click("#send")
            turn1 = page.locator(".msg.assistant").nth(0)
            expect(turn1.locator(".answer")).to_be_visible(timeout=TURN_TIMEOUT_MS)
            try:
                expect(turn1.locator(".answer.error")).to_have_count(0)
            except AssertionError:
                raise AssertionError(
                    f"the turn failed: {turn1.locator('.answer').inner_text()}\n"
                    f"{server['log'].read_text(errors='replace')[-3000:]}") from None
            timings["turn 1 (train + generate)"] = time.monotonic() - t0
            expect(page.locator(".msg.user").nth(0)).to_have_text(HEADLINE)

            # one collapsible block per step, each with its arguments and a short observation
            gen = turn1.locator("details.step[data-tool='generate_cohort']")
            expect(gen).to_have_count(1)
            expect(gen).to_have_class("step done")
            gen.locator("summary").click()
            args = json.loads(gen.locator("pre.args").inner_text())
            assert "diabetes" in str(args.get("condition", "")).lower()
            n_requested = int(args["n"])
            assert gen.locator("pre.observation").inner_text().strip()

            # the progress indicator shown while the generator trained (kept, marked finished)
            expect(turn1.locator(".progress")).not_to_have_count(0)

            # the data card with download links; the CSV has the requested rows
            card = turn1.locator(".dataset-card")
            expect(card).to_have_count(1)
            expect(card).to_contain_text("Privacy ε")
            expect(card).to_contain_text("Nutrition Examination Survey 2017-2018")
            csv_href = card.locator("a.download-csv").get_attribute("href")
            assert csv_href and csv_href.startswith("/files/")
            resp = page.request.get(base + csv_href)
            assert resp.status == 200
            assert "attachment" in resp.headers.get("content-disposition", "")
            rows = list(csv.DictReader(io.StringIO(resp.text())))
            assert len(rows) == n_requested
            assert len(rows[0]) >= 10  # the requested observations (those the source has) plus demographics
            parquet_href = card.locator("a.download-parquet").get_attribute("href")
            assert page.request.get(base + parquet_href).body()[:4] == b"PAR1"
            # a real browser download of the CSV link
            with page.expect_download() as dl:
                card.locator("a.download-csv").click()
            assert Path(dl.value.path()).stat().st_size == len(resp.body())

            # the answer's file paths are links to the served files, not server paths
            assert str(server["workspace"]) not in turn1.locator(".answer").inner_text()

            # the sidebar lists the data set with its epsilon and source
            side = page.locator("#datasets .dataset-item")
            expect(side).to_have_count(1)
            expect(side.first).to_contain_text("ε")
            expect(side.first).to_contain_text("Nutrition Examination Survey 2017-2018")

            # ---- the follow-up, same conversation ----
            t1 = time.monotonic()
            page.fill("#input", FOLLOW_UP)
            page.press("#input", "Enter")
            turn2 = page.locator(".msg.assistant").nth(1)
            expect(turn2.locator(".answer")).to_be_visible(timeout=TURN_TIMEOUT_MS)
            timings["turn 2 (follow-up)"] = time.monotonic() - t1
            expect(turn2.locator(".answer.error")).to_have_count(0)
            expect(turn2.locator(".answer")).to_contain_text(re.compile(r"hba1c", re.I))
            step2 = turn2.locator("details.step[data-tool='cohort_stats']")
            expect(step2).to_have_count(1)
            step2.locator("summary").click()
            obs = step2.locator("pre.observation").inner_text()
            ds_id = card.get_attribute("data-dataset")
            assert ds_id and ds_id in obs, obs  # "their" resolved to the cohort generated above
            hba1c_col = next(c for c in rows[0] if "hba1c" in c.lower())
            want = _mean([r[hba1c_col] for r in rows])
            m = re.search(r"mean (-?\d+(?:\.\d+)?)", obs)
            assert m, obs
            assert abs(float(m.group(1)) - want) <= 0.01 * abs(want) + 0.006, (want, obs)  # 3 significant digits
            expect(page.locator("#sessions li.current")).to_have_count(1)

            # ---- a plot, inline: a PNG the browser decoded ----
            page.fill("#input", PLOT_REQUEST)
            page.click("#send")
            turn3 = page.locator(".msg.assistant").nth(2)
            expect(turn3.locator(".answer")).to_be_visible(timeout=TURN_TIMEOUT_MS)
            expect(turn3.locator(".answer.error")).to_have_count(0)
            img = turn3.locator(".plots img").first
            expect(img).to_be_visible()
            assert page.request.get(base + img.get_attribute("src")).body()[:8] == b"\x89PNG\r\n\x1a\n"
            assert img.evaluate("i => i.complete && i.naturalWidth") > 100
            expect(turn3.locator(".dataset-card")).to_have_count(0)  # no second card for a statistics turn

            step2.locator("summary").click()
            page.locator(".msg.user").nth(1).evaluate("m => m.scrollIntoView({block: 'start'})")
            page.screenshot(path=str(ARTIFACTS / "web-screenshot-followup.png"), full_page=False)
            gen.locator("summary").click()  # fold the step again: the screenshot shows the whole first turn
            page.locator(".msg.user").nth(0).evaluate("m => m.scrollIntoView({block: 'start'})")
            page.screenshot(path=str(ARTIFACTS / "web-screenshot.png"), full_page=False)

            # ---- a new conversation starts empty; the data set stays in the sidebar ----
            page.click("#new-chat")
            expect(page.locator(".msg")).to_have_count(0)
            expect(page.locator("#welcome")).to_be_visible()
            expect(page.locator("#datasets .dataset-item")).to_have_count(1)

            # ---- the earlier conversation, reopened from the sidebar, shows again from the workspace ----
            page.locator("#sessions button.session").first.click()
            expect(page.locator(".msg.user")).to_have_count(3)
            expect(page.locator(".msg.user").nth(0)).to_have_text(HEADLINE)
            expect(page.locator(".msg.assistant .dataset-card")).to_have_count(1)
            expect(page.locator(".msg.assistant .plots img")).not_to_have_count(0)
            expect(page.locator(".msg.assistant details.step")).to_have_count(3)
        finally:
            ctx.close()
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    assert not outside, f"the page fetched from outside the server: {outside}"
    assert not problems, f"console errors: {problems}"

"""End to end in a real browser: `synthehr serve` as a subprocess, headless Chromium driven by Playwright.

The server runs on loopback on a free port with a temporary workspace and the `fake` LLM backend,
scripted to call the REAL tools (a real DP-GAN, kept tiny with SYNTHEHR_TRAINING__EPOCHS=1, and the real
knowledge index, built in the background when the server starts). A clinician's conversation:

1. the headline request -> a readable answer (streamed as it is written) with n, the data card (an HTML
   page, no server paths) and the downloads (the CSV served has the requested rows); while it trains, "make them older" is typed and
   sent: it is queued (kept, shown as such) and sent when the first answer is done;
2. "make them older" -> a second cohort, labelled in the sidebar with its age filter;
3. "what is their mean HbA1c?" -> the mean of the CSV;
4. a provenance question -> sources naming NHANES and the ADA guideline (from the retrieval);
5. "plot their HbA1c distribution" -> an inline PNG whose alt text states the figure's numbers;
6. reload -> every answer, step, card, plot and source is back;
7. phone width -> the menu opens the sidebar (data sets and conversations) and closes again.

Screenshots of each state go to tests/artifacts/web-*.png (gitignored), to be looked at.

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


# The fake LLM's replies, in order, across the turns (the backend is strict: one more call fails). The
# agent grounds arguments in the user's words ("make them older" becomes an age filter on the last cohort;
# a plot nobody asked for is dropped).
OLDER = "make them older"
PROVENANCE = "which real-world data sources and guidelines was this based on?"
PLOT_REQUEST = "plot their HbA1c distribution"
SCRIPT = [
    _react("The user wants a synthetic cohort: generate it.", "generate_cohort",
           {"condition": "type 2 diabetes", "n": 2000, "observations": 20, "population": "US"}),
    _final("I generated 2000 synthetic Type 2 diabetes patients from NHANES 2017-2018 (US population); "
           "the data card lists the source, the model and epsilon. Download it below."),
    _react("The same cohort, older.", "generate_cohort", {"condition": "type 2 diabetes", "n": 2000}),
    _final("I generated an older version of the cohort (age 65 and over)."),
    _react("They ask a statistic of the last data set.", "cohort_stats", {"dataset": "last", "columns": ["hba1c_pct"]}),
    _final("The mean HbA1c of these synthetic patients is in the cohort_stats result above."),
    _react("Where the data came from: retrieve it.", "explain_provenance", {"question": PROVENANCE, "dataset": "last"}),
    _final("It is based on NHANES 2017-2018 (CDC/NCHS) and the ADA Standards of Care in Diabetes; see the sources."),
    _react("They want a plot of the last data set.", "cohort_stats",
           {"dataset": "last", "columns": ["hba1c_pct"], "plot": ["hba1c_pct"]}),
    _final("Here is the HbA1c distribution of the synthetic cohort."),
]


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(getattr(request, "param", SCRIPT)), encoding="utf-8")
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


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"web-{name}.png"), full_page=False)


def test_chat_page_end_to_end(server: dict[str, Any], tmp_path: Path) -> None:
    exe = _need_browser()
    from playwright.sync_api import expect, sync_playwright

    base = server["base"]
    ws_path = str(server["workspace"])
    outside: list[str] = []
    problems: list[str] = []
    timings: dict[str, float] = {}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("web-*.png"):
        old.unlink()
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=exe, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1360, "height": 1000}, accept_downloads=True)
        try:
            page = ctx.new_page()
            page.on("request", lambda r: None if r.url.startswith((base, "data:", "blob:")) else outside.append(r.url))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            t0 = time.monotonic()
            page.goto(base + "/")
            expect(page.locator("body[data-ready='1']")).to_have_count(1, timeout=30_000)
            expect(page.locator("#new-chat")).to_be_visible()
            expect(page.locator("#menu-toggle")).to_be_hidden()  # desktop: the sidebar is always there
            # Record every live answer area the page shows while an answer is written (it is replaced by the
            # final answer when the turn ends, so the DOM alone would not show that it streamed).
            page.evaluate("""() => { window.__streamed = []; new MutationObserver((ms) => { for (const m of ms)
                for (const n of m.addedNodes) if (n.classList && n.classList.contains('streaming'))
                  window.__streamed.push(n); }).observe(document.getElementById('messages'),
                  { childList: true, subtree: true }); }""")

            # ---- 1. the headline request; "make them older" typed and sent while it trains ----
            page.fill("#input", HEADLINE)
            page.click("#send")
            turn1 = page.locator(".msg.assistant").nth(0)
            expect(turn1.locator(".progress").first).to_be_visible(timeout=TURN_TIMEOUT_MS)  # training
            expect(page.locator("#stop")).to_be_visible()
            expect(page.locator("body[data-busy='1']")).to_have_count(1)
            page.fill("#input", OLDER)
            page.press("#input", "Enter")
            queued = page.locator(".msg.user.queued")
            expect(queued).to_have_count(1)
            expect(queued).to_contain_text(OLDER)
            expect(queued).to_contain_text("Queued")
            label = turn1.locator(".progress .label").first.inner_text()
            detail = turn1.locator(".progress .detail").first.inner_text()
            assert "loss" not in (label + detail).lower(), (label, detail)
            _shot(page, "01-training-with-queued-message")

            expect(turn1.locator(".answer")).to_be_visible(timeout=TURN_TIMEOUT_MS)
            try:
                expect(turn1.locator(".answer.error")).to_have_count(0)
            except AssertionError:
                raise AssertionError(
                    f"the turn failed: {turn1.locator('.answer').inner_text()}\n"
                    f"{server['log'].read_text(errors='replace')[-3000:]}") from None
            timings["turn 1 (train + generate)"] = time.monotonic() - t0
            # The answer streamed as it was written (the scripted model's draft, then the checked answer), and the
            # live area gave way to the final answer.
            streamed = page.evaluate("window.__streamed.map((n) => n.textContent)")
            assert streamed and any(t.strip() for t in streamed), streamed
            expect(turn1.locator(".answer.streaming")).to_have_count(0)
            expect(page.locator(".msg.user").nth(0)).to_have_text(HEADLINE)
            answer1 = turn1.locator(".answer").inner_text()
            assert answer1.strip() and ws_path not in answer1

            gen = turn1.locator("details.step[data-tool='generate_cohort']")
            expect(gen).to_have_count(1)
            expect(gen).to_have_class("step done")
            gen.locator("summary").click()
            args = json.loads(gen.locator("pre.args").inner_text())
            assert "diabetes" in str(args.get("condition", "")).lower()
            n_requested = int(args["n"])
            gen.locator("summary").click()
            expect(turn1.locator(".progress.finished")).not_to_have_count(0)  # the bar ended with the step

            card = turn1.locator(".dataset-card")
            expect(card).to_have_count(1)
            expect(card).to_contain_text(f"{n_requested} synthetic patients")
            expect(card).to_contain_text("Privacy ε")
            expect(card).to_contain_text("Nutrition Examination Survey 2017-2018")
            csv_href = card.locator("a.download-csv").get_attribute("href")
            assert csv_href and csv_href.startswith("/files/")
            resp = page.request.get(base + csv_href)
            assert resp.status == 200 and "attachment" in resp.headers.get("content-disposition", "")
            rows = list(csv.DictReader(io.StringIO(resp.text())))
            assert len(rows) == n_requested
            assert len(rows[0]) >= 10  # the requested observations (those the source has) plus demographics
            with page.expect_download() as dl:
                card.locator("a.download-csv").click()
            assert Path(dl.value.path()).stat().st_size == len(resp.body())
            first_id = card.get_attribute("data-dataset")
            _shot(page, "02-headline-answer")

            # the data card as a page: rendered, relative paths, nothing from the server's file system
            card_href = card.locator("a.card-link").get_attribute("href")
            assert card_href == f"/datasets/{first_id}/card"
            card_page = ctx.new_page()
            card_page.goto(base + card_href)
            expect(card_page.locator("article h1")).to_contain_text(first_id)
            expect(card_page.locator("article table")).not_to_have_count(0)
            card_text = card_page.locator("body").inner_text()
            assert ws_path not in card_text and f"datasets/{first_id}/data.csv" in card_text
            card_page.screenshot(path=str(ARTIFACTS / "web-03-data-card-page.png"))
            card_page.close()

            # ---- 2. the queued "make them older" ran by itself ----
            turn2 = page.locator(".msg.assistant").nth(1)
            expect(turn2.locator(".answer")).to_be_visible(timeout=TURN_TIMEOUT_MS)
            expect(turn2.locator(".answer.error")).to_have_count(0)
            expect(page.locator(".msg.user.queued")).to_have_count(0)
            expect(page.locator(".msg.user").nth(1)).to_have_text(OLDER)
            card2 = turn2.locator(".dataset-card")
            expect(card2).to_have_count(1)
            expect(card2).to_contain_text("≥ 65")
            older_id = card2.get_attribute("data-dataset")
            assert older_id != first_id
            side = page.locator("#datasets .dataset-item")
            expect(side).to_have_count(2)
            expect(page.locator(f"#datasets .dataset-item[data-dataset='{older_id}'] .ds-filters")).to_contain_text("≥ 65")
            expect(page.locator(f"#datasets .dataset-item[data-dataset='{first_id}'] .ds-filters")).to_contain_text("no filters")
            older_rows = list(csv.DictReader(io.StringIO(page.request.get(
                base + card2.locator("a.download-csv").get_attribute("href")).text())))
            age_col = next(c for c in older_rows[0] if c.lower().startswith("age"))
            assert min(float(r[age_col]) for r in older_rows if r[age_col]) >= 65
            _shot(page, "04-make-them-older")

            # ---- 3. the mean HbA1c ----
            page.fill("#input", FOLLOW_UP)
            page.press("#input", "Enter")
            turn3 = page.locator(".msg.assistant").nth(2)
            expect(turn3.locator(".answer")).to_be_visible(timeout=TURN_TIMEOUT_MS)
            expect(turn3.locator(".answer.error")).to_have_count(0)
            step3 = turn3.locator("details.step[data-tool='cohort_stats']")
            expect(step3).to_have_count(1)
            step3.locator("summary").click()
            obs = step3.locator("pre.observation").inner_text()
            assert older_id in obs, obs  # "their" is the cohort made last
            hba1c_col = next(c for c in older_rows[0] if "hba1c" in c.lower())
            want = _mean([r[hba1c_col] for r in older_rows])
            m = re.search(r"mean (-?\d+(?:\.\d+)?)", obs)
            assert m, obs
            assert abs(float(m.group(1)) - want) <= 0.01 * abs(want) + 0.006, (want, obs)  # 3 significant digits
            step3.locator("summary").click()
            _shot(page, "05-mean-hba1c")

            # ---- 4. provenance: NHANES and the ADA guideline, from the retrieval ----
            page.fill("#input", PROVENANCE)
            page.press("#input", "Enter")
            turn4 = page.locator(".msg.assistant").nth(3)
            expect(turn4.locator(".answer")).to_be_visible(timeout=TURN_TIMEOUT_MS)
            expect(turn4.locator(".answer.error")).to_have_count(0)
            expect(turn4.locator("details.step[data-tool='explain_provenance']")).to_have_class("step done")
            sources = turn4.locator(".citations li")
            expect(sources).not_to_have_count(0)
            src_text = turn4.locator(".citations").inner_text()
            assert re.search(r"\bADA\b|American Diabetes Association", src_text), src_text
            assert "Nutrition Examination Survey 2017-2018" in src_text, src_text  # the data set's own source
            answer4 = turn4.locator(".answer").inner_text()
            # The answer writer names the survey and the guideline in words a clinician reads.
            assert re.search(r"NHANES|Nutrition Examination Survey", answer4), answer4
            assert re.search(r"\bADA\b|American Diabetes Association", answer4), answer4
            _shot(page, "06-provenance")

            # ---- 5. a plot, inline, with its numbers as alt text ----
            page.fill("#input", PLOT_REQUEST)
            page.click("#send")
            turn5 = page.locator(".msg.assistant").nth(4)
            expect(turn5.locator(".answer")).to_be_visible(timeout=TURN_TIMEOUT_MS)
            expect(turn5.locator(".answer.error")).to_have_count(0)
            img = turn5.locator(".plots img").first
            expect(img).to_be_visible()
            assert page.request.get(base + img.get_attribute("src")).body()[:8] == b"\x89PNG\r\n\x1a\n"
            page.wait_for_function("i => i.complete && i.naturalWidth > 100", arg=img.element_handle())
            alt = img.get_attribute("alt") or ""
            assert alt.startswith("Histogram of") and "HbA1c" in alt and "median" in alt, alt
            m = re.search(r"mean (-?\d+(?:\.\d+)?)", alt)
            assert m and abs(float(m.group(1)) - want) <= 0.01 * abs(want) + 0.006, (want, alt)  # the CSV's mean
            expect(turn5.locator(".dataset-card")).to_have_count(0)  # no card for a statistics turn
            page.locator(".msg.user").nth(4).evaluate("m => m.scrollIntoView({block: 'start'})")
            _shot(page, "07-plot")
            timings["turns 1-5"] = time.monotonic() - t0

            # ---- 6. reload: everything comes back ----
            before = {
                "answers": [a.inner_text() for a in page.locator(".msg.assistant .answer").all()],
                "steps": page.locator(".msg.assistant details.step").count(),
                "cards": page.locator(".msg.assistant .dataset-card").count(),
                "plots": page.locator(".msg.assistant .plots img").count(),
                "sources": page.locator(".msg.assistant .citations li").count(),
            }
            draft = "now only women, please"
            page.locator("#input").press_sequentially(draft)  # typed, not sent: a reload keeps it
            page.reload()
            expect(page.locator("body[data-ready='1']")).to_have_count(1, timeout=30_000)
            expect(page.locator("#input")).to_have_value(draft)
            expect(page.locator(".msg.user")).to_have_count(5)
            after = {
                "answers": [a.inner_text() for a in page.locator(".msg.assistant .answer").all()],
                "steps": page.locator(".msg.assistant details.step").count(),
                "cards": page.locator(".msg.assistant .dataset-card").count(),
                "plots": page.locator(".msg.assistant .plots img").count(),
                "sources": page.locator(".msg.assistant .citations li").count(),
            }
            assert after == before, (before, after)
            assert all(a.strip() for a in after["answers"]) and before["cards"] == 2 and before["plots"] >= 1
            alt_after = page.locator(".msg.assistant").nth(4).locator(".plots img").first.get_attribute("alt")
            assert alt_after == alt
            page.locator(".msg.user").nth(3).evaluate("m => m.scrollIntoView({block: 'start'})")
            _shot(page, "08-after-reload")

            # ---- a new conversation starts empty; reopening the first one from the sidebar restores it ----
            page.click("#new-chat")
            expect(page.locator(".msg")).to_have_count(0)
            expect(page.locator("#welcome")).to_be_visible()
            page.locator("#sessions button.session").first.click()
            expect(page.locator(".msg.user")).to_have_count(5)
            expect(page.locator(".msg.assistant .dataset-card")).to_have_count(2)

            # ---- 7. phone width: the menu opens the sidebar and closes it ----
            page.set_viewport_size({"width": 390, "height": 844})
            toggle = page.locator("#menu-toggle")
            expect(toggle).to_be_visible()
            expect(page.locator("#sidebar")).not_to_be_in_viewport()
            page.locator(".msg.user").nth(0).evaluate("m => m.scrollIntoView({block: 'start'})")
            _shot(page, "09-phone-chat")
            toggle.click()
            expect(page.locator("#sidebar")).to_be_in_viewport()
            expect(page.locator("#datasets .dataset-item")).to_have_count(2)
            expect(page.locator("#datasets .ds-filters").first).to_be_visible()
            expect(toggle).to_have_attribute("aria-expanded", "true")
            page.wait_for_timeout(300)  # the drawer's slide-in transition, for the screenshot
            _shot(page, "10-phone-menu")
            page.locator("#sessions button.session").first.click()  # choosing a conversation closes the menu
            expect(page.locator("#sidebar")).not_to_be_in_viewport()
            expect(page.locator(".msg.user")).to_have_count(5)
            inner_w = page.evaluate("document.documentElement.scrollWidth")
            assert inner_w <= 390, f"the page scrolls sideways at phone width ({inner_w}px)"
        finally:
            ctx.close()
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    assert not outside, f"the page fetched from outside the server: {outside}"
    assert not problems, f"console errors: {problems}"


STOP_REQUEST = "generate 300 type 2 diabetes patients"
STOP_SCRIPT = [_react("A cohort: generate it (a fresh workspace has no model: it trains one).", "generate_cohort",
                      {"condition": "type 2 diabetes", "n": 300})]


@pytest.mark.slow
@pytest.mark.parametrize("server", [STOP_SCRIPT], indirect=True)
def test_stop_button_ends_a_training_turn(server: dict[str, Any], tmp_path: Path) -> None:
    """Stop during a training: the page says the charge stays, the ledger has it, no data set was written."""
    import sqlite3

    exe = _need_browser()
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=exe, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1200, "height": 800})
        try:
            page = ctx.new_page()
            page.goto(server["base"] + "/")
            expect(page.locator("body[data-ready='1']")).to_have_count(1, timeout=30_000)
            page.fill("#input", STOP_REQUEST)
            page.press("#input", "Enter")
            turn = page.locator(".msg.assistant").nth(0)
            expect(turn.locator(".progress").first).to_be_visible(timeout=TURN_TIMEOUT_MS)  # training started
            page.click("#stop")
            expect(turn.locator(".answer.cancelled")).to_be_visible(timeout=TURN_TIMEOUT_MS)
            expect(turn.locator(".answer.cancelled")).to_contain_text("stays on the ledger")
            expect(turn.locator("details.step.stopped")).to_have_count(1)
            expect(turn.locator(".progress.stopped")).to_have_count(1)  # the bar does not claim "done"
            expect(page.locator("#stop")).to_be_hidden()
            expect(page.locator("#input")).to_be_enabled()
            page.screenshot(path=str(ARTIFACTS / "web-11-stopped.png"))
        finally:
            ctx.close()
    db = sqlite3.connect(server["workspace"] / "synthehr.db")
    try:
        charges = db.execute("SELECT epsilon FROM ledger").fetchall()
        datasets = db.execute("SELECT id FROM datasets").fetchall()
        runs = db.execute("SELECT status FROM runs WHERE kind = 'train'").fetchall()
    finally:
        db.close()
    assert charges and sum(c[0] for c in charges) > 0  # charged before training: kept
    assert datasets == []
    assert runs == [("failed",)]

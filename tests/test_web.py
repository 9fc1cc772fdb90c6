"""The web page at ``/`` in a real browser: headless Chromium driven by Selenium.

The server is the real one (``scripts/serve.py``, uvicorn in a subprocess on a free
loopback port) over an index of the sample corpus ``data/`` built with
``configs/offline.yaml``, started with two configs: ``offline`` (dense + reranker) and
``dense-only`` (the same file with the reranker disabled) for compare mode.

Skipped, with the reason, where Selenium, Chromium or chromedriver is missing; CI
installs Debian's ``chromium`` and ``chromium-driver`` (.ci/run). Chromium runs with
the given binary and driver, so Selenium Manager never downloads anything.
The screenshot for the README is ``docs/web-page.png``: written when missing, refreshed
with ``UPDATE_SCREENSHOT=1``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow  # builds an index and loads two models: about a minute

ROOT = Path(__file__).resolve().parents[1]
QUERY = "symptoms of vitamin D deficiency"
DEFICIENCY_PAGE = "health/vitamin-d-deficiency.md"
SCREENSHOT = ROOT / "docs" / "web-page.png"
SCREENSHOT_LIMIT = 300 * 1024
WAIT_S = 60  # for one answer in the page (a cold reranker on a busy CPU)

CHROMIUM = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or shutil.which("chromium-browser") or ""
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver") or ""
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


def _missing_browser() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    if not CHROMIUM or not Path(CHROMIUM).exists():
        return "no Chromium installed (apt-get install chromium chromium-driver; or set CHROMIUM_BIN)"
    if not CHROMEDRIVER or not Path(CHROMEDRIVER).exists():
        return "no chromedriver installed (apt-get install chromium-driver; or set CHROMEDRIVER)"
    return None


_MISSING = _missing_browser()
if _MISSING:
    pytest.skip(f"browser test skipped: {_MISSING}", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

# ---- the real server ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # the server package may be newer than the editable install's package list
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.pop("RAG_API_KEY", None)
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``scripts/serve.py`` over an index of data/, with configs offline and dense-only; yields its base URL."""
    tmp = tmp_path_factory.mktemp("web")
    index = tmp / "index"
    build = subprocess.run(
        [sys.executable, "scripts/build_index.py", "data/", "--index", str(index), "--config", "configs/offline.yaml"],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, f"build_index.py failed:\n{build.stdout}\n{build.stderr}"

    # The page is tested with the reranker settings it was verified with (exact torch scores mixed at 0.5),
    # pinned here so that retuning the shipped config's backend or weight cannot change what the page shows.
    offline = yaml.safe_load((ROOT / "configs" / "offline.yaml").read_text())
    offline["reranker"].update(model=str(ROOT / "models" / "minilm-reranker"), backend="torch", quantize="none",
                               calibrate=False, weight=0.5, mix="minmax")
    offline_path = tmp / "offline.yaml"
    offline_path.write_text(yaml.safe_dump(offline))
    dense_only = yaml.safe_load(yaml.safe_dump(offline))
    dense_only["reranker"]["enabled"] = False
    dense_only_path = tmp / "dense-only.yaml"
    dense_only_path.write_text(yaml.safe_dump(dense_only))

    port = _free_port()
    log_path = tmp / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "scripts/serve.py", "--config", str(offline_path),
             "--config", f"dense-only={dense_only_path}", "--index", str(index),
             "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve.py exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve.py not ready after 300 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- the browser -------------------------------------------------------------------------------


def chromium(profile, *flags: str):
    """Headless Debian Chromium through its chromedriver, with a fresh ``profile`` folder; quit when done."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,1000", *flags):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp("chromium-profile"), "--lang=en-US")
    try:
        yield driver
    finally:
        driver.quit()


def _open(browser, base: str, width: int = 1280, height: int = 1000) -> None:
    """Load the page fresh and wait until the server's configs are in the select."""
    browser.set_window_size(width, height)
    browser.get(base + "/")
    WebDriverWait(browser, 30).until(lambda d: len(Select(d.find_element(By.ID, "config")).options) >= 2)


def _answered(browser) -> int:
    return int(browser.find_element(By.ID, "results").get_attribute("data-answered") or 0)


def _submit(browser, action) -> None:
    """Do ``action`` (which submits the form) and wait until the page has shown that answer or its error."""
    before = _answered(browser)
    action()
    try:
        WebDriverWait(browser, WAIT_S).until(lambda d: _answered(d) > before)
    except TimeoutException:
        pytest.fail(f"no answer within {WAIT_S} s; page text:\n{browser.find_element(By.TAG_NAME, 'body').text}")


def _ask(browser, query: str) -> None:
    """Type the query and press Enter (the keyboard path), then wait for the answer or an error."""
    box = browser.find_element(By.ID, "query")
    box.clear()
    box.send_keys(query)
    _submit(browser, lambda: box.send_keys(Keys.ENTER))


def _docs(column) -> list[str]:
    return [li.get_attribute("data-doc") for li in column.find_elements(By.CSS_SELECTOR, "ol.hits > li.hit")]


def _no_error(browser) -> None:
    error = browser.find_element(By.ID, "error")
    assert not error.is_displayed(), f"the page shows an error: {error.text}"


# ---- tests -------------------------------------------------------------------------------------


def test_vitamin_d_query_shows_both_lists_with_the_deficiency_page_first(server, browser):
    _open(browser, server)
    config = Select(browser.find_element(By.ID, "config"))
    assert [o.get_attribute("value") for o in config.options] == ["offline", "dense-only"]
    assert browser.find_element(By.ID, "top-k").get_attribute("value") == "50"  # the config's defaults
    assert browser.find_element(By.ID, "top-n").get_attribute("value") == "5"
    assert browser.find_element(By.ID, "weight-value").text == "0.50"

    _ask(browser, QUERY)
    _no_error(browser)
    retrieved = browser.find_element(By.CSS_SELECTOR, "#results .column.retrieved")
    reranked = browser.find_element(By.CSS_SELECTOR, "#results .column.reranked")
    assert retrieved.is_displayed() and reranked.is_displayed()
    # side by side on a wide window
    assert reranked.location["x"] > retrieved.location["x"] + retrieved.size["width"] / 2
    assert abs(reranked.location["y"] - retrieved.location["y"]) < 5

    retrieved_docs, reranked_docs = _docs(retrieved), _docs(reranked)
    assert len(retrieved_docs) == 10  # the first 10 of top_k 50, the rest behind "show all"
    assert len(reranked_docs) == 5
    assert reranked_docs[0] == DEFICIENCY_PAGE, reranked_docs

    first = reranked.find_element(By.CSS_SELECTOR, "li.hit")
    assert DEFICIENCY_PAGE in first.find_element(By.CSS_SELECTOR, ".source").text
    assert float(first.find_element(By.CSS_SELECTOR, ".score").text) > 0
    # rank-change arrows: every reranked hit has one, and the reranker moved something up
    moves = [m.text for m in reranked.find_elements(By.CSS_SELECTOR, ".move")]
    assert len(moves) == 5 and any(m.startswith("▲") for m in moves), moves
    # the query's terms are marked in the passages; stop words are not
    marked = {m.text.lower() for m in browser.find_elements(By.CSS_SELECTOR, "#results .passage mark")}
    assert {"vitamin", "deficiency"} <= marked, marked
    assert "of" not in marked
    # per-stage timings
    stages = [dt.text for dt in browser.find_elements(By.CSS_SELECTOR, "#results .timings dt")]
    assert {"embed", "search", "rerank", "total"} <= set(stages), stages
    # the retrieved list says where each kept hit ended up
    assert retrieved.find_elements(By.CSS_SELECTOR, ".kept")

    # "show all" reveals the rest of top_k
    retrieved.find_element(By.CSS_SELECTOR, "button.show-all").click()
    assert len(_docs(retrieved)) == 50

    # the question is in the URL, so reloading asks it again
    assert "q=symptoms+of+vitamin+D+deficiency" in browser.current_url

    _save_screenshot(browser)


def test_why_explains_a_candidate_that_left_the_list_and_one_that_stayed(server, browser):
    """Clicking "why?" shows the server's explanation of that candidate (the same request with explain)."""
    _open(browser, server)
    _ask(browser, QUERY)
    _no_error(browser)
    retrieved = browser.find_element(By.CSS_SELECTOR, "#results .column.retrieved")
    dropped = retrieved.find_element(By.CSS_SELECTOR, "li.hit.not-kept")
    dropped.find_element(By.CSS_SELECTOR, "button.why-button").click()
    why = WebDriverWait(browser, WAIT_S).until(lambda d: dropped.find_elements(By.CSS_SELECTOR, ".why"))[0]
    assert "first stage" in why.text and "calibrated" in why.text and "not in the final list" in why.text, why.text
    assert any(reason in why.text for reason in ("ranked below top_n", "most chunks allowed", "merged")), why.text
    request = urllib.request.Request(server + "/v1/ask", data=json.dumps(
        {"query": QUERY, "config": "offline", "explain": True}).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        explain = json.load(response)["explain"]
    candidate = next(c for c in explain["candidates"] if c["chunk_id"] == dropped.get_attribute("data-chunk"))
    assert f"#{candidate['first_stage']['rank']}" in why.find_element(By.CSS_SELECTOR, ".why-first-stage").text

    kept = browser.find_element(By.CSS_SELECTOR, "#results .column.reranked li.hit")
    button = kept.find_element(By.CSS_SELECTOR, "button.why-button")
    button.click()
    shown = WebDriverWait(browser, WAIT_S).until(lambda d: kept.find_elements(By.CSS_SELECTOR, ".why"))[0]
    assert shown.find_element(By.CSS_SELECTOR, ".why-final").text.endswith("#1")
    button.click()  # a second click hides it
    assert not kept.find_elements(By.CSS_SELECTOR, ".why") and button.get_attribute("aria-expanded") == "false"
    _no_error(browser)


def _save_screenshot(browser) -> None:
    """docs/web-page.png: the top of the answer page, under the size limit."""
    browser.get(browser.current_url)  # a fresh render (retrieved list folded to 10 again)
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#results .column.reranked li"))
    browser.set_window_size(1280, 1100)
    browser.execute_script("document.activeElement && document.activeElement.blur()")
    time.sleep(0.3)
    png = browser.get_screenshot_as_png()
    assert png.startswith(b"\x89PNG")
    assert len(png) < SCREENSHOT_LIMIT, f"screenshot is {len(png)} bytes"
    # refreshed on request only, so a test run leaves the working tree clean
    if not SCREENSHOT.exists() or os.environ.get("UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(png)


def test_reranker_off_and_controls_reach_the_server(server, browser):
    _open(browser, server)
    browser.find_element(By.ID, "reranker").click()  # off
    assert not browser.find_element(By.ID, "weight").is_enabled()
    top_k = browser.find_element(By.ID, "top-k")
    top_k.clear()
    top_k.send_keys("7")
    _ask(browser, QUERY)
    _no_error(browser)
    assert len(_docs(browser.find_element(By.CSS_SELECTOR, "#results .column.retrieved"))) == 7
    assert "Reranker off" in browser.find_element(By.CSS_SELECTOR, "#results .column.reranked").text
    assert "reranker off" in browser.find_element(By.CSS_SELECTOR, "#results .run-head").text
    assert not [dt for dt in browser.find_elements(By.CSS_SELECTOR, "#results .timings dt") if dt.text == "rerank"]

    # weight 0: the final score is the first stage's alone, so the lists agree
    browser.find_element(By.ID, "reranker").click()  # on
    weight = browser.find_element(By.ID, "weight")
    browser.execute_script(
        "arguments[0].value = '0'; arguments[0].dispatchEvent(new Event('input', {bubbles: true}))", weight)
    assert browser.find_element(By.ID, "weight-value").text == "0.00"
    _submit(browser, browser.find_element(By.ID, "ask-button").click)
    _no_error(browser)
    reranked = browser.find_element(By.CSS_SELECTOR, "#results .column.reranked")
    retrieved = browser.find_element(By.CSS_SELECTOR, "#results .column.retrieved")
    assert _docs(reranked) == _docs(retrieved)[:5]
    assert {m.text for m in reranked.find_elements(By.CSS_SELECTOR, ".move")} == {"="}


def test_filter_box_restricts_the_sources_and_names_a_filter_that_matches_nothing(server, browser):
    _open(browser, server)
    box = browser.find_element(By.ID, "filter")
    box.send_keys("source=health/*toxicity*  source=health/vitamin-c-*")
    _ask(browser, QUERY)
    _no_error(browser)
    wanted = {"health/vitamin-d-toxicity.md", "health/vitamin-c-deficiency.md"}
    retrieved = _docs(browser.find_element(By.CSS_SELECTOR, "#results .column.retrieved"))
    reranked = _docs(browser.find_element(By.CSS_SELECTOR, "#results .column.reranked"))
    assert set(retrieved) == wanted, retrieved  # both sources (either value of a key matches), nothing else
    assert reranked and set(reranked) <= wanted, reranked
    assert "filter=source" in browser.current_url  # a filtered question can be linked

    box.clear()
    box.send_keys("source=no-such-file.md")
    _submit(browser, browser.find_element(By.ID, "ask-button").click)
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and "no chunk matches the filter" in error.text, error.text
    assert "422" in error.text


def test_compare_mode_runs_two_configs_side_by_side(server, browser):
    _open(browser, server)
    compare = browser.find_element(By.ID, "compare")
    assert not browser.find_element(By.ID, "compare-with").is_displayed()
    compare.click()
    with_config = Select(browser.find_element(By.ID, "compare-with"))
    with_config.select_by_value("dense-only")
    _ask(browser, QUERY)
    _no_error(browser)
    runs = browser.find_elements(By.CSS_SELECTOR, "#results .run.compared")
    assert len(runs) == 2
    left, right = runs
    assert left.find_element(By.CSS_SELECTOR, ".config-name").text == "offline"
    assert right.find_element(By.CSS_SELECTOR, ".config-name").text == "dense-only"
    assert right.location["x"] > left.location["x"] + left.size["width"] / 2  # side by side

    left_docs = _docs(left.find_element(By.CSS_SELECTOR, ".column.reranked"))
    assert left_docs[0] == DEFICIENCY_PAGE and len(left_docs) == 5
    assert "reranker off" in right.find_element(By.CSS_SELECTOR, ".run-head").text
    assert len(_docs(right.find_element(By.CSS_SELECTOR, ".column.retrieved"))) == 10
    # each hit says where the other config put it
    badges = [b.text for b in left.find_elements(By.CSS_SELECTOR, ".column.reranked .other")]
    assert len(badges) == 5 and any(b.startswith("dense-only #") for b in badges), badges
    # the offline config's first-stage list is folded away, and opens
    details = left.find_element(By.CSS_SELECTOR, "details.first-stage")
    details.find_element(By.TAG_NAME, "summary").click()
    assert details.find_element(By.CSS_SELECTOR, "li.hit").is_displayed()
    assert "compare=dense-only" in browser.current_url


def test_errors_are_shown_not_swallowed(server, browser):
    _open(browser, server)
    _ask(browser, "   ")
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed()
    assert "422" in error.text and "query is empty" in error.text, error.text
    assert error.get_attribute("role") == "alert"

    top_n = browser.find_element(By.ID, "top-n")
    top_n.clear()
    top_n.send_keys("80")  # more than top_k 50
    _ask(browser, QUERY)
    assert "larger than" in browser.find_element(By.ID, "error").text

    # the error goes once a question succeeds
    browser.find_element(By.ID, "reset").click()
    _ask(browser, QUERY)
    _no_error(browser)


def test_passages_are_text_never_html(server, browser):
    """A passage (untrusted) holding markup is shown as text: no element is created, no script runs."""
    _open(browser, server)
    evil = '<img src=x onerror="window.__xss=1"><b>bold</b> vitamin <script>window.__xss=2</script>'
    hit = {"chunk_id": "evil#0", "doc_id": "evil.md", "text": evil, "source": "evil.md<i>x</i>", "position": 0,
           "score": 0.9, "rank": 1, "retrieval_score": 0.5, "retrieval_rank": 3, "title": "<u>title</u>",
           "rank_change": 2}
    answer = {"query": "vitamin", "retrieved": [hit], "reranked": [hit], "timings_ms": {"total": 1.0},
              "config": "offline", "index_version": "v-test"}
    # the page is the real one; only its request for the answer is stubbed
    browser.execute_script(
        """const answer = arguments[0];
        const realFetch = window.fetch;
        window.fetch = (url, init) => String(url).includes("v1/ask")
          ? Promise.resolve(new Response(JSON.stringify(answer), {status: 200,
              headers: {"Content-Type": "application/json"}}))
          : realFetch(url, init);""",
        answer,
    )
    _ask(browser, "vitamin")
    results = browser.find_element(By.ID, "results")
    assert not results.find_elements(By.CSS_SELECTOR, "img, b, script, i, u")
    assert browser.execute_script("return window.__xss === undefined")
    passage = results.find_element(By.CSS_SELECTOR, ".column.reranked .passage")
    assert "<img src=x" in passage.text and "<b>bold</b>" in passage.text
    assert [m.text for m in passage.find_elements(By.TAG_NAME, "mark")] == ["vitamin"]
    assert "<u>title</u>" in results.find_element(By.CSS_SELECTOR, ".column.reranked .title").text


def test_narrow_screen_stacks_the_columns(server, browser):
    _open(browser, server, width=390, height=900)
    _ask(browser, QUERY)
    _no_error(browser)
    retrieved = browser.find_element(By.CSS_SELECTOR, "#results .column.retrieved")
    reranked = browser.find_element(By.CSS_SELECTOR, "#results .column.reranked")
    assert reranked.location["y"] >= retrieved.location["y"] + retrieved.size["height"] - 1  # one above the other
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px at 390px wide"
    # every control has a label the screen reader can read
    unlabeled = browser.execute_script(
        """return [...document.querySelectorAll('input, select')]
             .filter(e => !e.labels || !e.labels.length).map(e => e.id)""")
    assert unlabeled == []


def test_configs_endpoint_matches_the_page(server):
    """The page's defaults come from /v1/configs: guard the fields it reads."""
    with urllib.request.urlopen(f"{server}/v1/configs", timeout=10) as response:
        data = json.load(response)
    configs = {c["name"]: c for c in data["configs"]}
    assert configs["offline"]["reranker"] is True and configs["dense-only"]["reranker"] is False
    assert (configs["offline"]["top_k"], configs["offline"]["top_n"], configs["offline"]["weight"]) == (50, 5, 0.5)

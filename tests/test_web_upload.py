"""The page's knowledge base in a real browser: pick or create a collection, drop files, follow the job's progress
bar, ask the collection, delete a document. Headless Chromium driven by Selenium against a real ``scripts/serve.py``
process with the tiny test models (so it is fast); skipped, with the reason, where Chromium is missing (as in
tests/test_web.py, whose browser set-up it shares).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_web import _MISSING, chromium

if _MISSING:
    pytest.skip(f"browser test skipped: {_MISSING}", allow_module_level=True)
pytest.importorskip("python_multipart", reason="needs python-multipart (the 'serve' extra)")

from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from indexer.build import build_index
from pipeline.config import load_config
from tests.conftest import TINY_DOCS, write_config
from tests.test_collections import Server, write_docs
from tests.test_formats import ARTICLE, make_pdf

WAIT_S = 60

# A file dropped from the desktop, as the browser hands it to the page: a DataTransfer holding a File.
DROP = """
const dt = new DataTransfer();
dt.items.add(new File([arguments[1]], arguments[0], {type: "text/markdown"}));
const zone = document.getElementById("drop-zone");
for (const type of ["dragenter", "dragover", "drop"]) {
  zone.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
}
"""
WATCH_PROGRESS = """
window.progressSeen = [];
new MutationObserver(() => window.progressSeen.push(Number(document.getElementById("upload-progress").value)))
  .observe(document.getElementById("upload-progress"), {attributes: true, attributeFilter: ["value"]});
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_embedder_dir, tiny_reranker_dir):
    tmp = tmp_path_factory.mktemp("web-kb")
    corpus = write_docs(tmp / "corpus", TINY_DOCS)
    config = write_config(tmp / "tiny.yaml", str(tiny_embedder_dir), tmp / "index", str(tiny_reranker_dir),
                          server={"data_dir": str(tmp / "data"),
                                  "api_keys": [{"key_env": "DOCS_READ", "role": "read", "collections": ["docs"]}]})
    build_index(corpus, load_config(config))
    files = tmp / "files"
    make_pdf(files / "widget.pdf", [
        ("Overview", "The widget is a small command line tool for moving files between machines."),
        ("Installation", "To install the widget on Linux run apt-get install widget and start the service."),
    ])
    (files / "guide.html").write_text(ARTICLE, encoding="utf-8")
    proc = Server(config, tmp / "server.log", {"RAG_API_KEY": "web-master", "DOCS_READ": "docs-reader"})
    yield proc, files
    proc.stop()
    assert "Traceback" not in proc.output()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = chromium(tmp_path_factory.mktemp("chromium-kb"))
    try:
        yield driver
    finally:
        driver.quit()


ROWS = """return [...document.querySelectorAll("#documents tbody tr")]
  .map((tr) => [tr.dataset.doc, [...tr.cells].map((td) => td.textContent)]);"""


def _options(browser) -> list[str]:
    return browser.execute_script('return [...document.getElementById("collection").options].map((o) => o.value)')


def _chosen(browser) -> str:
    return browser.execute_script('return document.getElementById("collection").value')


def _rows(browser) -> dict[str, list[str]]:
    """The documents table, read in one script (the page re-renders it while a job is followed)."""
    return dict(browser.execute_script(ROWS))


def _wait(browser, what, message):
    try:
        WebDriverWait(browser, WAIT_S).until(what)
    except TimeoutException:
        pytest.fail(f"{message} within {WAIT_S} s; page:\n{browser.find_element(By.TAG_NAME, 'body').text}")


def _upload_done(browser, names) -> None:
    _wait(browser, lambda d: d.find_element(By.ID, "upload-status").get_attribute("data-state") == "done"
          and set(names) <= set(_rows(d)), f"{names} not indexed")


def _use_key(browser, key: str) -> None:
    box = browser.find_element(By.ID, "api-key")
    box.send_keys(key, Keys.ENTER)


def test_create_drop_follow_ask_and_delete_in_the_page(server, browser):
    proc, files = server
    browser.get(proc.base + "/")
    _wait(browser, lambda d: "API key" in d.find_element(By.ID, "error").text, "no 401 shown")
    _use_key(browser, "web-master")  # kept for this tab: the next test's page loads have it too
    _wait(browser, lambda d: _options(d) == ["tiny"], "collections not loaded")
    browser.find_element(By.CSS_SELECTOR, "#kb summary").click()
    assert "tiny: 5 documents" in browser.find_element(By.ID, "kb-summary").text
    _wait(browser, lambda d: set(_rows(d)) == set(TINY_DOCS), "the default collection's documents not listed")

    box = browser.find_element(By.ID, "new-collection")
    box.send_keys("docs", Keys.ENTER)
    _wait(browser, lambda d: _chosen(d) == "docs" and _rows(d) == {}, "collection not created")

    # several files at once through the file picker; the progress bar follows upload and job to the end
    browser.execute_script(WATCH_PROGRESS)
    picker = browser.find_element(By.ID, "file-input")
    picker.send_keys("\n".join(str(files / name) for name in ("widget.pdf", "guide.html")))
    _upload_done(browser, ["widget.pdf", "guide.html"])
    seen = browser.execute_script("return window.progressSeen")
    assert seen[-1] == 1 and any(0 < v < 1 for v in seen), seen
    assert seen == sorted(seen)  # it only moves forward
    row = _rows(browser)["widget.pdf"]
    assert row[1:3] == ["pdf", "2"] and int(row[3]) > 0
    assert browser.find_element(By.ID, "upload-status").text.startswith("Done: 2 file(s) indexed")

    # a file dropped on the zone
    browser.execute_script(DROP, "notes.md", "# Notes\nThe widget keeps its plugin cache in the cache folder.\n")
    _upload_done(browser, ["widget.pdf", "guide.html", "notes.md"])
    assert "docs: 3 documents" in browser.find_element(By.ID, "kb-summary").text

    # the question goes to the chosen collection: hits only from its files, with their pages
    query = browser.find_element(By.ID, "query")
    before = browser.find_element(By.ID, "results").get_attribute("data-answered") or "0"
    query.send_keys("install the widget on linux", Keys.ENTER)
    _wait(browser, lambda d: (d.find_element(By.ID, "results").get_attribute("data-answered") or "0") != before,
          "no answer")
    assert browser.find_element(By.ID, "error").is_displayed() is False
    docs = {li.get_attribute("data-doc") for li in browser.find_elements(By.CSS_SELECTOR, "ol.hits > li.hit")}
    assert docs and docs <= {"widget.pdf", "guide.html", "notes.md"}
    assert "p. " in browser.find_element(By.ID, "results").text
    assert "collection=docs" in browser.current_url

    # delete one document: it leaves the list once its job has published
    browser.find_element(By.CSS_SELECTOR, '#documents button[data-doc="guide.html"]').click()
    _wait(browser, lambda d: set(_rows(d)) == {"widget.pdf", "notes.md"}
          and d.find_element(By.ID, "upload-status").get_attribute("data-state") == "done", "not deleted")

    # the default collection is still there, unchanged and read-only from the page
    Select(browser.find_element(By.ID, "collection")).select_by_value("tiny")
    _wait(browser, lambda d: set(_rows(d)) == set(TINY_DOCS), "default collection not shown")
    assert "drop-zone disabled" in browser.find_element(By.ID, "drop-zone").get_attribute("class")
    assert browser.find_element(By.ID, "error").is_displayed() is False


def test_a_rejected_upload_shows_the_servers_reason(server, browser):
    proc, files = server
    browser.get(proc.base + "/?collection=docs")
    _wait(browser, lambda d: _chosen(d) == "docs", "collection not restored from the URL")
    browser.execute_script(DROP, "tool.exe", "MZ not a document")
    _wait(browser, lambda d: d.find_element(By.ID, "upload-status").get_attribute("data-state") == "failed",
          "no failure shown")
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and "upload PDF, HTML, Word" in error.text

    # a key that may only read this collection: it asks, but an upload is refused with the reason
    _use_key(browser, "docs-reader")
    _wait(browser, lambda d: _options(d) == ["docs"], "the reader's collections not loaded")
    browser.execute_script(DROP, "more.md", "# More\nanother note about the widget\n")
    _wait(browser, lambda d: d.find_element(By.ID, "upload-status").get_attribute("data-state") == "failed",
          "no failure shown")
    assert "may not change collection 'docs'" in browser.find_element(By.ID, "error").text
    _wait(browser, lambda d: set(_rows(d)) == {"widget.pdf", "notes.md"}, "the documents not listed")
    assert Path(files / "widget.pdf").exists()

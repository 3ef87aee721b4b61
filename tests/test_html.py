"""The HTML report in a real headless Chromium (system packages `chromium` and `chromium-driver`).

The browser is driven through chromedriver's W3C WebDriver HTTP API (urllib, no extra Python
package). Before the page loads, a script installed through the DevTools protocol records
every script error, failed resource load, console error and Content-Security-Policy
violation; after loading, the test reads the tables and images the page shows.

Without Chromium the tests skip, unless CLBENCH_REQUIRE_BROWSER=1 (set by .ci/run), where
they fail: CI must not pass without having looked at the page.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_report import FT, LORA, PAPER, expected, make_record, write_records

from clbench.report.aggregate import display_name
from clbench.report.build import gather, write
from clbench.report.tables import fmt

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
DRIVER = shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not (CHROMIUM and DRIVER):
    if os.environ.get("CLBENCH_REQUIRE_BROWSER") == "1":
        pytest.fail("CLBENCH_REQUIRE_BROWSER=1 but chromium/chromedriver are not installed "
                    "(apt-get install -y chromium chromium-driver)", pytrace=False)
    pytest.skip("needs chromium and chromedriver (apt-get install -y chromium chromium-driver)", allow_module_level=True)

# Installed before any page script runs: collects everything that would make a page broken.
WATCH = """
window.__problems = [];
const note = (kind, text) => window.__problems.push(kind + ': ' + text);
window.addEventListener('error', e => {
  if (e.target && e.target !== window) note('resource', (e.target.src || e.target.href || e.target.tagName));
  else note('script', e.message);
}, true);
window.addEventListener('unhandledrejection', e => note('promise', String(e.reason)));
document.addEventListener('securitypolicyviolation', e => note('csp', e.blockedURI + ' ' + e.violatedDirective));
const consoleError = console.error;
console.error = (...args) => { note('console', args.join(' ')); consoleError(...args); };
"""

# Read after load: what the page shows.
INSPECT = """
const visible = el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
return {
  ready: document.readyState,
  title: document.title,
  problems: window.__problems,
  tables: [...document.querySelectorAll('table.results')].map(t => ({
    visible: visible(t),
    rows: [...t.querySelectorAll('tbody tr')].map(tr => [...tr.children].map(c => c.textContent.trim())),
    headers: [...t.querySelectorAll('thead th')].map(c => c.textContent.trim())})),
  images: [...document.images].map(i => ({src: i.getAttribute('src').slice(0, 22), complete: i.complete,
                                          width: i.naturalWidth, shown: visible(i), alt: i.alt})),
  resources: performance.getEntriesByType('resource').map(r => r.name).filter(n => !n.startsWith('data:')),
};
"""


class Chromium:
    """A headless Chromium session through chromedriver (W3C WebDriver over HTTP)."""

    def __init__(self, profile: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([DRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.time() > deadline:
                self.proc.kill()
                raise RuntimeError("chromedriver did not start")
            time.sleep(0.2)
        caps = {"browserName": "chrome", "goog:loggingPrefs": {"browser": "ALL"},
                "goog:chromeOptions": {"binary": CHROMIUM, "args": FLAGS + [f"--user-data-dir={profile}"]}}
        self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]

    def _call(self, verb: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=verb, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())["value"]
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"WebDriver {verb} {path}: {exc.read()[:500]!r}") from None

    def cmd(self, verb: str, path: str, body: dict | None = None):
        return self._call(verb, f"/session/{self.session}{path}", body)

    def open(self, url: str) -> dict:
        """Load ``url`` with the problem watcher installed; what the page shows, plus browser log."""
        self.cmd("POST", "/goog/cdp/execute", {"cmd": "Page.addScriptToEvaluateOnNewDocument", "params": {"source": WATCH}})
        self.cmd("POST", "/url", {"url": url})
        page = self.cmd("POST", "/execute/sync", {"script": INSPECT, "args": []})
        page["log"] = [e for e in self.cmd("POST", "/se/log", {"type": "browser"}) if e["level"] == "SEVERE"]
        return page

    def close(self) -> None:
        try:
            self.cmd("DELETE", "")
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chrome = Chromium(tmp_path_factory.mktemp("chromium-profile"))
    yield chrome
    chrome.close()


def test_report_page_loads_cleanly_and_shows_tables_and_figures(browser, tmp_path):
    mags = {s: [[1.0], [1.2, 0.9], [1.1, 0.8, 0.7]] for s in LORA}
    recs = [make_record("lora", s, c, paper=PAPER, magnitudes=mags[s]) for s, c in LORA.items()]
    recs += [make_record("finetune", s, c, trainable=5000) for s, c in FT.items()]
    rep = write(gather([write_records(tmp_path / "results", recs)]), tmp_path / "report")
    html_file = tmp_path / "report" / "index.html"
    # self-contained: moved alone to another directory, it must still show everything
    alone = tmp_path / "elsewhere" / "page.html"
    alone.parent.mkdir()
    shutil.copy(html_file, alone)
    page = browser.open(alone.as_uri())
    assert page["ready"] == "complete" and page["title"] == "clbench report"
    assert page["problems"] == [] and page["log"] == [] and page["resources"] == []
    table, *others = page["tables"]  # the accuracy table first; the efficiency table follows
    assert others and all(t["visible"] for t in others)
    assert table["visible"] and table["headers"][:3] == ["Method", "N=3", "Acc"]
    rows = {r[0]: r[1:] for r in table["rows"]}
    lora = expected(LORA)
    name = display_name("lora")  # tables use the paper's method name
    assert rows[name] == [fmt(*lora["acc"]), fmt(*lora["aaa"]), fmt(*lora["forgetting"]), "3"]
    assert rows[f"{name}, reported (SD-LoRA (ICLR 2025) Table 2)"][:2] == ["79.15 (0.20)", "83.01 (0.42)"]
    assert len(page["images"]) == len(rep.figures) >= 5
    for img in page["images"]:
        assert img["src"].startswith("data:image/png;base64") and img["complete"], img
        assert img["width"] > 100 and img["shown"], img


def test_the_browser_check_catches_a_broken_page(browser, tmp_path):
    """The watcher is not blind: a missing image, a script error and an external resource show up."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><title>bad</title></head><body>'
                   '<img src="missing.png"><script>undefinedFunction();</script>'
                   '<img src="http://127.0.0.1:9/x.png"></body></html>')
    page = browser.open(bad.as_uri())
    kinds = {p.split(":")[0] for p in page["problems"]}
    assert {"resource", "script"} <= kinds
    assert any(not img["complete"] or img["width"] == 0 for img in page["images"])
    assert page["resources"]  # the page tried to load files

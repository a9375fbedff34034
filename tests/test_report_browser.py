"""``rlaifv report`` in a real browser: headless Chromium (the Debian ``chromium`` package) driven by
Playwright. Every prompt renders across pages, claim colours match the stored verdicts, the
filters (pairs only, verdict, flag, prompt id, iteration) show exactly the expected prompts,
and nothing is logged to the console. Saves the README's screenshot (docs/report-screenshot.png).

Skipped, with the reason, when the browser or Playwright is missing: ``make browser`` installs both.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from report_runs import env, expected, shared_sandbox_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = pytest.mark.skipif(CHROMIUM is None or sync_playwright is None,
                                reason="browser test skipped: needs the Debian chromium package and Playwright for Python "
                                       f"({'chromium missing' if CHROMIUM is None else 'playwright missing'}); run `make browser`")
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "report-screenshot.png"


@pytest.fixture(scope="session")
def run(tmp_path_factory, rlaifv_bin) -> Path:
    return shared_sandbox_run(tmp_path_factory, rlaifv_bin)


def _report(run: Path, rlaifv_bin, out: Path, *extra: str) -> Path:
    proc = subprocess.run(rlaifv_bin + ["report", str(run), "--out", str(out), *extra], env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        # never downloads a browser: the system's chromium; --no-sandbox for root in CI containers
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Page:
    """A report opened in a fresh tab, with every console message and page error recorded."""

    def __init__(self, browser, path: Path, width: int = 1280):
        self.page = browser.new_page(viewport={"width": width, "height": 900})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.goto(path.resolve().as_uri())
        self.wait()

    def wait(self) -> None:
        self.page.wait_for_selector("body[data-rendered]")  # set by the script once a page of prompts is on screen

    def shown(self) -> list[str]:
        return self.page.eval_on_selector_all("#rv-prompts section.prompt", "els => els.map(e => e.dataset.id)")

    def change(self, action) -> list[str]:
        before = self.page.evaluate("document.body.dataset.rendered")
        action()
        self.page.wait_for_function(f"document.body.dataset.rendered !== '{before}'")
        return self.shown()

    def all_pages(self) -> list[str]:
        ids = self.shown()
        while not self.page.is_disabled("#rv-next"):
            ids += self.change(lambda: self.page.click("#rv-next"))
        return ids


def test_every_prompt_renders_with_stored_verdict_colours(run, browser, tmp_path, rlaifv_bin):
    want = expected(run)
    page = Page(browser, _report(run, rlaifv_bin, tmp_path / "r.html", "--page-size", "2"))
    seen, colours = [], {}
    legend = page.page.evaluate("""() => Object.fromEntries(['accepted', 'rejected'].map(v =>
        [v, getComputedStyle(document.querySelector('.legend .claim.' + v)).backgroundColor]))""")
    assert legend["accepted"] != legend["rejected"]
    while True:
        seen += page.shown()
        for cid, verdict, colour in page.page.eval_on_selector_all(
                "#rv-prompts .claim[data-claim-id]", "els => els.map(e => [e.dataset.claimId, e.dataset.verdict, getComputedStyle(e).backgroundColor])"):
            assert verdict == want["verdict"][cid], cid
            assert colour == legend[verdict], (cid, colour)
            colours[cid] = colour
        if page.page.is_disabled("#rv-next"):
            break
        page.change(lambda: page.page.click("#rv-next"))
    assert seen == want["prompts"]  # 5 prompts over 3 pages of 2, in order
    assert set(colours) == set(want["verdict"])  # every claim was on screen at least once
    assert page.errors == []


def test_filters(run, browser, tmp_path, rlaifv_bin):
    want = expected(run)
    page = Page(browser, _report(run, rlaifv_bin, tmp_path / "r.html"))
    p = page.page
    assert page.shown() == want["prompts"]
    assert page.change(lambda: p.check("#rv-pairs")) == want["pair_prompts"] != []
    kept = p.eval_on_selector_all(".pair", "els => els.map(e => [e.dataset.chosen, e.dataset.rejected])")
    assert {tuple(k) for k in kept} == want["pairs"]  # chosen and rejected side by side, as stored
    page.change(lambda: p.uncheck("#rv-pairs"))
    assert page.change(lambda: p.select_option("#rv-verdict", "rejected")) == want["with_rejected"]
    assert page.change(lambda: p.select_option("#rv-verdict", "accepted")) == want["all_accepted"]
    page.change(lambda: p.select_option("#rv-verdict", "any"))
    assert page.change(lambda: p.select_option("#rv-flag", "rejects")) == ["bad-image"]
    assert page.change(lambda: p.select_option("#rv-flag", "truncated")) == want["truncated_prompts"]
    page.change(lambda: p.select_option("#rv-flag", "any"))
    assert page.change(lambda: p.fill("#rv-search", "000002")) == ["val-000002"]
    assert page.change(lambda: p.fill("#rv-search", "no such prompt")) == []
    assert "0 of 5 prompts match" in p.inner_text("#rv-status")
    page.change(lambda: p.fill("#rv-search", ""))
    assert "set aside at sample" in p.inner_text("section.prompt[data-id='bad-image']")
    assert page.errors == []
    _screenshot(page)


def _screenshot(page: Page) -> None:
    """The README's picture: the first prompt with pairs (controls, image, pairs side by side). Written
    only when the pixels changed, so reruns leave the file alone."""
    p = page.page
    page.change(lambda: p.check("#rv-pairs"))
    p.locator("section.prompt").first.evaluate("e => window.scrollTo(0, e.getBoundingClientRect().top + window.scrollY - 52)")
    shot = p.screenshot()  # the viewport: sticky filter bar, then the prompt
    if not SCREENSHOT.exists() or SCREENSHOT.read_bytes() != shot:
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(shot)


def test_iterate_report_filters_by_iteration(run, browser, tmp_path, rlaifv_bin):
    it = tmp_path / "iterate"
    for i in (1, 2):
        shutil.copytree(run, it / f"iter-{i}" / "feedback")
    page = Page(browser, _report(it, rlaifv_bin, tmp_path / "it.html", "--page-size", "100"))
    assert len(page.shown()) == 10
    keys = page.change(lambda: page.page.select_option("#rv-it", "2"))
    assert keys == expected(run)["prompts"]
    assert page.page.eval_on_selector_all("section.prompt", "els => els.every(e => e.dataset.key.startsWith('it2/'))")
    assert page.errors == []

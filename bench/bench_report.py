"""Benchmark: `rlaifv report` page size, build time and load time in a real browser.

Run: `.venv/bin/python bench/bench_report.py [--prompts 200 10000] [--n 10] [--claims 4] [--run runs/demo]`
(needs `make browser`: the Debian chromium package and Playwright). Prints a Markdown table for
BENCHMARKS.md.

For each size a synthetic feedback run (``rlaifv.report.synthetic``: records written directly,
n answers per prompt, ``--claims`` claims each, 16 small PNGs; images embedded up to 1,000
prompts, linked beyond, as ``--images auto`` does) is reported on with ``build_report``; the page
is then opened from disk in headless Chromium ``--loads`` times and the median is kept of
DOMContentLoaded and of the first rendered page of prompts (``window.rvFirstRender``, set by the
page's script), both from navigation start, plus one filter change ("pairs only") re-rendered.
``--run`` adds a real run folder (the demo's) to the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from rlaifv.report import build_report
from rlaifv.report.synthetic import synthetic_run


def load_times(browser, page_path: Path, loads: int) -> dict[str, float]:
    """Median DOMContentLoaded / first render (ms from navigation start) and one filter re-render (ms)."""
    dcl, first, filt = [], [], []
    for _ in range(loads):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(page_path.resolve().as_uri(), wait_until="domcontentloaded", timeout=120_000)
        page.wait_for_selector("body[data-rendered]", timeout=120_000)
        dcl.append(page.evaluate("performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"))
        first.append(page.evaluate("window.rvFirstRender"))
        before = page.evaluate("document.body.dataset.rendered")
        t0 = time.perf_counter()
        page.check("#rv-pairs")
        page.wait_for_function(f"document.body.dataset.rendered !== '{before}'")
        filt.append(1000 * (time.perf_counter() - t0))
        if errors:
            raise RuntimeError(f"{page_path}: page errors {errors}")
        page.close()
    return {"dcl_ms": statistics.median(dcl), "first_render_ms": statistics.median(first), "filter_ms": statistics.median(filt)}


def measure(run: Path, out: Path, browser, loads: int, label: str) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    res = build_report(run, out)
    row = {"run": label, "prompts": res["prompts"], "MB": res["bytes"] / 1e6, "build_s": time.perf_counter() - t0,
           "build_cpu_s": time.process_time() - c0, "images": "embedded" if res["images"]["embedded"] else "linked"}
    row.update(load_times(browser, res["path"], loads))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, nargs="+", default=[200, 10_000])
    ap.add_argument("--n", type=int, default=10, help="answers per prompt (the demo's n)")
    ap.add_argument("--claims", type=int, default=4, help="claims per answer (the demo's run: 3.5 on average)")
    ap.add_argument("--loads", type=int, default=3)
    ap.add_argument("--run", type=Path, action="append", default=[], help="also measure a real run folder")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium not found: run `make browser`")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        for n in args.prompts:
            run = synthetic_run(Path(tmp) / f"run-{n}", n, n=args.n, claims=args.claims)
            rows.append(measure(run, Path(tmp) / f"report-{n}.html", browser, args.loads, f"synthetic, n={args.n}, {args.claims} claims"))
        for run in args.run:
            rows.append(measure(run, Path(tmp) / f"report-{run.name}.html", browser, args.loads, str(run)))
        version = browser.version
        browser.close()
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared); Chromium {version} headless\n")
    print("| run | prompts | page MB | images | build s (CPU s) | DOMContentLoaded ms | first page rendered ms | 'pairs only' re-render ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['prompts']:,} | {r['MB']:.2f} | {r['images']} | {r['build_s']:.1f} ({r['build_cpu_s']:.1f}) | "
              f"{r['dcl_ms']:.0f} | {r['first_render_ms']:.0f} | {r['filter_ms']:.0f} |")


if __name__ == "__main__":
    main()

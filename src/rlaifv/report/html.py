"""One self-contained HTML page: the run summary as static HTML, the prompts as embedded data
rendered page by page by the inline script (``static/report.js``).

Why it stays fast at 10,000 prompts: the prompt entries are split into chunks of
``CHUNK`` prompts, each gzip-compressed and base64-encoded into its own inert
``<script type="application/octet-stream">`` element; the page parses only a small index
(id, flags, counts per prompt) at load, filters on it, and decompresses (``DecompressionStream``)
only the chunks of the page on screen. No server, no network: images are embedded as data
URIs (``images="embed"``: small files as they are, larger ones as thumbnails) or linked by a
path relative to the page (``"link"``); ``"auto"`` embeds up to ``EMBED_MAX`` prompts.
"""

from __future__ import annotations

import base64
import datetime as _dt
import gzip
import html
import io
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .collect import FLAGS, ReportError, RunView

CHUNK = 50  # prompts per compressed data chunk
EMBED_MAX = 1000  # images="auto": embed images up to this many prompts, link them beyond
THUMB = 192  # longest side of an embedded thumbnail (pixels)
RAW_MAX = 24_000  # image files up to this size (bytes) and THUMB px are embedded as they are
IMAGE_MODES = ("auto", "embed", "link")
STATIC = Path(__file__).parent / "static"
_MIME = ((b"\x89PNG", "image/png"), (b"\xff\xd8", "image/jpeg"), (b"GIF8", "image/gif"), (b"RIFF", "image/webp"))


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _json_script(obj: Any) -> str:
    """JSON safe inside a <script> element (no ``</`` that would end it)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")


def encode_chunk(entries: list[dict[str, Any]]) -> str:
    return base64.b64encode(gzip.compress(json.dumps(entries, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), 6)).decode("ascii")


# ----------------------------------------------------------------------------- images


def _mime(raw: bytes) -> str | None:
    return next((m for magic, m in _MIME if raw.startswith(magic)), None)


def thumbnail(raw: bytes) -> str:
    """A data URI: the image itself when small, else a THUMB-px thumbnail (PNG keeps transparency, else JPEG)."""
    from PIL import Image

    mime = _mime(raw)
    with Image.open(io.BytesIO(raw)) as im:  # reads the header; pixels only if a thumbnail is made
        if mime is not None and len(raw) <= RAW_MAX and max(im.size) <= THUMB:
            return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"
        im.thumbnail((THUMB, THUMB))
        buf = io.BytesIO()
        if im.mode in ("RGBA", "LA", "P"):
            im.save(buf, format="PNG", optimize=True)
            mime = "image/png"
        else:
            im.convert("RGB").save(buf, format="JPEG", quality=80)
            mime = "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def image_src(path: Path | None, data: bytes | None, embed: bool, out_dir: Path) -> tuple[str | None, str | None]:
    """(src for <img>, why there is none): a data URI, or a path relative to the page."""
    try:
        if data is not None:
            return thumbnail(data), None
        if path is None:
            return None, "no image"
        if not path.is_file():
            return None, f"image not found: {path}"
        if embed:
            return thumbnail(path.read_bytes()), None
        return quote(os.path.relpath(os.path.abspath(path), out_dir).replace(os.sep, "/")), None
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
        return None, f"image unreadable: {path} ({e})"


def attach_images(view: RunView, mode: str, out_dir: Path) -> dict[str, int]:
    """Set each prompt's ``img`` (or ``img_note``); returns counts (embedded, linked, missing)."""
    if mode not in IMAGE_MODES:
        raise ReportError(f"--images {mode!r}: expected one of {', '.join(IMAGE_MODES)}")
    embed = mode == "embed" or (mode == "auto" and len(view.prompts) <= EMBED_MAX)
    out_dir = Path(os.path.abspath(out_dir))
    counts = {"embedded": 0, "linked": 0, "missing": 0}
    for e in view.prompts:
        path, data = view.images.get(e["key"], (None, None))
        src, note = image_src(path, data, embed, out_dir)
        e["img"] = src
        if note:
            e["img_note"] = note
        counts["missing" if src is None else "embedded" if src.startswith("data:") else "linked"] += 1
    return counts


# ----------------------------------------------------------------------------- the index


def index_row(e: dict[str, Any], chunk: int, pos: int) -> list[Any]:
    """[key, id, iteration, flag bits, claims, rejected claims, kept pairs, chunk, position, candidates]."""
    bits = sum(1 << i for i, f in enumerate(FLAGS) if f in e.get("flags", ()))
    claims = [cl for c in e["cands"] for cl in c["claims"]]
    kept = sum(p["fate"] == "kept" for p in e["pairs"])
    return [e["key"], e["id"], e.get("it"), bits, len(claims), sum(cl["v"] == "rej" for cl in claims), kept, chunk, pos, len(e["cands"])]


def _table(rows: list[list[Any]], head: list[str], cls: str = "") -> str:
    def cell(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else esc(v if v is not None else "–")

    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{"".join(f"<th>{esc(h)}</th>" for h in head)}</tr></thead><tbody>{body}</tbody></table>'


def _plots_html(plots: list[tuple[str, Path]], skipped: list[str], out_dir: Path) -> str:
    figs = "".join(f'<figure><img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode("ascii")}" alt="{esc(c)}">'
                   f'<figcaption>{esc(c)} (<a href="{quote(os.path.relpath(p, out_dir))}">{esc(p.name)}</a>)</figcaption></figure>'
                   for c, p in plots)
    left = f'<p class="muted">not drawn (no data): {esc("; ".join(skipped))}</p>' if skipped else ""
    return f'<div class="plots">{figs}</div>{left}'


def page(view: RunView, summary_html: str, title: str, page_size: int = 20) -> str:
    """The whole page: summary, controls, the index and the compressed prompt chunks, inline CSS and JS."""
    chunks, index = [], []
    for c in range(0, len(view.prompts), CHUNK):
        part = view.prompts[c: c + CHUNK]
        index += [index_row(e, len(chunks), i) for i, e in enumerate(part)]
        chunks.append(f'<script type="application/octet-stream" id="rv-chunk-{len(chunks)}" data-enc="gzip-base64">{encode_chunk(part)}</script>')
    its = sorted({e["it"] for e in view.prompts if e.get("it") is not None})
    meta = {"kind": view.kind, "pageSize": page_size, "flags": list(FLAGS), "iterations": its, "chunks": len(chunks),
            "truth": any("truth" in e for e in view.prompts)}
    css = (STATIC / "report.css").read_text(encoding="utf-8")
    js = (STATIC / "report.js").read_text(encoding="utf-8")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{css}</style></head>
<body data-kind="{esc(view.kind)}">
<header class="top"><h1>{esc(title)}</h1><p class="muted">{esc(view.kind)} run <code>{esc(view.run)}</code> · report made
{esc(_dt.datetime.now().strftime("%Y-%m-%d %H:%M"))} by rlaifv {esc(_version())}</p></header>
<details id="rv-summary" open><summary><h2>Run summary</h2></summary>{summary_html}</details>
<h2>Prompts</h2>
<p class="legend"><span class="claim accepted">accepted claim</span> <span class="claim rejected">rejected claim (p_no &ge; p_yes)</span>
<span class="claim unscored">no verdict</span></p>
<div id="rv-controls"></div>
<div id="rv-status" class="muted">loading&hellip;</div>
<main id="rv-prompts"></main>
<div id="rv-pager-bottom"></div>
<script type="application/json" id="rv-meta">{_json_script(meta)}</script>
<script type="application/json" id="rv-index">{_json_script(index)}</script>
{"".join(chunks)}
<script>{js}</script>
</body></html>
"""


def _version() -> str:
    from .. import __version__

    return __version__


def read_report_data(path: Path) -> tuple[dict[str, Any], list[list[Any]], list[dict[str, Any]]]:
    """(meta, index, every prompt entry) of a written report: what the page's script reads."""
    text = Path(path).read_text(encoding="utf-8")

    def script(id_: str) -> str:
        m = re.search(rf'<script type="application/json" id="{id_}">(.*?)</script>', text, re.S)
        if m is None:
            raise ReportError(f"{path}: no {id_} data (not an rlaifv report?)")
        return m.group(1)

    meta, index = json.loads(script("rv-meta")), json.loads(script("rv-index"))
    entries: list[dict[str, Any]] = []
    for m in re.finditer(r'<script type="application/octet-stream" id="rv-chunk-(\d+)" data-enc="gzip-base64">(.*?)</script>', text, re.S):
        entries += json.loads(gzip.decompress(base64.b64decode(m.group(2))))
    return meta, index, entries

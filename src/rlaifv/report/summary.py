"""The run summary at the top of the page (static HTML): counts per stage with rejects and their
reasons, wall time per stage, claims per answer, rejection rate, pairs through the cap and
length balancing, the labeler's yes+no mass, the sandbox ground truth; for iterate runs the
per-iteration rows; for best-of-n the scorers' agreement."""

from __future__ import annotations

from typing import Any

from .html import _table, esc


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else esc("–" if v is None else v)


def _kv(pairs: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


def _card(title: str, body: str) -> str:
    return f'<div class="card"><h3>{esc(title)}</h3>{body}</div>'


def notes_html(warnings: list[str], notes: list[str]) -> str:
    items = [f"<li><b>warning:</b> {esc(w)}</li>" for w in warnings] + [f"<li>{esc(n)}</li>" for n in notes]
    return f'<ul class="notes">{"".join(items)}</ul>' if items else ""


def _reasons(reasons: list[list[Any]]) -> str:
    return "; ".join(f"{r} ({n})" for r, n in reasons)


def feedback_html(s: dict[str, Any]) -> str:
    """Numbers of one feedback run (``runs._feedback_summary``)."""
    pp = s["pair_points"]
    trunc = "not recorded by this run" if s["truncated"] is None else f"{s['truncated']} of {s['candidates']}"
    key = [("prompts", s["prompts"]), ("candidates", s["candidates"]), ("claims", s["claims"]),
           ("claims per answer", "–" if s["claims_per_answer"] is None else f"{s['claims_per_answer']:.2f}"),
           ("claims rejected (rejection rate)", f"{s['rejected_claims']} of {s['judged']} ({_pct(s['rejection_rate'])})"),
           ("answers with a rejected claim", f"{s['candidates_with_rejected']} of {s['candidates']}"),
           ("truncated answers (hit max_new_tokens)", trunc),
           ("answers without claims", "–" if s["no_claims"] is None else s["no_claims"]),
           ("answers with mismatched verdicts (not scored)", s["mismatched"]),
           ("pairs: passing the gap -> after the cap -> kept after length balancing",
            f"{pp['before_cap']} -> {pp['after_cap']} -> {pp['final']}")]
    stages = _table([[r["stage"], r["folder"], r["records"], r["rejects"], _reasons(r["reasons"]), r["seconds"]] for r in s["stages"]],
                    ["stage", "folder", "records", "rejects", "reasons (most frequent)", "wall s"], "stages")
    loose = (f'<p>{s["n_loose_rejects"]} rejects name no record (unreadable input lines): {esc(_reasons(s["loose_rejects"]))}</p>'
             if s["n_loose_rejects"] else "")
    cards = [_card("Run", _kv(key)), _card("Stages (records, rejects, wall time)", stages + loose)]
    mass = s.get("mass") or {}
    if mass.get("questions"):
        cards.append(_card("Labeler yes+no mass", _kv([("mode", mass.get("mode") or "direct"), ("questions", mass["questions"]),
                                                       ("mean", mass.get("mean")), ("median", mass.get("median")), ("min", mass.get("min")),
                                                       (f"below {mass.get('threshold')}", mass.get("below_threshold"))])))
    if s.get("truth"):
        cards.append(_card("Sandbox ground truth", truth_html(s["truth"])))
    stats = s.get("pairs_stats") or {}
    diag = f'<p class="warn">0 pairs: {esc(stats["diagnosis"])}</p>' if stats.get("diagnosis") else ""
    if stats:
        keys = [k for k in stats if k != "diagnosis" and not isinstance(stats[k], (dict, list))]
        cards.append(_card("Pairs stage", diag + f'<details><summary>stats.json</summary>{_kv([(k, stats[k]) for k in keys])}</details>'))
    return f'<div class="sgrid">{"".join(cards)}</div>'


def truth_html(t: dict[str, Any]) -> str:
    return _kv([("labeler rejections vs truth: precision", _pct(t.get("precision"))), ("recall", _pct(t.get("recall"))),
                ("accuracy", _pct(t.get("accuracy"))), ("confusion (tp / fp / fn / tn)", f"{t['tp']} / {t['fp']} / {t['fn']} / {t['tn']}"),
                ("sampled answers' CHAIR_i (hallucinated object mentions)", _pct(t.get("chair_i"))),
                ("kept pairs whose chosen answer has fewer hallucinated objects", _pct(t.get("pairs_chosen_fewer_hallucinated"))),
                ("claims the parser cannot read (no truth)", t.get("unparsable_claims"))])


def iterate_html(s: dict[str, Any]) -> str:
    from .loops import CURVES

    rows = s["rows"]
    cols = ["iteration", *[k for k, _ in CURVES], "avg_length", "pairs", "seconds", "selected"]
    cols = [c for c in cols if any(c in r for r in rows)]
    out = ["<h3>Per iteration (held-out evaluation)</h3>", _table([[r.get(c) for c in cols] for r in rows], cols) if rows else
           "<p>no report.json rows yet</p>"]
    fb = [[it["iteration"], it["summary"]["prompts"], it["summary"]["candidates"], it["summary"]["claims"],
           _pct(it["summary"]["rejection_rate"]), it["summary"]["pair_points"]["final"], "yes" if it["done"] else "no",
           _pct((it["summary"].get("truth") or {}).get("precision")), _pct((it["summary"].get("truth") or {}).get("chair_i"))]
          for it in s["iterations"]]
    out += ["<h3>The feedback of each iteration</h3>",
            _table(fb, ["iteration", "prompts", "candidates", "claims", "rejected", "pairs", "finished",
                        "truth: rejection precision", "truth: CHAIR_i"])]
    for it in s["iterations"]:
        out.append(f'<details><summary>iteration {it["iteration"]}: stages, rejects, pairs</summary>{feedback_html(it["summary"])}</details>')
    return "".join(out)


def bestofn_html(s: dict[str, Any]) -> str:
    summ = s.get("summary") or {}
    out = [_kv([(k, v) for k, v in summ.items() if not isinstance(v, (dict, list))] + [("prompts set aside", s["rejects"])])]
    if s["reasons"]:
        out.append(f"<p>set aside: {esc(_reasons(s['reasons']))}</p>")
    if s["agreement"]:
        out += ["<h3>How often each scorer's best is the chosen answer</h3>",
                _table([[k, _pct(v)] for k, v in s["agreement"].items()], ["scorer", "agrees with the chosen"])]
    return "".join(out)


def summary_html(kind: str, summary: dict[str, Any], warnings: list[str], notes: list[str], plots: str, images: dict[str, int]) -> str:
    body = {"feedback": feedback_html, "iterate": iterate_html, "best-of-n": bestofn_html}[kind](summary)
    img = f'<p class="muted">images: {images["embedded"]} embedded, {images["linked"]} linked, {images["missing"]} missing</p>'
    return notes_html(warnings, notes) + body + "<h3>Plots</h3>" + plots + img

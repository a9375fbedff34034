/* rlaifv report: renders the prompts of the page on screen from the embedded, compressed chunks.
   The index (one small row per prompt) is parsed at load and filtered; a chunk is decompressed
   only when a prompt of the current page lives in it. No network access of any kind. */
(function () {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const META = JSON.parse($('rv-meta').textContent);
  const INDEX = JSON.parse($('rv-index').textContent);
  // index row: [key, id, iteration, flag bits, claims, rejected claims, kept pairs, chunk, position, candidates]
  const K = { key: 0, id: 1, it: 2, flags: 3, claims: 4, rej: 5, kept: 6, chunk: 7, pos: 8 };
  const FLAG_LABEL = { truncated: 'truncated', no_claims: 'no claims', rejects: 'set aside', mismatch: 'mismatched verdicts',
                       hallucination: 'hallucination (ground truth)' };
  const FLAG_BIT = {};
  META.flags.forEach((f, i) => { FLAG_BIT[f] = 1 << i; });
  const state = { q: '', pairs: false, verdict: 'any', flag: 'any', it: 'any', page: 0, size: META.pageSize };
  const cache = new Map();
  let matches = [];
  let token = 0;

  function esc(s) {
    return String(s === null || s === undefined ? '' : s).replace(/[&<>"']/g,
      (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  }
  function num(x, d) { return x === null || x === undefined ? '–' : Number(x).toFixed(d === undefined ? 2 : d); }

  function loadChunk(i) {
    if (!cache.has(i)) {
      cache.set(i, (async () => {
        const el = $('rv-chunk-' + i);
        const bin = Uint8Array.from(atob(el.textContent.trim()), (c) => c.charCodeAt(0));
        const stream = new Blob([bin]).stream().pipeThrough(new DecompressionStream('gzip'));
        return JSON.parse(await new Response(stream).text());
      })());
    }
    return cache.get(i);
  }

  // ------------------------------------------------------------------ filters
  function applyFilters() {
    const q = state.q.trim().toLowerCase();
    matches = [];
    for (let i = 0; i < INDEX.length; i++) {
      const r = INDEX[i];
      if (q && r[K.id].toLowerCase().indexOf(q) < 0 && r[K.key].toLowerCase().indexOf(q) < 0) continue;
      if (state.pairs && r[K.kept] === 0) continue;
      if (state.verdict === 'rejected' && r[K.rej] === 0) continue;
      if (state.verdict === 'accepted' && (r[K.claims] === 0 || r[K.rej] > 0)) continue;
      if (state.flag !== 'any' && !(r[K.flags] & FLAG_BIT[state.flag])) continue;
      if (state.it !== 'any' && String(r[K.it]) !== state.it) continue;
      matches.push(i);
    }
    state.page = 0;
  }

  function controls() {
    const flagOpts = META.flags.filter((f) => f !== 'hallucination' || META.truth)
      .map((f) => `<option value="${f}">${esc(FLAG_LABEL[f])}</option>`).join('');
    const its = META.iterations.length ? `<select id="rv-it" title="iteration"><option value="any">every iteration</option>${
      META.iterations.map((i) => `<option value="${i}">iteration ${i}</option>`).join('')}</select>` : '';
    const pairs = META.kind === 'best-of-n' ? '' : '<label><input id="rv-pairs" type="checkbox"> pairs only</label>';
    $('rv-controls').innerHTML = `<input id="rv-search" type="search" placeholder="search prompt id" aria-label="search prompt id">
      ${pairs}<select id="rv-verdict" title="verdict"><option value="any">any verdict</option>
      <option value="rejected">has a rejected claim</option><option value="accepted">every claim accepted</option></select>
      <select id="rv-flag" title="flag"><option value="any">any flag</option>${flagOpts}</select>${its}
      <select id="rv-size" title="prompts per page">${[10, 20, 50, 100].map((n) =>
        `<option value="${n}"${n === state.size ? ' selected' : ''}>${n} per page</option>`).join('')}</select>
      <button id="rv-prev" type="button">&#9664; prev</button><button id="rv-next" type="button">next &#9654;</button>`;
    let timer = null;
    $('rv-search').addEventListener('input', (ev) => {
      clearTimeout(timer);
      timer = setTimeout(() => { state.q = ev.target.value; applyFilters(); render(); }, 120);
    });
    const on = (id, fn) => { const el = $(id); if (el) el.addEventListener('change', (ev) => { fn(ev.target); applyFilters(); render(); }); };
    on('rv-pairs', (t) => { state.pairs = t.checked; });
    on('rv-verdict', (t) => { state.verdict = t.value; });
    on('rv-flag', (t) => { state.flag = t.value; });
    on('rv-it', (t) => { state.it = t.value; });
    $('rv-size').addEventListener('change', (ev) => { state.size = Number(ev.target.value); state.page = 0; render(); });
    $('rv-prev').addEventListener('click', () => { if (state.page > 0) { state.page--; render(); } });
    $('rv-next').addEventListener('click', () => { if ((state.page + 1) * state.size < matches.length) { state.page++; render(); } });
  }

  // ------------------------------------------------------------------ rendering
  function claimHtml(cl) {
    const v = cl.v === 'rej' ? 'rejected' : cl.v === 'acc' ? 'accepted' : 'unscored';
    const probs = cl.y !== undefined && cl.y !== null
      ? `<span class="pp">p_yes ${num(cl.y, 3)} · p_no ${num(cl.n, 3)} · mass ${num(cl.y + cl.n, 3)}</span>` : '';
    const gt = cl.gt === false ? '<span class="gt gt-false" title="false in the scene graph">&#10007; false (truth)</span>'
      : cl.gt === true ? '<span class="gt gt-true" title="true in the scene graph">&#10003; true</span>' : '';
    const q = cl.q ? `<span class="cq">asked: ${esc(cl.q)}</span>` : '';
    return `<li class="claim ${v}" data-claim-id="${esc(cl.id)}" data-verdict="${v}"><span class="ct">${esc(cl.t)}</span> ${probs}${gt}${q}</li>`;
  }

  function candHtml(c, extra) {
    const badges = [];
    if (c.trunc) badges.push('<span class="flag f-truncated" title="hit max_new_tokens">truncated</span>');
    if (!c.claims.length) badges.push('<span class="flag f-no_claims">no claims</span>');
    if (c.mismatch) badges.push(`<span class="flag f-mismatch" title="${esc(c.mismatch)}">mismatched verdicts</span>`);
    c.rejects.forEach((r) => badges.push(`<span class="flag f-rejects" title="${esc(r.reason)}">set aside at ${esc(r.stage)}</span>`));
    const hall = c.hall && c.hall.length ? `<div class="hall">hallucinated objects (truth): ${c.hall.map(esc).join(', ')}</div>` : '';
    const why = c.mismatch ? `<div class="dropped">${esc(c.mismatch)}</div>` : '';
    const scores = c.scores ? ' · ' + Object.keys(c.scores).map((s) => `${esc(s)} ${num(c.scores[s], 3)} (#${c.ranks[s]})`).join(' · ') : '';
    return `<article class="cand${extra || ''}" data-cand="${esc(c.id)}"><div class="ch"><b>#${esc(c.k)}</b> score ${
      c.score === null || c.score === undefined ? '–' : num(c.score, 3)} · ${c.words} words${scores}${badges.join('')}</div>${why}${hall}
      <ol class="claims">${c.claims.map(claimHtml).join('')}</ol>
      <details class="answer"${c.claims.length ? '' : ' open'}><summary>answer text</summary><p>${esc(c.text)}</p></details></article>`;
  }

  function pairsHtml(e, byId) {
    if (!e.pairs.length) return '';
    const kept = e.pairs.filter((p) => p.fate === 'kept');
    const dropped = e.pairs.filter((p) => p.fate !== 'kept');
    const side = (id, role) => byId.has(id) ? candHtml(byId.get(id), ' ' + role) : `<p class="empty">${esc(id)} not found</p>`;
    const rows = kept.map((p) => `<div class="pair" data-chosen="${esc(p.c)}" data-rejected="${esc(p.r)}">
      <div><div class="lbl chosen">chosen (gap ${num(p.gap, 2)})</div>${side(p.c, 'chosen')}</div>
      <div><div class="lbl rejected">rejected</div>${side(p.r, 'rejected')}</div></div>`).join('');
    const why = { cap: 'by the per-prompt cap', balance: 'by length balancing' };
    const gone = dropped.length ? `<p class="dropped">dropped: ${dropped.map((p) =>
      `${esc(p.c.split('#').pop())} &#8827; ${esc(p.r.split('#').pop())} (gap ${num(p.gap, 2)}, ${why[p.fate]})`).join('; ')}</p>` : '';
    return `<div class="pairs"><b>${kept.length} pair${kept.length === 1 ? '' : 's'} kept</b>${rows}${gone}</div>`;
  }

  function bonHtml(e) {
    const b = e.bon;
    const head = b.scorers.map((s) => `<th>${esc(s)}${s === b.scorer ? ' (selects)' : ''}</th>`).join('');
    const rows = e.cands.map((c, k) => `<tr class="${k === b.chosen ? 'picked' : ''}"><td>#${esc(c.k)}${k === b.chosen ? ' chosen' : ''}</td>
      <td>${c.words}</td>${b.scorers.map((s) => `<td class="${c.ranks[s] === 1 ? 'best' : ''}">${num(c.scores[s], 3)} (#${c.ranks[s]})</td>`).join('')}</tr>`).join('');
    return `<table class="bon"><thead><tr><th>candidate</th><th>words</th>${head}</tr></thead><tbody>${rows}</tbody></table>`;
  }

  function promptHtml(e) {
    const flags = (e.flags || []).map((f) => `<span class="flag f-${f}">${esc(FLAG_LABEL[f] || f)}</span>`).join('');
    const img = e.img ? `<img class="thumb" src="${esc(e.img)}" alt="image of ${esc(e.id)}" loading="lazy">`
      : `<div class="noimg">${esc(e.img_note || 'no image')}</div>`;
    const truth = e.truth ? `<div class="truth"><b>in the scene:</b> ${e.truth.map(esc).join(', ') || 'nothing'}</div>` : '';
    const rej = e.rejects.length ? `<ul class="rejects">${e.rejects.map((r) => `<li>set aside at ${esc(r.stage)}: ${esc(r.reason)}</li>`).join('')}</ul>` : '';
    const byId = new Map(e.cands.map((c) => [c.id, c]));
    const picked = e.bon ? e.bon.chosen : -1;
    const cands = e.cands.map((c, k) => candHtml(c, k === picked ? ' picked' : '')).join('');
    return `<section class="prompt" data-key="${esc(e.key)}" data-id="${esc(e.id)}"><header><h3>${esc(e.id)}</h3>${
      e.it !== null && e.it !== undefined ? `<span class="it">iteration ${esc(e.it)}</span>` : ''}${flags}</header>
      <div class="top">${img}<div class="qbox"><div class="q"><b>question:</b> ${esc(e.q === null ? '(unknown: prompts file not found)' : e.q)}</div>${truth}${rej}
      ${e.bon ? bonHtml(e) : ''}</div></div>${pairsHtml(e, byId)}
      ${e.cands.length ? `<details class="cands" open><summary>${e.cands.length} candidates</summary><div class="grid">${cands}</div></details>` : ''}</section>`;
  }

  async function render() {
    const mine = ++token;
    const pages = Math.max(1, Math.ceil(matches.length / state.size));
    state.page = Math.min(state.page, pages - 1);
    const slice = matches.slice(state.page * state.size, (state.page + 1) * state.size);
    const needed = [...new Set(slice.map((i) => INDEX[i][K.chunk]))];
    let data;
    try {
      data = await Promise.all(needed.map(loadChunk));
    } catch (err) {
      $('rv-status').innerHTML = `<span class="error">cannot read the report's data: ${esc(err)} (a browser with DecompressionStream is needed)</span>`;
      throw err;
    }
    if (mine !== token) return;
    const chunks = new Map(needed.map((c, j) => [c, data[j]]));
    const html = slice.map((i) => promptHtml(chunks.get(INDEX[i][K.chunk])[INDEX[i][K.pos]])).join('');
    $('rv-prompts').innerHTML = html || '<p class="empty">No prompt matches these filters.</p>';
    $('rv-status').textContent = `${matches.length} of ${INDEX.length} prompts match · page ${state.page + 1} of ${pages}`;
    $('rv-prev').disabled = state.page === 0;
    $('rv-next').disabled = (state.page + 1) * state.size >= matches.length;
    if (window.rvFirstRender === undefined) window.rvFirstRender = performance.now();  // read by bench/bench_report.py
    document.body.dataset.rendered = String(mine);
  }

  controls();
  applyFilters();
  render();
})();

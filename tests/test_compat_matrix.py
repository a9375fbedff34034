"""The compatibility matrix (``rlaifv.compat.matrix``) on every zoo architecture.

Each of 16 families (tiny model, published chat template, tokenizer of its real kind) goes
through load / template / sample / conquer / DPO (with TRL parity) / best-of-N. No cell may
fail, and the naive-path fallbacks are exactly the architectures whose caches or attention
cannot share a prompt prefix, each for its stated reason.
"""

from __future__ import annotations

import pytest

from rlaifv.compat.matrix import STAGES, markdown, run_entry
from rlaifv.compat.zoo import all_entries

ENTRIES = all_entries()
# architecture -> stages on the naive path, and why (sliding-window caches, prefix-LM, cross-attention)
FALLBACKS = {
    "gemma3": ({"conquer", "best_of_n"}, "DynamicSlidingWindowLayer"),
    "mistral3": ({"conquer", "best_of_n"}, "DynamicSlidingWindowLayer"),
    "paligemma": ({"sample", "conquer", "best_of_n"}, "prefix-LM"),
    "mllama": ({"sample", "conquer", "best_of_n"}, "cross-attention"),
}
TRL_UNSUPPORTED = {"paligemma", "mllama"}  # no chat template / TRL's own forward fails on its batch


def test_at_least_twelve_architectures_with_real_templates():
    assert len(ENTRIES) >= 12 and len({e.model_type for e in ENTRIES}) >= 12
    assert sum(e.template is not None for e in ENTRIES) >= 12


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_matrix_row(entry):
    row = run_entry(entry)
    assert set(row) == set(STAGES)
    failed = {s: c.detail for s, c in row.items() if c.status == "fail"}
    assert not failed, failed
    expected, reason = FALLBACKS.get(entry.name, (set(), ""))
    assert {s for s, c in row.items() if c.status == "fallback"} == expected
    assert all(reason in row[s].detail for s in expected)
    assert ("TRL comparison n/a" in row["dpo"].detail) == (entry.name in TRL_UNSUPPORTED)
    for s in {"conquer", "best_of_n"} - expected:  # shared prefix: packed (block mask) and batched both == naive
        assert "packed: yes" in row[s].detail and "batched and packed" in row[s].detail, row[s].detail
    table = markdown([entry], {entry.name: row}, 0.0)
    assert f"| {entry.name} |" in table and "**FAIL**" not in table

"""Path-valued manifest entries compared by what they name, not by how they are spelled.

A resumed run is refused when its config differs from the folder's manifest. Paths must not
count as different because they are spelled differently (``./x`` vs ``x``, relative vs
absolute, another working directory) or because the whole run folder was moved: two values
are the same path when they resolve to the same file (each against the working directory of
its own run), when the old one maps onto the new one by the move of the manifest's folder, or
when both are fingerprinted inputs with the same content.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def looks_like_path(value: Any, cwd: str | None = None) -> bool:
    """A string written like a path (has a separator, or names something that exists)."""
    if not isinstance(value, str) or not value or "://" in value:
        return False
    return "/" in value or os.sep in value or value.startswith("~") or (Path(cwd or os.getcwd()) / value).exists()


def resolve_in(value: str, cwd: str | None) -> Path:
    """``value`` made absolute against ``cwd`` (default: this process's), symlinks resolved."""
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = Path(cwd or os.getcwd()) / p
    return Path(os.path.realpath(p))


def relocated(path: Path, old_location: str | None, new_location: str | None) -> Path | None:
    """Where ``path`` is now if the manifest's folder moved from ``old_location`` to ``new_location``.

    The moved root is what remains after stripping the two locations' common trailing parts
    (``/a/runs/x/train`` -> ``/b/x/train``: ``/a/runs`` moved to ``/b``). None when nothing moved
    or ``path`` is outside the moved root.
    """
    if not old_location or not new_location or old_location == new_location:
        return None
    o, n = Path(old_location).parts, Path(new_location).parts
    k = 0
    while k < min(len(o), len(n)) - 1 and o[-1 - k] == n[-1 - k]:
        k += 1
    old_root, new_root = Path(*o[: len(o) - k]), Path(*n[: len(n) - k])
    try:
        return new_root / path.relative_to(old_root)
    except ValueError:
        return None


def _same_content(old_path: Path, new_path: Path, old: Row, new: Row) -> bool:
    """Both paths are fingerprinted inputs of their manifests, with the same sha256."""
    a = {e.get("path"): e.get("sha256") for e in old.get("inputs", []) if isinstance(e, dict)}
    b = {e.get("path"): e.get("sha256") for e in new.get("inputs", []) if isinstance(e, dict)}
    sha = a.get(str(old_path))
    return sha is not None and sha == b.get(str(new_path))


def same_path(a: Any, b: Any, old: Row, new: Row) -> bool:
    """True when config values ``a`` (old manifest) and ``b`` (this run) name the same path."""
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    if not (looks_like_path(a, old.get("cwd")) or looks_like_path(b, new.get("cwd"))):
        return False
    pa, pb = resolve_in(a, old.get("cwd")), resolve_in(b, new.get("cwd"))
    if pa == pb or relocated(pa, old.get("location"), new.get("location")) == pb:
        return True
    return _same_content(pa, pb, old, new)


def changed_inputs(old: Row, new: Row) -> list[str]:
    """Inputs (by position) whose content fingerprint differs between two manifests."""
    olds, news = old.get("inputs") or [], new.get("inputs") or []
    if len(olds) != len(news):
        return [f"inputs: {len(olds)} -> {len(news)} files"]
    return [f"input {n.get('path')}: content changed ({o.get('sha256', '?')[:19]} -> {n.get('sha256', '?')[:19]})"
            for o, n in zip(olds, news) if o.get("sha256") != n.get("sha256")]

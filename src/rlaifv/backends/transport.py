"""HTTP to an OpenAI-compatible server: retries, a rate limit, concurrency, and a request log for resume.

Why: a labeling run sends tens of thousands of requests; servers answer 429 when busy and 5xx
when restarting, and a killed stage must not pay again for what it already got. So:

* retries with exponential backoff on HTTP 429 / 5xx, timeouts and connection errors
  (``backoff`` * 2^i seconds, capped at 60 s; a ``Retry-After`` header wins), at most ``max_retries``;
  other HTTP 4xx are the input's fault (:class:`InputRejected`), never retried;
* at most ``max_concurrency`` requests in flight (threads: the work is waiting on the server);
* ``requests_per_minute``: requests start at least 60/rpm seconds apart;
* every request and its response appended to ``backend_requests.jsonl`` in the stage folder
  (images replaced by the sha256 of their data URL, so the log stays small). The key of a line
  is the sha256 of the request body (:func:`base.request_key`); a rerun answers a request whose
  key is in the log from the log (counted as ``reused``) instead of sending it again.

Only the standard library is used (``urllib``, ``concurrent.futures``).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from .base import REQUESTS_NAME, BackendError, EndpointOptions, InputRejected, rank_suffix, request_key

T = TypeVar("T")
R = TypeVar("R")
RETRY_STATUS = (408, 409, 425, 429, 500, 502, 503, 504)
MAX_WAIT = 60.0


def redact(body: Any) -> Any:
    """The body with every ``data:`` URL replaced by ``sha256:<hex>`` of it (what the log keeps)."""
    if isinstance(body, dict):
        return {k: redact(v) for k, v in body.items()}
    if isinstance(body, list):
        return [redact(v) for v in body]
    if isinstance(body, str) and body.startswith("data:"):
        return "sha256:" + hashlib.sha256(body.encode()).hexdigest()
    return body


class RequestLog:
    """``backend_requests.jsonl``: one line per answered request; read back on a rerun."""

    def __init__(self, out: Path | None) -> None:
        self.path = None if out is None else Path(out) / REQUESTS_NAME.replace(".jsonl", f"{rank_suffix()}.jsonl")
        self.rows: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if self.path is not None and self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: that request is sent again
                    continue
                if isinstance(row, dict) and "key" in row and "response" in row:
                    self.rows[row["key"]] = row

    def get(self, key: str) -> dict[str, Any] | None:
        return self.rows.get(key)

    def append(self, row: dict[str, Any]) -> None:
        with self._lock:
            self.rows[row["key"]] = row
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())


class RateLimiter:
    """Requests start at least ``60 / requests_per_minute`` seconds apart (0: no limit)."""

    def __init__(self, requests_per_minute: float) -> None:
        self.interval = 60.0 / requests_per_minute if requests_per_minute > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class Transport:
    """POST JSON to ``base_url + path`` with retries, rate limit, concurrency and the request log."""

    def __init__(self, endpoint: EndpointOptions, out: Path | None, stage: str) -> None:
        self.base = endpoint.base_url.rstrip("/")
        self.opts, self.stage = endpoint, stage
        key = os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        self.log = RequestLog(out)
        self.limiter = RateLimiter(endpoint.requests_per_minute)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.sleep: Callable[[float], None] = time.sleep  # tests replace it

    def _count(self, name: str, k: int = 1) -> None:
        with self._lock:
            self.counts[name] += k

    def post(self, path: str, body: dict[str, Any], kind: str, note: Callable[[dict], dict] | None = None) -> dict[str, Any]:
        """The server's JSON reply to ``body`` (from the log when this exact request was answered before).

        ``note(response)`` adds derived fields to the log line (e.g. yes/no outside the top-k).
        """
        key = request_key(path, body)
        old = self.log.get(key)
        if old is not None:
            self._count("reused")
            return old["response"]
        t0, attempts = time.time(), 0
        while True:
            attempts += 1
            self.limiter.wait()
            try:
                reply = self._send(path, body)
                break
            except _Retryable as e:
                if attempts > self.opts.max_retries:
                    self._count("failed")
                    raise BackendError(f"{self.stage}: {self.base}{path}: {e.reason} after {attempts} attempt(s) "
                                       f"(endpoint.max_retries {self.opts.max_retries}); rerun to resume: answered requests are "
                                       "kept in " + str(self.log.path or "memory")) from None
                self._count("retries")
                self.sleep(min(MAX_WAIT, e.retry_after if e.retry_after is not None else self.opts.backoff * 2 ** (attempts - 1)))
        self._count("requests")
        self._count(f"requests_{kind}")
        row = {"key": key, "kind": kind, "path": path, "request": redact(body), "response": reply, "attempts": attempts,
               "seconds": round(time.time() - t0, 3)}
        if note is not None:
            row.update(note(reply))
        self.log.append(row)
        return reply

    def _send(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(), headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.opts.timeout) as resp:
                raw = resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            detail = " ".join(e.read().decode("utf-8", "replace").split())[:300]
            if e.code in RETRY_STATUS:
                raise _Retryable(f"HTTP {e.code} {detail}", _retry_after(e.headers.get("Retry-After"))) from None
            if e.code in (401, 403, 404):
                raise BackendError(f"{self.stage}: {self.base}{path}: HTTP {e.code} {e.reason}: {detail} (check endpoint.base_url, "
                                   f"endpoint.model and the key in ${self.opts.api_key_env})") from None
            raise InputRejected(f"the server refused the request: HTTP {e.code} {e.reason}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise _Retryable(f"cannot reach the server ({reason})", None) from None
        try:
            reply = json.loads(raw)
        except json.JSONDecodeError:
            raise BackendError(f"{self.stage}: {self.base}{path}: the reply is not JSON: {raw[:200]!r}") from None
        if not isinstance(reply, dict):
            raise BackendError(f"{self.stage}: {self.base}{path}: unexpected reply {raw[:200]!r}")
        return reply

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``fn`` over ``items`` with at most ``max_concurrency`` in flight, results in input order."""
        if len(items) <= 1 or self.opts.max_concurrency <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(max_workers=min(self.opts.max_concurrency, len(items))) as pool:
            return list(pool.map(fn, items))


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: use our own backoff
        return None


def log_counts(out: Path) -> dict[str, Any]:
    """Counts over every request log of a stage folder (all runs): requests by kind, retries, notes."""
    rows: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(out).glob(REQUESTS_NAME.replace(".jsonl", "*.jsonl"))):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "key" in row:
                rows[row["key"]] = row
    kinds = Counter(str(r.get("kind")) for r in rows.values())
    return {"requests": len(rows), "by_kind": dict(sorted(kinds.items())),
            "retries": sum(max(0, int(r.get("attempts", 1)) - 1) for r in rows.values())}

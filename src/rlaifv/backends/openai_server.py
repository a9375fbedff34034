"""``backend: openai``: the three jobs on any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp, ``transformers serve``).

Requests (``/chat/completions``; the image as a PNG data URL in the user turn, before the
question, as ``models/chat.py`` places it, so the server renders the model's own chat template):

* **sampling**: one request per candidate with its own ``seed`` (the candidate's 63-bit seed mod
  2^31: some servers take 32-bit seeds), ``temperature``, ``top_p``, ``max_tokens``; every
  candidate of a prompt has the same decoding. With ``endpoint.use_n`` one request per prompt
  asks for ``n`` choices (seeded with candidate 0's seed); the first such request probes the
  server: if it returns fewer choices than asked (``transformers serve`` ignores ``n``), that is
  said once, counted (``n_fallbacks``) and every prompt goes back to one request per seed.
  ``finish_reason == "length"`` marks a candidate truncated.
* **conquer**: ``max_tokens=1, temperature=0, logprobs=true, top_logprobs=k``; p_yes / p_no sum
  exp(logprob) of the returned first-position tokens that read yes / no
  (:func:`base.yes_no_from_top_logprobs`). No log-probs in the reply -> :class:`CapabilityError`
  (the job cannot be done, never guessed). A word with no token in the top-k is recorded per
  question (``outside_top_k``, counted in the summary; its p is then a lower bound).
* **best-of-N answer log-probs**: vLLM's ``prompt_logprobs`` extension of chat completions on
  the conversation [user (image, question), assistant (answer)] without a generation prompt; the
  answer's tokens (``models/chat.answer_ids``, from a local copy of the processor:
  ``endpoint.tokenizer``) are found at the end of the returned prompt tokens. A server without
  it -> :class:`CapabilityError` naming ``prompt_logprobs``.

Transport (retries, rate limit, concurrency, the resumable request log): ``transport.py``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

from .base import (BackendError, Capabilities, CapabilityError, Decoding, EndpointOptions, Generation, YesNo, image_data_url,
                   yes_no_from_top_logprobs)
from .transport import Transport

CHAT = "/chat/completions"
SEED_MOD = 2**31


def user_turn(data_url: str, question: str) -> dict[str, Any]:
    """The user message: image first, then the question (``models/chat.user_message``'s order)."""
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url}}, {"type": "text", "text": question}]}


def choice_text(reply: dict[str, Any], i: int = 0) -> Generation:
    """The i-th choice as a Generation (text stripped like the hf path; ``length`` = truncated)."""
    try:
        ch = reply["choices"][i]
        return Generation(str(ch["message"].get("content") or "").strip(), ch.get("finish_reason") == "length")
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise BackendError(f"unexpected chat completion reply (no choices[{i}].message): {str(reply)[:200]!r}") from e


def first_token_logprobs(reply: dict[str, Any]) -> list[tuple[str, float]] | None:
    """(token, logprob) pairs at the first generated position of a chat completion
    (``choices[0].logprobs.content[0]``: the token itself and its ``top_logprobs``); None when the
    reply carries no log-probs."""
    try:
        content = (reply["choices"][0].get("logprobs") or {}).get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    if not content:
        return None
    first = content[0]
    pairs = [(str(t["token"]), float(t["logprob"])) for t in first.get("top_logprobs") or [] if t.get("logprob") is not None]
    if first.get("token") is not None and first.get("logprob") is not None:
        pairs.append((str(first["token"]), float(first["logprob"])))
    return pairs or None


def completion_first_logprobs(reply: dict[str, Any]) -> list[tuple[str, float]] | None:
    """The same from a legacy ``/completions`` reply (``choices[0].logprobs.top_logprobs[0]``, a token -> logprob map)."""
    try:
        lp = reply["choices"][0].get("logprobs") or {}
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    tops = lp.get("top_logprobs") or []
    pairs = [(str(k), float(v)) for k, v in (tops[0] or {}).items()] if tops else []
    toks, tlp = lp.get("tokens") or [], lp.get("token_logprobs") or []
    if toks and tlp and tlp[0] is not None:
        pairs.append((str(toks[0]), float(tlp[0])))
    return pairs or None


class OpenAIBackend:
    """Sampling, yes/no and answer log-probs through an OpenAI-compatible server."""

    name = "openai"

    def __init__(self, endpoint: EndpointOptions, stage: str = "stage", out: Path | None = None, cfg: Any = None,
                 processor: Any = None) -> None:
        endpoint.check(stage)
        self.endpoint, self.stage, self.cfg = endpoint, stage, cfg
        self.model = endpoint.model or str(getattr(cfg, "model", "") or "")
        self.http = Transport(endpoint, out, stage)
        self._processor = processor
        self._n_ok: bool | None = None
        self._logprobs_ok: bool | None = None
        self._prompt_logprobs_ok: bool | None = None
        self.notes: list[str] = []
        self.identical_prompts = 0  # prompts whose n > 1 sampled candidates all came back identical

    # ------------------------------------------------------------------ protocol

    def capabilities(self) -> Capabilities:
        yes_no = None if self._logprobs_ok is False else "top_logprobs"
        return Capabilities("openai", sample_n=self._n_ok, seed=True, yes_no=yes_no, answer_logprobs=self._prompt_logprobs_ok,
                            notes=tuple(self.notes))

    def counts(self) -> dict[str, Any]:
        c = dict(self.http.counts)
        c["identical_candidates_prompts"] = self.identical_prompts
        return c

    def close(self) -> None:
        return None

    def _body(self, messages: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
        return {"model": self.model, "messages": messages, "stream": False, **kw}

    # ------------------------------------------------------------------ sampling

    def sample(self, images: Sequence[Any], questions: Sequence[str], seeds: Sequence[Sequence[int]],
               decodings: Sequence[Decoding]) -> list[list[Generation]]:
        urls = [image_data_url(im) for im in images]
        n = len(decodings)
        if self.endpoint.use_n and n > 1 and len(set(decodings)) == 1 and self._n_ok is not False:
            out = self._sample_n(urls, questions, seeds, decodings[0])
            if out is not None:
                return self._check_identical(out, decodings)
        jobs = [(i, k) for i in range(len(urls)) for k in range(n)]

        def one(job: tuple[int, int]) -> Generation:
            i, k = job
            d = decodings[k]
            body = self._body([user_turn(urls[i], questions[i])], max_tokens=d.max_new_tokens, temperature=d.temperature,
                              top_p=d.top_p, seed=int(seeds[i][k]) % SEED_MOD)
            return choice_text(self.http.post(CHAT, body, "sample"))

        flat = self.http.map(one, jobs)
        return self._check_identical([flat[i * n : (i + 1) * n] for i in range(len(urls))], decodings)

    def _sample_n(self, urls: list[str], questions: Sequence[str], seeds, d: Decoding) -> list[list[Generation]] | None:
        """One request with ``n`` choices per prompt; None (and per-seed requests from now on) when
        the server returns fewer choices than asked."""
        n = len(seeds[0])

        def one(i: int) -> list[Generation] | None:
            body = self._body([user_turn(urls[i], questions[i])], max_tokens=d.max_new_tokens, temperature=d.temperature,
                              top_p=d.top_p, seed=int(seeds[i][0]) % SEED_MOD, n=n)
            reply = self.http.post(CHAT, body, "sample_n")
            got = len(reply.get("choices") or [])
            if got < n:
                return None
            return [choice_text(reply, k) for k in range(n)]

        if self._n_ok is None:  # probe with the first prompt before sending the rest
            first = one(0)
            self._n_ok = first is not None
            if first is None:
                self._n_fallback(n)
                return None
            rest = self.http.map(one, list(range(1, len(urls))))
            results = [first, *rest]
        else:
            results = self.http.map(one, list(range(len(urls))))
        if any(r is None for r in results):  # the server changed its mind: fall back for good
            self._n_ok = False
            self._n_fallback(n)
            return None
        return results  # type: ignore[return-value]

    def _n_fallback(self, n: int) -> None:
        msg = (f"{self.stage}: the server at {self.endpoint.base_url} ignored n={n} (returned fewer choices); "
               "sending one request per candidate seed instead")
        self.notes.append(msg)
        self.http.counts["n_fallbacks"] += 1
        warnings.warn(msg, stacklevel=3)

    def _check_identical(self, out: list[list[Generation]], decodings: Sequence[Decoding]) -> list[list[Generation]]:
        """Count prompts whose n > 1 sampled candidates are all the same text (a server that ignores
        temperature / seed samples greedily: the candidates then carry no contrast)."""
        if len(decodings) > 1 and all(d.temperature > 0 for d in decodings):
            self.identical_prompts += sum(1 for gens in out if len({g.text for g in gens}) == 1)
        return out

    # ------------------------------------------------------------------ conquer

    def _check_prefill(self) -> None:
        """Refuse a labeler whose own template writes text before every answer (``AnswerFormat.prefill``,
        e.g. an empty thinking block): a chat server stops at the generation prompt, so its first
        generated token would be that text's, not the answer's. Checked once, with the local processor
        when there is one (``endpoint.tokenizer`` or a model folder); else noted, never assumed."""
        if getattr(self, "_prefill_checked", False):
            return
        self._prefill_checked = True
        path = self.endpoint.tokenizer or str(getattr(self.cfg, "model", "") or "")
        if self._processor is None and not (path and Path(path).is_dir()):
            self.notes.append("prefill not checked: no local processor (endpoint.tokenizer)")
            return
        from ..models.template import answer_format

        prefill = answer_format(self.processor()).prefill
        if prefill:
            raise CapabilityError(f"{self.stage}: the labeler's chat template puts {prefill!r} before every answer; through a chat "
                                  "server the first generated token is that text's, not the answer's, so p_yes / p_no would not be "
                                  "the method's: use --backend hf or vllm for this labeler")

    def yes_no(self, image: Any, questions: Sequence[str]) -> list[YesNo]:
        self._check_prefill()
        url = image_data_url(image)
        k = self.endpoint.top_logprobs
        yes_t, no_t = getattr(self.cfg, "yes_tokens", None), getattr(self.cfg, "no_tokens", None)
        yes_t = [str(t) for t in yes_t] if yes_t is not None else None
        no_t = [str(t) for t in no_t] if no_t is not None else None

        def note(reply: dict[str, Any]) -> dict[str, Any]:
            pairs = first_token_logprobs(reply)
            return {"outside_top_k": list(yes_no_from_top_logprobs(pairs, yes_t, no_t).outside_top_k) if pairs else None}

        def one(q: str) -> YesNo:
            body = self._body([user_turn(url, q)], max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=k)
            reply = self.http.post(CHAT, body, "yes_no", note)
            pairs = first_token_logprobs(reply)
            if pairs is None:
                self._logprobs_ok = False
                raise CapabilityError(
                    f"{self.stage}: the server at {self.endpoint.base_url} returned no log-probs (choices[0].logprobs is empty) "
                    f"for a request with logprobs=true, top_logprobs={k}: conquer reads p_yes / p_no from the first answer "
                    "token's log-probs (capability 'logprobs'), which this server does not provide; serve the labeler with "
                    "vLLM, SGLang or llama.cpp, or use --backend hf")
            self._logprobs_ok = True
            return yes_no_from_top_logprobs(pairs, yes_t, no_t)

        return _mapped_unique(self.http.map, one, list(questions))

    # ------------------------------------------------------------------ best-of-N

    def processor(self) -> Any:
        """The local processor (answer token ids); CapabilityError when there is none."""
        if self._processor is None:
            from ..models.load import load_processor

            path = self.endpoint.tokenizer or str(getattr(self.cfg, "model", "") or "")
            if not path or not Path(path).is_dir():
                raise CapabilityError(f"{self.stage}: answer log-probs through a server need the answer's token ids: set "
                                      "endpoint.tokenizer to a local folder holding the served model's processor")
            self._processor = load_processor(path)
        return self._processor

    def answer_logprobs(self, image: Any, question: str, answers: Sequence[str]) -> list[list[float]]:
        from ..models.chat import answer_ids

        proc = self.processor()
        url = image_data_url(image)

        def one(answer: str) -> list[float]:
            ids = answer_ids(proc, answer)
            msgs = [user_turn(url, question), {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
            body = self._body(msgs, max_tokens=1, temperature=0.0, prompt_logprobs=1, add_generation_prompt=False,
                              continue_final_message=False)
            reply = self.http.post(CHAT, body, "answer_logprobs")
            return self._answer_tail(reply, ids)

        return _mapped_unique(self.http.map, one, list(answers))

    def _answer_tail(self, reply: dict[str, Any], ids: list[int]) -> list[float]:
        rows = reply.get("prompt_logprobs")
        if not rows:
            self._prompt_logprobs_ok = False
            raise CapabilityError(f"{self.stage}: the server at {self.endpoint.base_url} returned no prompt log-probs "
                                  "(no 'prompt_logprobs' in the chat completion reply): best-of-N scoring needs them (capability "
                                  "'prompt_logprobs', vLLM's extension); serve the model with vLLM or use --backend hf")
        self._prompt_logprobs_ok = True
        return answer_tail_logprobs(rows, ids)


def _mapped_unique(mapper, fn, items: list) -> list:
    """``fn`` over the distinct items (one request each, even when sent concurrently), in input order."""
    unique = list(dict.fromkeys(items))
    got = dict(zip(unique, mapper(fn, unique)))
    return [got[x] for x in items]


def answer_tail_logprobs(rows: list[Any], ids: Sequence[int]) -> list[float]:
    """Log-probs of ``ids`` (answer + end-of-turn token) at their LAST occurrence in vLLM's
    ``prompt_logprobs`` list (one ``{token_id: {"logprob": ...}}`` per prompt token, None first)."""
    t = len(ids)
    for start in range(len(rows) - t, 0, -1):
        window = rows[start : start + t]
        if all(isinstance(r, dict) and str(tid) in r for r, tid in zip(window, ids)):
            return [float(_logprob(r[str(tid)])) for r, tid in zip(window, ids)]
    raise BackendError(f"the answer's {t} tokens were not found in the server's prompt tokens: the served model's tokenizer "
                       "differs from endpoint.tokenizer, or its chat template renders the answer differently")


def _logprob(entry: Any) -> float:
    return float(entry["logprob"] if isinstance(entry, dict) else entry)

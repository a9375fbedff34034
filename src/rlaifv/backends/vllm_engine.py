"""The ``vllm`` backend: sampling, conquer and best-of-N scoring on vLLM's offline engine.

Why: generation and one-question-per-forward labeling are most of a run's time at the paper's
scale (a 7B-12B policy, a 34B labeler). vLLM's offline engine (``vllm.LLM``) batches every
request of a call continuously, reuses shared prompt blocks (automatic prefix caching: all
candidates of a prompt and all questions about one image share the image and the template
prefix) and splits a labeler over GPUs (tensor parallelism). Optional extra:
``pip install rlaifv[vllm]`` (a CUDA package; imported lazily, only when this backend is used).

What the backend sends is what the ``hf`` backend feeds the model, token for token: each prompt
is the model's own chat template rendered by its processor (``models.chat.prompt_text``),
tokenised with the same BOS rule as ``models.chat.encode_prompt``, and passed as a
``TokensPrompt`` (``{"prompt_token_ids": ..., "multi_modal_data": {"image": PIL}}``); vLLM
expands the image placeholder itself, as the HF processor does. The three jobs:

* **sample**: one request per candidate, each with its own ``SamplingParams(seed=...)`` and the
  same decoding (temperature, top_p, max_tokens, the template's stop ids), all in one
  ``LLM.generate`` call so vLLM batches them; texts are decoded from the returned token ids with
  the processor's tokenizer (``skip_special_tokens``), as ``stages/sample.py`` decodes;
  ``finish_reason == "length"`` marks a truncated answer.
* **conquer**: ``max_tokens=1``, greedy, ``logprobs=k``. vLLM returns, for the generated
  position, a dict token id -> ``Logprob`` holding the top-k tokens plus the sampled one
  (``vllm/logprobs.py``, ``append_logprobs_for_next_position``); by default these are raw
  log-softmax values of the model's logits (before temperature), i.e. the full-vocabulary
  probabilities the ``hf`` backend reads (``models.yesno.p_yes_no``). p_yes / p_no = sum of
  exp(logprob) over the labeler's own first-answer yes / no ids (``models.template``), matched
  by token id. A yes/no id outside the returned top-k is **not guessed**: it contributes
  nothing, is listed per question (:class:`YesNoReadout` ``missing_yes`` / ``missing_no``), and
  ``verdict_certain`` says whether the missing ids (each at most the smallest returned
  probability) could flip p_yes > p_no; ``VLLMBackend.counts()`` counts both for the stage
  summary and every such question is written to ``OUT/vllm_outside_top_k.jsonl``.
* **best-of-N**: the prompt followed by the answer's tokens (``models.chat.answer_ids``: answer
  + end-of-turn, in context) as one prompt, ``prompt_logprobs=0``: vLLM returns one entry per
  prompt token, the first ``None`` and entry i holding at least token i's own log-prob
  (``vllm/logprobs.py``, ``create_prompt_logprobs``). The answer's log-probs are the last T
  entries; the returned ``prompt_token_ids`` tail is checked to be the answer's ids (a mismatch
  is an error, never a silent misalignment). vLLM skips the prefix cache for requests asking
  for prompt log-probs (``vllm/v1/core/kv_cache_manager.py``, ``get_computed_blocks``), so
  best-of-N on vLLM re-encodes each (prompt, answer) whole.

Shapes relied on (vllm-project/vllm): ``vllm/outputs.py`` @ 003d3ee22261b7937258b7531aee00e10393f1d6
(``RequestOutput.prompt_token_ids / prompt_logprobs / outputs``, ``CompletionOutput.index / text /
token_ids / logprobs / finish_reason``); ``vllm/logprobs.py`` @ 578b601cd1f41074873532e99af8369bf75cb5a9
(``Logprob(logprob, rank, decoded_token)``, prompt log-probs start with ``None``);
``vllm/sampling_params.py`` @ db573835d3ef40643442e0817059e087355cf458 (``n, seed, temperature,
top_p, max_tokens, logprobs, prompt_logprobs, stop_token_ids, skip_special_tokens``);
``vllm/entrypoints/llm.py`` @ 10fdb8f0d75a3ad1122b87020f1359d3fc51f2ca (``LLM(model, tensor_parallel_size,
dtype, seed, gpu_memory_utilization, **engine_args)``, ``generate(prompts, sampling_params: one
per prompt)``, ``TokensPrompt`` with ``multi_modal_data``); ``vllm/v1/core/kv_cache_manager.py`` @
ace980e6de0540f49b0c63248437a1a7807590c1. Log-probs may come as ``list[dict | None]`` or as vLLM's
``FlatLogprobs`` (same indexing; its first prompt entry is an empty dict instead of ``None``):
only ``len`` and integer indexing are used. Tested on outputs built by hand in those shapes
(``tests/data/vllm/``, ``tests/test_backend_vllm.py``) and against the ``hf`` backend with a
stand-in engine that computes each request with the HF model (``tests/test_backend_vllm_parity.py``);
the engine itself runs only in ``bench/gpu_smoke.sh`` (needs CUDA).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..models.yesno import YesNoIds
from .base import BackendError, Capabilities, Decoding, Generation, VLLMOptions, YesNo

INSTALL_HINT = "pip install rlaifv[vllm]"
#: questions whose yes/no ids fell outside the returned top-k, one JSON line each (in the stage folder)
OUTSIDE_TOP_K_NAME = "vllm_outside_top_k.jsonl"


class VLLMOutputError(BackendError):
    """A vLLM output does not have the shape this backend relies on (never silently realigned)."""


def import_vllm():
    """The ``vllm`` module, or a one-line BackendError naming the extra to install."""
    try:
        import vllm
    except ImportError as e:
        raise BackendError(f"backend vllm: vLLM is not installed ({e.msg}); install it with `{INSTALL_HINT}` "
                           "(a CUDA package), or use --backend hf") from None
    return vllm


def llm_kwargs(model: str, options: VLLMOptions) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM``: one image per prompt, enough log-probs for conquer,
    prefix caching and tensor parallelism as configured."""
    kw: dict[str, Any] = {
        "model": model, "tensor_parallel_size": options.tensor_parallel_size, "dtype": options.dtype,
        "gpu_memory_utilization": options.gpu_memory_utilization, "enable_prefix_caching": options.enable_prefix_caching,
        "max_logprobs": max(20, options.top_logprobs), "limit_mm_per_prompt": {"image": 1},
        "enforce_eager": bool(getattr(options, "enforce_eager", False)),
    }
    if options.max_model_len:
        kw["max_model_len"] = options.max_model_len
    return kw


# ----------------------------------------------------------------------------- requests (pure)


def prompt_token_ids(processor, question: str, history: Sequence[tuple[str, str]] = ()) -> list[int]:
    """Token ids of the templated prompt, image placeholder unexpanded, BOS as ``encode_prompt`` adds it.

    The text is ``models.chat.prompt_text`` (the processor's chat template + prefill); a template
    that writes the BOS itself gets no second one, exactly as in ``models.chat.encode_prompt``.
    """
    from ..models.chat import prompt_text

    text = prompt_text(processor, question, history)
    tok = getattr(processor, "tokenizer", processor)
    bos = getattr(tok, "bos_token", None)
    kw = {"add_special_tokens": False} if bos and text.startswith(bos) else {}
    return list(tok(text, **kw)["input_ids"])


def tokens_prompt(ids: Sequence[int], image) -> dict[str, Any]:
    """A vLLM ``TokensPrompt`` (a TypedDict, so a plain dict) with one image."""
    return {"prompt_token_ids": list(ids), "multi_modal_data": {"image": image}}


def sampling_params_for_candidates(vllm, seeds: Sequence[int], decodings: Sequence[Decoding], stop_ids: Sequence[int]) -> list:
    """One ``SamplingParams`` per candidate: its own seed, its decoding (the same for all except
    the confounded ablation), ``n=1``; temperature 0 is greedy.

    One request per candidate (not ``n=len(seeds)`` with one seed) so that each candidate is
    reproducible from its own recorded seed, as with the ``hf`` backend's per-row generators.
    Seeds go as they are (63-bit): vLLM seeds a ``torch.Generator`` per request with them.
    """
    if len(seeds) != len(decodings):
        raise ValueError(f"one decoding per seed: {len(seeds)} seeds, {len(decodings)} decodings")
    return [vllm.SamplingParams(n=1, seed=int(s), temperature=float(d.temperature), top_p=float(d.top_p),
                                max_tokens=int(d.max_new_tokens), stop_token_ids=list(stop_ids), skip_special_tokens=True)
            for s, d in zip(seeds, decodings)]


def yes_no_params(vllm, k: int):
    """Conquer: one greedy token with the top-``k`` log-probs of the first answer position."""
    return vllm.SamplingParams(n=1, temperature=0.0, max_tokens=1, logprobs=int(k))


def prompt_logprob_params(vllm):
    """Best-of-N: the log-prob of every prompt token (``prompt_logprobs=0``: the token itself only)."""
    return vllm.SamplingParams(n=1, temperature=0.0, max_tokens=1, prompt_logprobs=0)


# ----------------------------------------------------------------------------- outputs (pure)


def candidate_from_output(request_output, tokenizer) -> Generation:
    """The single completion of one candidate request (``n=1``), decoded like ``stages/sample.py``."""
    outs = list(request_output.outputs)
    if len(outs) != 1:
        raise VLLMOutputError(f"request {request_output.request_id}: expected 1 completion (n=1), got {len(outs)}")
    out = outs[0]
    ids = tuple(int(t) for t in out.token_ids)
    text = tokenizer.decode(list(ids), skip_special_tokens=True).strip()
    return Generation(text=text, truncated=out.finish_reason == "length")  # "length": hit max_tokens


@dataclass(frozen=True)
class YesNoReadout:
    """p_yes / p_no of one question from vLLM's top-k log-probs at the first answer position.

    ``p_yes`` / ``p_no`` sum the returned yes / no ids only; ids outside the top-k are listed
    in ``missing_yes`` / ``missing_no`` (never guessed). ``floor`` is the smallest returned
    probability: each missing id has at most that much, so ``verdict_certain`` is True when no
    assignment of the missing mass can change whether p_yes > p_no.
    """

    p_yes: float
    p_no: float
    missing_yes: tuple[int, ...]
    missing_no: tuple[int, ...]
    floor: float
    returned: int  # how many token ids vLLM returned at that position

    @property
    def complete(self) -> bool:
        return not self.missing_yes and not self.missing_no

    @property
    def verdict_certain(self) -> bool:
        max_yes = self.p_yes + len(self.missing_yes) * self.floor
        max_no = self.p_no + len(self.missing_no) * self.floor
        accepted = self.p_yes > self.p_no
        return (self.p_yes > max_no) if accepted else (self.p_no >= max_yes)


def yes_no_from_position(position: dict, ids: YesNoIds) -> YesNoReadout:
    """:class:`YesNoReadout` from one position's ``{token_id: Logprob}`` dict (keys matched as ints)."""
    if not position:
        raise VLLMOutputError("no log-probs returned for the first answer position (was logprobs set?)")
    by_id = {int(t): float(lp.logprob) for t, lp in position.items()}
    bad = [t for t, v in by_id.items() if math.isnan(v)]
    if bad:
        raise FloatingPointError(f"NaN log-prob for token(s) {bad}")

    def mass(want: Sequence[int]) -> tuple[float, tuple[int, ...]]:
        return sum(math.exp(by_id[t]) for t in want if t in by_id), tuple(t for t in want if t not in by_id)

    p_yes, miss_yes = mass(ids.yes)
    p_no, miss_no = mass(ids.no)
    floor = min(math.exp(v) for v in by_id.values())
    return YesNoReadout(p_yes, p_no, miss_yes, miss_no, floor, len(by_id))


def yes_no_from_output(request_output, ids: YesNoIds) -> YesNoReadout:
    """The readout of a conquer request (``max_tokens=1``, ``logprobs=k``)."""
    outs = list(request_output.outputs)
    if len(outs) != 1 or not outs[0].logprobs:
        raise VLLMOutputError(f"request {request_output.request_id}: expected one completion with log-probs, got "
                              f"{len(outs)} completion(s){'' if not outs else ' without log-probs'}")
    return yes_no_from_position(outs[0].logprobs[0], ids)


def answer_logprobs_from_output(request_output, answer: Sequence[int]) -> list[float]:
    """Per-token log-probs of ``answer`` (the last tokens of the prompt) from ``prompt_logprobs``.

    ``prompt_logprobs[i]`` holds token i's log-prob given tokens < i (entry 0 is None). The
    prompt's last ``len(answer)`` token ids must be ``answer``.
    """
    ids = [int(t) for t in request_output.prompt_token_ids]
    plp = request_output.prompt_logprobs
    T, L = len(answer), len(ids)
    if plp is None or len(plp) != L:
        raise VLLMOutputError(f"request {request_output.request_id}: expected {L} prompt log-prob entries, "
                              f"got {None if plp is None else len(plp)} (was prompt_logprobs set?)")
    if T == 0 or T >= L or ids[L - T:] != [int(t) for t in answer]:
        raise VLLMOutputError(f"request {request_output.request_id}: the prompt does not end with the answer's "
                              f"{T} token ids (tail {ids[max(0, L - T):][:8]}..., answer {list(answer)[:8]}...)")
    out = []
    for pos in range(L - T, L):
        entry = plp[pos]
        if entry is None or ids[pos] not in {int(k) for k in entry}:
            raise VLLMOutputError(f"request {request_output.request_id}: no log-prob for prompt token {pos} ({ids[pos]})")
        lp = {int(k): v for k, v in entry.items()}[ids[pos]].logprob
        out.append(float(lp))
    return out


def as_yes_no(r: YesNoReadout, ids: YesNoIds) -> YesNo:
    """The interface's :class:`~rlaifv.backends.base.YesNo`: ``outside_top_k`` names a word when
    none of its ids came back (as for the ``openai`` backend); partial misses are in the readout."""
    words = tuple(w for w, want, miss in (("yes", ids.yes, r.missing_yes), ("no", ids.no, r.missing_no)) if len(miss) == len(want))
    return YesNo(r.p_yes, r.p_no, words)


# ----------------------------------------------------------------------------- the backend


class VLLMBackend:
    """One model on vLLM's offline engine, with the processor that defines its prompts.

    ``model``: a model folder or ``sandbox:NAME`` (a PEFT adapter folder is refused: merge it
    into its base first, or use the ``hf`` backend). ``cfg``: the stage config (conquer's
    ``yes_tokens`` / ``no_tokens`` override the template's yes/no ids). ``out``: the stage
    folder, where questions with yes/no ids outside the top-k are listed
    (:data:`OUTSIDE_TOP_K_NAME`). ``processor`` / ``vllm_module`` replace loading them (tests).
    """

    name = "vllm"

    def __init__(self, model: str | Path, options: VLLMOptions | None = None, *, stage: str = "", out: str | Path | None = None,
                 cfg: Any = None, processor: Any = None, vllm_module: Any = None) -> None:
        from ..models.load import is_adapter, load_processor, resolve_model_path

        path = resolve_model_path(model)
        if is_adapter(path):
            raise BackendError(f"{stage or 'backend'}: backend vllm loads full model folders and {model} is a PEFT adapter; "
                               "merge it into its base (peft merge_and_unload + save_pretrained) or use --backend hf")
        self.vllm = vllm_module if vllm_module is not None else import_vllm()
        self.options = options or VLLMOptions()
        self.stage, self.cfg = stage, cfg
        self.out = Path(out) if out is not None else None
        self.processor = processor if processor is not None else load_processor(path, getattr(cfg, "trust_remote_code", False))
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self._counts: dict[str, Any] = {"requests": 0, "generate_calls": 0, "questions": 0, "yes_outside_top_k": 0,
                                        "no_outside_top_k": 0, "yes_no_ids_outside_top_k": 0, "verdict_uncertain": 0}
        self._yes_no_ids: YesNoIds | None = None
        self.llm = self.vllm.LLM(**llm_kwargs(str(path), self.options))

    def capabilities(self) -> Capabilities:
        """What this backend does; ``notes`` (which the stage prints as warnings) hold the verdicts that
        yes/no ids outside the top-k could have flipped, when there are any."""
        warning = self.counts().get("warning")
        return Capabilities("vllm", sample_n=True, seed=True, yes_no="top_logprobs", answer_logprobs=True,
                            notes=(warning,) if warning else ())

    def _generate(self, prompts: list[dict], params: list) -> list:
        outs = list(self.llm.generate(prompts, params, use_tqdm=False))
        self._counts["requests"] += len(prompts)
        self._counts["generate_calls"] += 1
        if len(outs) != len(prompts):
            raise VLLMOutputError(f"vLLM returned {len(outs)} outputs for {len(prompts)} requests")
        return outs

    def sample(self, images: Sequence[Any], questions: Sequence[str], seeds: Sequence[Sequence[int]],
               decodings: Sequence[Decoding]) -> list[list[Generation]]:
        """Per prompt i, one answer per ``seeds[i][k]`` decoded with ``decodings[k]``: one request per
        candidate, all prompts in one ``generate`` call (vLLM batches them, the prefix cache shares
        each prompt's image and template)."""
        from ..models.template import generation_stop_ids

        stops = generation_stop_ids(self.processor)
        prompts: list[dict] = []
        params: list = []
        for image, q, s in zip(images, questions, seeds):
            ids = prompt_token_ids(self.processor, q)
            prompts += [tokens_prompt(ids, image) for _ in s]
            params += sampling_params_for_candidates(self.vllm, s, decodings[: len(s)], stops)
        flat = [candidate_from_output(o, self.tokenizer) for o in self._generate(prompts, params)] if prompts else []
        out, at = [], 0
        for s in seeds:
            out.append(flat[at : at + len(s)])
            at += len(s)
        return out

    def yes_no_ids(self) -> YesNoIds:
        """The labeler's first-answer yes/no ids (conquer's override if configured), computed once."""
        if self._yes_no_ids is None:
            from ..stages.conquer import ConquerConfig, labeler_yes_no_ids
            from ..models.yesno import yes_no_ids

            cfg = self.cfg
            self._yes_no_ids = labeler_yes_no_ids(self.processor, cfg) if isinstance(cfg, ConquerConfig) else yes_no_ids(self.processor)
        return self._yes_no_ids

    def yes_no_readouts(self, image: Any, questions: Sequence[str]) -> list[YesNoReadout]:
        """Per question about ``image``: the full :class:`YesNoReadout` (missing ids, floor)."""
        if not questions:
            return []
        ids = self.yes_no_ids()
        params = yes_no_params(self.vllm, self.options.top_logprobs)
        prompts = [tokens_prompt(prompt_token_ids(self.processor, q), image) for q in questions]
        readouts = [yes_no_from_output(o, ids) for o in self._generate(prompts, [params] * len(prompts))]
        self._record(questions, readouts, ids)
        return readouts

    def yes_no(self, image: Any, questions: Sequence[str]) -> list[YesNo]:
        """p_yes / p_no per question from the top-k log-probs (see the module docstring)."""
        ids = self.yes_no_ids()
        return [as_yes_no(r, ids) for r in self.yes_no_readouts(image, questions)]

    def _record(self, questions: Sequence[str], readouts: Sequence[YesNoReadout], ids: YesNoIds) -> None:
        """Count (and list, in the stage folder) questions with yes/no ids outside the top-k."""
        c = self._counts
        c["questions"] += len(readouts)
        rows = []
        for q, r in zip(questions, readouts):
            y = as_yes_no(r, ids)
            c["yes_outside_top_k"] += "yes" in y.outside_top_k
            c["no_outside_top_k"] += "no" in y.outside_top_k
            if not r.complete:
                c["yes_no_ids_outside_top_k"] += 1
                c["verdict_uncertain"] += not r.verdict_certain
                rows.append({"question": q, "p_yes": r.p_yes, "p_no": r.p_no, "missing_yes": list(r.missing_yes),
                             "missing_no": list(r.missing_no), "floor": r.floor, "verdict_certain": r.verdict_certain})
        if rows and self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / OUTSIDE_TOP_K_NAME, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(row) + "\n" for row in rows))

    def answer_logprobs(self, image: Any, question: str, answers: Sequence[str]) -> list[list[float]]:
        """Per answer, the log-probs of its tokens (answer + end-of-turn) after the templated prompt."""
        from ..models.chat import answer_ids

        if not answers:
            return []
        prompt = prompt_token_ids(self.processor, question)
        suffixes = [answer_ids(self.processor, a) for a in answers]
        params = prompt_logprob_params(self.vllm)
        outs = self._generate([tokens_prompt(prompt + s, image) for s in suffixes], [params] * len(suffixes))
        return [answer_logprobs_from_output(o, s) for o, s in zip(outs, suffixes)]

    def counts(self) -> dict[str, Any]:
        """Requests sent and yes/no ids outside the top-k (with a warning when verdicts could flip)."""
        c = dict(self._counts)
        if c["verdict_uncertain"]:
            c["warning"] = (f"{c['verdict_uncertain']} of {c['questions']} claim verdicts could change with yes/no tokens "
                            f"outside the top {self.options.top_logprobs} log-probs (listed in {OUTSIDE_TOP_K_NAME}); "
                            "raise vllm.top_logprobs")
        return c

    def close(self) -> None:
        """Drop the engine so that a next stage can take the GPU: vLLM shuts its engine-core process
        down when the ``LLM`` object is collected; then PyTorch's cached blocks are released."""
        import gc
        import sys

        self.llm = None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

"""Deconfounded sampling (RLAIF-V Sec. 3.1): n candidates per prompt, identical decoding.

All candidates of a prompt share the input and the decoding settings and differ only in their
random draws, so differences between them reflect trustworthiness, not style. Each candidate
has its own recorded seed (a per-row ``torch.Generator``), so any single candidate can be
regenerated alone. The prompt and image are encoded **once** per prompt: the prompt is prefilled
once, its KV cache is repeated for the n candidates, and decoding continues from it (HF's
``num_return_sequences`` would prefill n copies).

Qwen2-VL / Qwen2.5-VL (3-D rotary positions): the prefill forward computes the prompt's
``rope_deltas`` (kept on the inner model), which are repeated for the n rows along with the
cache; ``generate`` then places every later token at its text position + delta, exactly as a
full forward of the duplicated prompts does (tested equal in ``tests/test_architectures.py``).

Batch independence: a candidate is a pure function of (model, prompt, seed, decoding), whatever
other prompts share the runner's batch (``prompts_per_batch``, the split across processes, a
rerun after a kill or a reject). Each prompt is therefore generated in its own call (its n rows,
no padding): batching prompts together cannot be made exact, because left padding changes the
summation order of attention over the padded keys and matrix products round differently with
the number of rows, and a 1e-7 change in a probability can flip a sampled token. Within a
call, padded prompts still get the positions ``generate`` gives them (``_prefill_positions``).
"""

from __future__ import annotations

import hashlib
import inspect
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

from ..backends.base import EndpointOptions, VLLMOptions, check_backend
from ..config import ConfigError
from ..models.chat import _TEXT_KEYS, collate
from ..models.options import LoadOptions
from ..models.template import generation_stop_ids
from ..records import Candidate, Prompt


@dataclass
class SampleConfig(LoadOptions):
    """Settings of ``rlaifv sample`` (defaults follow the reference code).

    Model loading: the ``LoadOptions`` fields (``models/options.py``: device, dtype, device_map, max_memory,
    attn_implementation, load_in_4bit/8bit, trust_remote_code), flat in this section.
    """

    model: str = ""  # policy: model folder (or sandbox:policy); required (a sandbox run defaults to sandbox:policy)
    n: int = 10  # candidates per prompt
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0  # base seed; candidate seeds derive from (seed, prompt_id, index)
    prompts_per_batch: int = 4  # prompts per runner batch (written together); each is generated alone (see module doc)
    share_prefill: bool = True  # encode each prompt once (False: duplicate it n times; for benchmarks)
    #: ablation only (RLAIF-V Table 4, "deconfounded"): candidate k of a prompt samples at
    #: confounded_temperatures[k % len], so candidates differ in style as well as trustworthiness
    confounded_temperatures: tuple[float, ...] = ()
    #: longest prompt (image + question tokens) sampled from; longer ones are bad inputs, refused
    #: before any forward. 0: the model's context minus max_new_tokens (``models/context.py``)
    max_prompt_tokens: int = 0
    max_image_pixels: int = 40_000_000  # larger images are bad inputs, refused from their header (0: no limit)
    backend: str = "hf"  # hf (this process) | vllm (offline engine) | openai (an OpenAI-compatible server): rlaifv/backends/
    endpoint: EndpointOptions = field(default_factory=EndpointOptions)  # backend openai: the server (base_url, model, retries, ...)
    vllm: VLLMOptions = field(default_factory=VLLMOptions)  # backend vllm: the engine's options

    def __post_init__(self) -> None:
        """Refuse settings no prompt could be sampled with, before the first record (a bad
        setting is a config error naming the key, never a reject of every prompt)."""
        super().__post_init__()
        check_backend("sample", self.backend, self.endpoint, self.vllm)
        for name in ("n", "max_new_tokens", "prompts_per_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sample.{name} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0 or any(not t > 0 for t in self.confounded_temperatures):
            raise ConfigError(f"sample.temperature must be > 0 (sampling), got {self.temperature}"
                              + (f" / {list(self.confounded_temperatures)}" if self.confounded_temperatures else ""))
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"sample.top_p must be in (0, 1], got {self.top_p}")


def candidate_seed(base: int, prompt_id: str, index: int) -> int:
    """A stable 63-bit seed per candidate, independent of batching and prompt order."""
    h = hashlib.sha256(f"{base}:{prompt_id}:{index}".encode()).digest()
    return int.from_bytes(h[:8], "big") & ((1 << 63) - 1)


def candidate_temperature(cfg: SampleConfig, k: int) -> float:
    """Candidate k's temperature: the same for all (deconfounded) unless the ablation list is set."""
    temps = cfg.confounded_temperatures
    return float(temps[k % len(temps)]) if temps else cfg.temperature


class SeededSampler(LogitsProcessor):
    """Temperature + top-p sampling with one generator per batch row.

    Returns scores that are -inf except at the sampled token, so ``generate`` run greedily
    picks exactly the token this row's own generator drew.
    """

    def __init__(self, seeds: Sequence[int], temperature: float | Sequence[float], top_p: float) -> None:
        temps = [float(temperature)] * len(seeds) if isinstance(temperature, (int, float)) else [float(t) for t in temperature]
        if len(temps) != len(seeds) or min(temps, default=1.0) <= 0:
            raise ValueError("sampling needs one temperature > 0 per row (or one for all)")
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.temperature = torch.tensor(temps).unsqueeze(1)
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not torch.isfinite(scores).any(dim=-1).all():
            raise FloatingPointError("sampling: a row has no finite logit")
        probs = torch.softmax(scores.float() / self.temperature.to(scores.device), dim=-1)
        if self.top_p < 1.0:
            probs = _top_p(probs, self.top_p)
        picks = [torch.multinomial(probs[r].cpu(), 1, generator=g) for r, g in enumerate(self.generators)]
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, torch.stack(picks).to(scores.device), 0.0)
        return out


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the top token
    filtered = torch.zeros_like(probs).scatter(1, idx, sorted_p * keep)
    return filtered / filtered.sum(-1, keepdim=True)


def _repeat_model_state(model, n: int) -> None:
    """Per-batch state some models keep between forward calls (Qwen2-VL's rope deltas)."""
    inner = getattr(model, "model", None)
    deltas = getattr(inner, "rope_deltas", None)
    if isinstance(deltas, torch.Tensor):
        inner.rope_deltas = deltas.repeat_interleave(n, dim=0)


_WARNED: set[str] = set()


def _can_share_prefill(model, batch) -> bool:
    """False (with a one-time warning naming the reason) where a prefilled cache cannot be reused."""
    from ..models.prefix import check_prefix_shareable

    try:
        check_prefix_shareable(model, batch)
    except NotImplementedError as e:
        if type(model).__name__ not in _WARNED:
            _WARNED.add(type(model).__name__)
            warnings.warn(f"shared-prefix scoring unavailable for sampling ({e}); generating from duplicated prompts", stacklevel=3)
        return False
    return True


def _prefill_positions(model, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """``position_ids`` for a manual prefill of a left-padded batch: what ``generate`` uses.

    ``generate`` numbers each row's tokens from its first real token (``cumsum(mask) - 1``);
    a plain forward without ``position_ids`` numbers them from the first column, so a padded
    row's prompt would sit ``pad`` positions after the tokens ``generate`` then appends (first
    logits off by ~2.5 on the sandbox policy). Multimodal-RoPE models (Qwen2-VL) compute their
    3-D positions from the mask in the forward itself: nothing to pass.
    """
    from ..models.prefix import _rope_index_fn

    if _rope_index_fn(model) is not None or "position_ids" not in inspect.signature(model.forward).parameters:
        return {}
    return {"position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0)}


@torch.no_grad()
def generate_candidates(
    model, processor, images: Sequence[Image.Image], questions: Sequence[str], seeds: Sequence[Sequence[int]], cfg: SampleConfig
) -> list[list[str]]:
    """For each prompt i, one answer per seed in ``seeds[i]`` (all rows share cfg's decoding).

    One generation call per prompt, so that prompt's answers do not depend on the other
    prompts of the call (see the module docstring).
    """
    return [texts for texts, _ in _generate_each(model, processor, images, questions, seeds, cfg)]


def _generate_each(model, processor, images, questions, seeds, cfg: SampleConfig) -> list[tuple[list[str], list[bool]]]:
    """Per prompt, generated alone: its answers and, per answer, whether it was truncated (hit
    ``max_new_tokens`` before a stop token; recorded so that reports can flag it)."""
    if len({len(s) for s in seeds}) > 1:
        raise ValueError("every prompt of a batch must ask for the same number of candidates")
    return [_generate_rows(model, processor, [im], [q], [s], cfg)[0] for im, q, s in zip(images, questions, seeds)]


def _generate_batch(model, processor, images, questions, seeds, cfg: SampleConfig) -> list[list[str]]:
    """Answers of several prompts in one left-padded call (equal to alone only up to float rounding)."""
    return [texts for texts, _ in _generate_rows(model, processor, images, questions, seeds, cfg)]


@torch.no_grad()
def _generate_rows(
    model, processor, images: Sequence[Image.Image], questions: Sequence[str], seeds: Sequence[Sequence[int]], cfg: SampleConfig
) -> list[tuple[list[str], list[bool]]]:
    """(answers, truncated flags) of several prompts in one left-padded call."""
    counts = [len(s) for s in seeds]
    if len(set(counts)) != 1:
        raise ValueError("every prompt of a batch must ask for the same number of candidates")
    n = counts[0]
    batch = collate(processor, images, questions, padding_side="left")
    batch = {k: v.to(model.device) for k, v in batch.items()}
    ids, mask = batch["input_ids"], batch["attention_mask"]
    flat_seeds = [s for row in seeds for s in row]
    temps = [candidate_temperature(cfg, k) for _ in seeds for k in range(n)]
    sampler = LogitsProcessorList([SeededSampler(flat_seeds, temps, cfg.top_p)])
    tok = processor.tokenizer
    kw = dict(do_sample=False, max_new_tokens=cfg.max_new_tokens, logits_processor=sampler, pad_token_id=tok.pad_token_id, eos_token_id=generation_stop_ids(processor, model))
    if cfg.share_prefill and _can_share_prefill(model, batch):
        # Per-token inputs (Qwen's mm_token_type_ids) are cut like input_ids; image tensors are whole.
        pre = {k: (v[:, :-1] if k in _TEXT_KEYS else v) for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
        out = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True, **pre, **_prefill_positions(model, mask[:, :-1]))
        cache = out.cache
        cache.batch_repeat_interleave(n)
        _repeat_model_state(model, n)
        gen = model.generate(input_ids=ids.repeat_interleave(n, 0), attention_mask=mask.repeat_interleave(n, 0), cache=cache, **kw)
    else:
        # Re-collate n copies of each prompt: repeating tensors row-wise would scramble inputs whose
        # first dimension is not the batch (Qwen2-VL's pixel_values are flat patch rows).
        rep = collate(processor, [im for im in images for _ in range(n)], [q for q in questions for _ in range(n)], padding_side="left")
        gen = model.generate(**{k: v.to(model.device) for k, v in rep.items()}, **kw)
    new = gen[:, ids.shape[1] :]
    texts = tok.batch_decode(new, skip_special_tokens=True)
    stopped = torch.isin(new, torch.tensor(kw["eos_token_id"], dtype=new.dtype, device=new.device)).any(-1).tolist()
    cut = [not s and new.shape[1] >= cfg.max_new_tokens for s in stopped]
    return [([t.strip() for t in texts[i * n : (i + 1) * n]], cut[i * n : (i + 1) * n]) for i in range(len(images))]


def sample(model, processor, prompts: Sequence[Prompt], images: Sequence[Image.Image], cfg: SampleConfig, model_name: str = "") -> list[Candidate]:
    """n candidates for each prompt (a pure function of model, prompts, images and cfg).

    A prompt longer than the limit (:func:`check_sample_prompts`) is refused before any forward.
    """
    check_sample_prompts(model, processor, prompts, images, cfg)
    seeds = [[candidate_seed(cfg.seed, p.prompt_id, k) for k in range(cfg.n)] for p in prompts]
    out = _generate_each(model, processor, images, [p.question for p in prompts], seeds, cfg)
    def decoding(k: int, truncated: bool) -> dict:  # truncated: the answer hit max_new_tokens (an outcome, not a setting)
        return {"temperature": candidate_temperature(cfg, k), "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens, "do_sample": True,
                "truncated": truncated}

    return [
        Candidate(prompt_id=p.prompt_id, sample_index=k, seed=seeds[i][k], text=out[i][0][k], decoding=decoding(k, out[i][1][k]), model=model_name)
        for i, p in enumerate(prompts)
        for k in range(cfg.n)
    ]



def check_sample_prompts(model, processor, prompts: Sequence[Prompt], images: Sequence[Image.Image], cfg: SampleConfig) -> None:
    """PromptTooLongError naming the first prompt whose tokens exceed ``cfg.max_prompt_tokens``
    (default: the model's context minus ``max_new_tokens``); called before any batching or forward."""
    from ..models.context import check_prompt_lengths, prompt_token_limit

    limit, why = prompt_token_limit(model, cfg.max_prompt_tokens, cfg.max_new_tokens, "sample")
    check_prompt_lengths(processor, [f"prompt {p.prompt_id!r}" for p in prompts], images, [p.question for p in prompts], limit, why)


def sample_via(backend, prompts: Sequence[Prompt], images: Sequence[Image.Image], cfg: SampleConfig, model_name: str = "") -> list[Candidate]:
    """``sample`` through a serving backend (``cfg.backend`` vllm / openai; ``rlaifv/backends/``):
    the same seeds (:func:`candidate_seed`), the same decoding per candidate, one record per
    candidate; ``decoding["backend"]`` names who sampled. The prompt-length guard is the server's
    (a prompt it refuses is a bad input of that prompt)."""
    from ..backends.base import Decoding

    seeds = [[candidate_seed(cfg.seed, p.prompt_id, k) for k in range(cfg.n)] for p in prompts]
    decodings = [Decoding(candidate_temperature(cfg, k), cfg.top_p, cfg.max_new_tokens) for k in range(cfg.n)]
    out = backend.sample(list(images), [p.question for p in prompts], seeds, decodings)
    return [
        Candidate(prompt_id=p.prompt_id, sample_index=k, seed=seeds[i][k], text=g.text, model=model_name,
                  decoding={"temperature": decodings[k].temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens,
                            "do_sample": True, "truncated": g.truncated, "backend": backend.name})
        for i, p in enumerate(prompts)
        for k, g in enumerate(out[i])
    ]

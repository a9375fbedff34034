"""The serving-backend layer: one protocol for the three GPU-heavy jobs of RLAIF-V.

Why: sampling n candidates per prompt (Sec. 3.1), the labeler's yes/no read-out per claim (Sec.
3.2) and best-of-N answer log-probs (Sec. 3.3) are where a run spends its compute. A user who
already runs an inference engine hands these jobs to it, per stage (``backend: hf | vllm |
openai``):

* ``hf`` (default): today's in-process Hugging Face code paths (``backends/hf.py``), unchanged;
* ``vllm``: vLLM's offline engine (``backends/vllm_engine.py``, optional extra);
* ``openai``: any OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp, ``transformers serve``;
  ``backends/openai_server.py``).

Every backend implements :class:`Backend` and says what it can do (:class:`Capabilities`). A
capability a server lacks is detected and reported (:class:`CapabilityError`, one line), never
approximated: e.g. a server that returns no log-probs cannot label claims.

This module imports no torch and no engine: the configs import it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

from ..config import ConfigError

BACKENDS = ("hf", "vllm", "openai")
#: file names in a stage folder
REQUESTS_NAME = "backend_requests.jsonl"
BACKEND_SUMMARY_KEY = "backend"


class BackendError(ConfigError):
    """The backend cannot do the job (unreachable server, retries exhausted, a setting): stops the stage, one line."""


class CapabilityError(BackendError):
    """The server lacks a capability the job needs (log-probs, prompt log-probs, ...); never approximated."""


class InputRejected(ValueError):
    """The server refused one input (HTTP 400/413/422): that input's fault (a reject under --on-error skip)."""


@dataclass
class EndpointOptions:
    """An OpenAI-compatible server for ``backend: openai`` (YAML section ``endpoint:`` of a stage)."""

    base_url: str = field(default="", metadata={"help": "server URL, e.g. http://127.0.0.1:8000/v1 (required for backend openai)"})
    model: str = field(default="", metadata={"help": "model name sent to the server ('' = the stage's model)"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "environment variable holding the API key (optional)"})
    timeout: float = field(default=300.0, metadata={"help": "seconds per request"})
    max_retries: int = field(default=5, metadata={"help": "retries on HTTP 429 / 5xx, timeouts and connection errors"})
    backoff: float = field(default=1.0, metadata={"help": "first retry wait in seconds, doubled per retry (max 60 s; Retry-After wins)"})
    max_concurrency: int = field(default=8, metadata={"help": "requests in flight at once"})
    requests_per_minute: float = field(default=0.0, metadata={"help": "rate limit (0 = none)"})
    top_logprobs: int = field(default=20, metadata={"help": "conquer: top-k log-probs asked for at the first answer token"})
    use_n: bool = field(default=False, metadata={"help": "sample: one request with n choices per prompt if the server honours n "
                                                         "(probed once; else one request per candidate seed)"})
    tokenizer: str = field(default="", metadata={"help": "local processor folder for best-of-N answer tokens ('' = the stage's model if a folder)"})

    def check(self, section: str) -> None:
        """ConfigError naming ``section.endpoint.<key>`` for a value no request could use."""
        if not self.base_url:
            raise ConfigError(f"{section}: backend openai needs endpoint.base_url (--base-url), e.g. http://127.0.0.1:8000/v1")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{section}.endpoint.base_url must start with http:// or https://, got {self.base_url!r}")
        for name, low in (("timeout", 1e-9), ("max_concurrency", 1), ("top_logprobs", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"{section}.endpoint.{name} must be > 0, got {getattr(self, name)}")
        for name in ("max_retries", "backoff", "requests_per_minute"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{section}.endpoint.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class VLLMOptions:
    """vLLM's offline engine for ``backend: vllm`` (YAML section ``vllm:`` of a stage)."""

    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs per engine (the labeler: its tensor parallelism)"})
    gpu_memory_utilization: float = field(default=0.9, metadata={"help": "fraction of GPU memory vLLM may take"})
    enable_prefix_caching: bool = field(default=True, metadata={"help": "automatic prefix caching (image + prompt shared across candidates/questions)"})
    max_model_len: int = field(default=0, metadata={"help": "context length (0 = the model's)"})
    top_logprobs: int = field(default=20, metadata={"help": "conquer: top-k log-probs at the first answer token"})
    dtype: str = field(default="auto", metadata={"help": "auto | bfloat16 | float16 | float32"})

    def check(self, section: str) -> None:
        if self.tensor_parallel_size < 1 or self.top_logprobs < 1 or self.max_model_len < 0:
            raise ConfigError(f"{section}.vllm: tensor_parallel_size and top_logprobs must be >= 1, max_model_len >= 0")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"{section}.vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")


def check_backend(section: str, backend: str, endpoint: EndpointOptions, vllm: VLLMOptions) -> None:
    """The stage config's backend settings (called from its ``__post_init__``): one-line ConfigError."""
    if backend not in BACKENDS:
        raise ConfigError(f"{section}.backend: unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "openai":
        endpoint.check(section)
    if backend == "vllm":
        vllm.check(section)


# ----------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Decoding:
    """One candidate's decoding: temperature 0 means greedy."""

    temperature: float
    top_p: float
    max_new_tokens: int


@dataclass(frozen=True)
class Generation:
    """One generated answer (stripped like the hf path) and whether it hit ``max_new_tokens``."""

    text: str
    truncated: bool


@dataclass(frozen=True)
class YesNo:
    """p_yes / p_no of the first answer token (full-vocabulary probabilities, not renormalised).

    ``outside_top_k`` names the words ("yes", "no") none of whose tokens was among the returned
    top-k: their p is then the sum over the tokens present (0 when none), a lower bound.
    """

    p_yes: float
    p_no: float
    outside_top_k: tuple[str, ...] = ()


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do. ``None`` = not probed yet (servers are probed on first use)."""

    backend: str
    sample_n: bool | None  # n choices from one request
    seed: bool  # a seed per request / candidate
    yes_no: str | None  # "full_vocab" (hf) | "top_logprobs" (vllm, openai) | None (not available)
    answer_logprobs: bool | None  # per-token log-probs of given answers (best-of-N)
    notes: tuple[str, ...] = ()


class Backend(Protocol):
    """The three jobs (ARCHITECTURE.md, "Serving backends"). Implementations: hf.py, openai_server.py, vllm_engine.py."""

    name: str

    def capabilities(self) -> Capabilities: ...

    def sample(self, images: Sequence[Any], questions: Sequence[str], seeds: Sequence[Sequence[int]],
               decodings: Sequence[Decoding]) -> list[list[Generation]]:
        """Per prompt i, one answer per seed ``seeds[i][k]`` decoded with ``decodings[k]``."""
        ...

    def yes_no(self, image: Any, questions: Sequence[str]) -> list[YesNo]:
        """p_yes / p_no at the first answer token of the model's own template, per question about ``image``."""
        ...

    def answer_logprobs(self, image: Any, question: str, answers: Sequence[str]) -> list[list[float]]:
        """Per answer, the log-probs of its tokens and the end-of-turn token (``models/chat.answer_ids``)."""
        ...

    def counts(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------- token strings -> yes / no

_LEADS = (" ", "\u2581", "\u0120")  # a space, SentencePiece's "▁", byte-level BPE's "Ġ"
YES_WORDS, NO_WORDS = ("yes", "Yes"), ("no", "No")


def token_word(token: str) -> str | None:
    """"yes" / "no" when ``token`` (a token string as a server returns it) is one of yes/Yes/no/No,
    bare or after ONE leading space, "▁" or "Ġ" (the spellings the hf path reads:
    ``models/template.py``, the template's own spacing and both others); else None."""
    word = token[1:] if token[:1] in _LEADS else token
    if word in YES_WORDS:
        return "yes"
    if word in NO_WORDS:
        return "no"
    return None


def yes_no_from_top_logprobs(entries: Iterable[tuple[str, float]], yes_tokens: Sequence[str] | None = None,
                             no_tokens: Sequence[str] | None = None) -> YesNo:
    """p_yes / p_no from the (token, logprob) pairs of the first generated position.

    Each distinct token string counts once. With the ``conquer.yes_tokens`` / ``no_tokens``
    override (token strings), exactly those strings count; otherwise :func:`token_word` decides.
    """
    seen: dict[str, float] = {}
    for tok, lp in entries:
        if tok not in seen and lp is not None and math.isfinite(float(lp)):
            seen[tok] = float(lp)
    p = {"yes": 0.0, "no": 0.0}
    found = {"yes": False, "no": False}
    for tok, lp in seen.items():
        if yes_tokens is not None and no_tokens is not None:
            word = "yes" if tok in yes_tokens else "no" if tok in no_tokens else None
        else:
            word = token_word(tok)
        if word:
            p[word] += math.exp(lp)
            found[word] = True
    return YesNo(p["yes"], p["no"], tuple(w for w in ("yes", "no") if not found[w]))


# ----------------------------------------------------------------------------- images and request keys


def image_data_url(image: Any) -> str:
    """``data:image/png;base64,...`` of the decoded RGB pixels (PNG is lossless, so the server sees
    exactly the pixels the hf path gives its processor)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def request_key(path: str, body: dict[str, Any]) -> str:
    """The resume key of a request: sha256 of its endpoint path and canonical JSON body."""
    return hashlib.sha256((path + "\n" + json.dumps(body, sort_keys=True, ensure_ascii=False)).encode()).hexdigest()


# ----------------------------------------------------------------------------- factory and summary


def build_backend(kind: str, stage: str, cfg: Any, out: str | Path, model: Any = None, processor: Any = None) -> Backend:
    """The stage's backend (built once per stage by the caller). ``cfg`` is the stage config
    (SampleConfig / ConquerConfig / BestOfNConfig's sample or conquer section)."""
    if kind == "hf":
        from .hf import HFBackend

        if model is None or processor is None:
            from ..models.load import load_vlm

            model, processor = load_vlm(cfg.model, options=cfg)
        return HFBackend(model, processor, cfg)
    if kind == "openai":
        from .openai_server import OpenAIBackend

        return OpenAIBackend(cfg.endpoint, stage=stage, out=Path(out), cfg=cfg, processor=processor)
    if kind == "vllm":
        try:
            from .vllm_engine import VLLMBackend  # type: ignore[import-not-found]
        except ImportError as e:
            raise BackendError(f"{stage}: backend vllm needs vLLM (pip install 'rlaifv[vllm]' on a CUDA machine): {e}") from e
        return VLLMBackend(cfg.model, cfg.vllm, stage=stage, out=Path(out), cfg=cfg)
    raise ConfigError(f"{stage}.backend: unknown backend {kind!r}; expected one of {', '.join(BACKENDS)}")


def rank_suffix() -> str:
    """``.rank-R`` when several processes run a stage (each keeps its own request log), else ''."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return f".rank-{int(os.environ.get('RANK', '0') or 0)}" if world > 1 else ""


#: endpoint fields that change how requests travel, never what they return: a rerun may change them
OPERATIONAL_FIELDS = ("base_url", "api_key_env", "timeout", "max_retries", "backoff", "max_concurrency", "requests_per_minute",
                      "tokenizer")


def manifest_view(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """A stage config (``asdict``) as its manifest pins it: ``backend: hf`` keeps the keys it always had
    (so runs made before backends existed resume); other backends keep their own section minus the
    operational endpoint fields (a rerun may point at a moved server or change the concurrency)."""
    d = dict(cfg_dict)
    kind = d.get("backend", "hf")
    for section in ("endpoint", "vllm"):
        if section in d and not (kind == "openai" and section == "endpoint" or kind == "vllm" and section == "vllm"):
            d.pop(section)
    if kind == "hf":
        d.pop("backend", None)
    elif isinstance(d.get("endpoint"), dict):
        d["endpoint"] = {k: v for k, v in d["endpoint"].items() if k not in OPERATIONAL_FIELDS}
    return d

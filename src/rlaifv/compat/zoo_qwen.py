"""Tiny Qwen2-VL, Qwen2.5-VL and Qwen3-VL with their published chat templates.

Tokenizer: Qwen's kind, a byte-level BPE with no bos, eos ``<|im_end|>`` (what the Instruct
models end a turn with), pad ``<|endoftext|>``, and Qwen's special tokens (ChatML markers,
``<|vision_start|>``, ``<|image_pad|>``, ``<|vision_end|>``, ``<|video_pad|>``, the grounding
markers, and for Qwen3-VL the ``<think>`` / ``<tool_call>`` tags its template writes).

Processors: ``Qwen2VLProcessor`` / ``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor`` need a video
processor, i.e. torchvision, which cannot be installed here, so each entry uses the image-only
subclass (``rlaifv.models.processors``); ``save_pretrained`` writes the real class name, plain
``AutoProcessor`` loads it where torchvision exists, and ``rlaifv.models.load.load_processor``
loads it here (falling back to the image-only subclass, with a warning).
"""

from __future__ import annotations

import copy
from functools import lru_cache

from .tokenizers import bytelevel_bpe
from .zoo import ZooEntry, load_template

QWEN_VISION = ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>"] + QWEN_VISION
#: Qwen3 adds its tool-call and thinking tags (its template writes them) as added tokens.
QWEN3_EXTRA = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"]
FIRST_ANSWER = '"Yes" (no leading space: ChatML "<|im_start|>assistant\\n" then "Yes")'

# Sizes shared by the three: text 32-d, 1 layer, 2 heads (head_dim 16 -> mrope [4, 2, 2]); vision 32-d, 1 block.
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
            max_position_embeddings=1024, rope_parameters={"rope_type": "default", "mrope_section": [4, 2, 2], "rope_theta": 10000.0})


@lru_cache(maxsize=None)
def _tokenizer(qwen3: bool):
    specials = QWEN_SPECIALS + (QWEN3_EXTRA if qwen3 else [])
    return bytelevel_bpe(specials, bos=None, eos="<|im_end|>", pad="<|endoftext|>", vocab_size=1024)


def qwen_tokenizer(qwen3: bool = False):
    """A fresh copy of the Qwen-style tokenizer (trained once per process)."""
    return copy.deepcopy(_tokenizer(qwen3))


def _ids(tok) -> dict:
    conv = tok.convert_tokens_to_ids
    return dict(image_token_id=conv("<|image_pad|>"), video_token_id=conv("<|video_pad|>"),
                vision_start_token_id=conv("<|vision_start|>"), vision_end_token_id=conv("<|vision_end|>"))


def _image_processor(image_size: int, patch: int, mean_std: float | None = None):
    """Qwen2VLImageProcessorPil that turns any square image into image_size x image_size."""
    from transformers import Qwen2VLImageProcessorPil

    factor = patch * 2
    lo, hi = image_size - factor // 2, image_size + factor // 2  # see models.tiny._build_qwen
    kw = {} if mean_std is None else dict(image_mean=[mean_std] * 3, image_std=[mean_std] * 3)
    return Qwen2VLImageProcessorPil(size={"shortest_edge": lo * lo, "longest_edge": hi * hi},
                                    patch_size=patch, merge_size=2, temporal_patch_size=2, **kw)


def _finish(model, tok):
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval()


def build_qwen2_vl(seed: int = 0):
    """Qwen2-VL: 56 px, patch 14, merge 2 -> 4 image tokens."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from ..models.processors import ImageOnlyQwen2VLProcessor

    tok = qwen_tokenizer()
    text = dict(TEXT, vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    vision = dict(depth=1, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                  embed_dim=32, hidden_size=32, mlp_ratio=2)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_ids(tok)))
    processor = ImageOnlyQwen2VLProcessor(image_processor=_image_processor(56, 14), tokenizer=tok, chat_template=load_template("qwen2_vl"))
    return _finish(model, tok), processor


def build_qwen2_5_vl(seed: int = 0):
    """Qwen2.5-VL: 56 px, patch 14, merge 2 -> 4 image tokens; one full-attention vision block."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from ..models.processors import ImageOnlyQwen2_5_VLProcessor

    tok = qwen_tokenizer()
    text = dict(TEXT, vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    vision = dict(depth=1, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, hidden_size=32,
                  intermediate_size=64, out_hidden_size=32, fullatt_block_indexes=[0], window_size=56)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_ids(tok)))
    processor = ImageOnlyQwen2_5_VLProcessor(image_processor=_image_processor(56, 14), tokenizer=tok, chat_template=load_template("qwen2_5_vl"))
    return _finish(model, tok), processor


def build_qwen3_vl(seed: int = 0):
    """Qwen3-VL (dense): 64 px, patch 16, merge 2 -> 4 image tokens; interleaved mrope, one deepstack layer."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from ..models.processors import image_only_class

    tok = qwen_tokenizer(qwen3=True)
    text = dict(TEXT, vocab_size=len(tok), head_dim=16, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                rope_parameters={"rope_type": "default", "mrope_section": [4, 2, 2], "mrope_interleaved": True, "rope_theta": 10000.0})
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16, spatial_merge_size=2,
                  temporal_patch_size=2, out_hidden_size=32, num_position_embeddings=16, deepstack_visual_indexes=[0])
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **_ids(tok)))
    processor_cls = image_only_class("Qwen3VLProcessor")
    processor = processor_cls(image_processor=_image_processor(64, 16, mean_std=0.5), tokenizer=tok, chat_template=load_template("qwen3_vl"))
    return _finish(model, tok), processor


_NOTE = ("processor: the image-only subclass of {real} (its video processor needs torchvision); the saved folder names "
         "{real}, so plain AutoProcessor loads it where torchvision exists; here rlaifv.models.load.load_processor "
         "falls back to the image-only subclass with a warning")

ENTRIES: list[ZooEntry] = [
    ZooEntry("qwen2-vl", "qwen2_vl", "qwen2_vl", "bytelevel", build_qwen2_vl, FIRST_ANSWER,
             (_NOTE.format(real="Qwen2VLProcessor"),)),
    ZooEntry("qwen2.5-vl", "qwen2_5_vl", "qwen2_5_vl", "bytelevel", build_qwen2_5_vl, FIRST_ANSWER,
             (_NOTE.format(real="Qwen2_5_VLProcessor"),)),
    ZooEntry("qwen3-vl", "qwen3_vl", "qwen3_vl", "bytelevel", build_qwen3_vl, FIRST_ANSWER,
             (_NOTE.format(real="Qwen3VLProcessor"),
              "Qwen3-VL's template writes no default system turn (Qwen2-VL's does)")),
]

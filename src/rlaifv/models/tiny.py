"""Tiny VLMs built from config, with a locally trained tokenizer (no model hub needed).

Four architectures: Idefics3 (SmolVLM's architecture; the default), LLaVA, Qwen2-VL and
Qwen2.5-VL. All save with ``save_pretrained`` and reload with ``models.load.load_vlm``
(``AutoModelForImageTextToText`` + ``AutoProcessor``), exactly like a real checkpoint, so the
whole pipeline runs unchanged on them. The Qwen processors are the image-only subclasses of
``models.processors`` (their parents need torchvision for a video processor); ``load_vlm``
finds them through the ``processor_class`` that ``save_pretrained`` writes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast



def chat_template(image_placeholder: str = "<image>") -> str:
    """ChatML with typed content parts; an image part renders as ``image_placeholder``."""
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}" + image_placeholder + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


#: The template of Idefics3 and LLaVA: an image part renders as the processor's ``<image>`` placeholder.
CHAT_TEMPLATE = chat_template("<image>")
#: Qwen2-VL / Qwen2.5-VL: the processor expands ``<|image_pad|>`` to the image's merged patch count.
QWEN_CHAT_TEMPLATE = chat_template("<|vision_start|><|image_pad|><|vision_end|>")
QWEN_ARCHS = ("qwen2_vl", "qwen2_5_vl")
ARCHS = ("idefics3", "llava") + QWEN_ARCHS
BASE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
_QWEN_SPECIALS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
ARCH_SPECIALS = {
    "llava": ["<image>"],
    "idefics3": ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
    + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)],
    "qwen2_vl": _QWEN_SPECIALS,
    "qwen2_5_vl": _QWEN_SPECIALS,
}
QWEN_MERGE = 2  # Qwen2-VL spatial merge: 2x2 patches -> one image token


def template_for(arch: str) -> str:
    """The chat template of ``arch``'s tiny processor."""
    return QWEN_CHAT_TEMPLATE if arch in QWEN_ARCHS else CHAT_TEMPLATE


@dataclass
class TinyVLMConfig:
    """Sizes of a tiny VLM. The defaults make the sandbox model (about 1-3 M parameters)."""

    arch: str = "idefics3"  # idefics3 | llava | qwen2_vl | qwen2_5_vl
    image_size: int = 96
    patch_size: int = 16
    vision_hidden: int = 96
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 4
    intermediate: int = 384
    scale_factor: int = 2  # Idefics3 pixel shuffle: (96/16)^2 / 2^2 = 9 image tokens, one per grid cell
    # (Qwen: patch_size 14 is the real one; image_size must be a multiple of 2 * patch_size.)
    vocab_size: int = 1024
    max_position: int = 512

    @property
    def image_seq_len(self) -> int:
        n = (self.image_size // self.patch_size) ** 2
        if self.arch == "idefics3":
            return n // (self.scale_factor**2)
        if self.arch in QWEN_ARCHS:
            return n // (QWEN_MERGE**2)  # at image_size x image_size (the processor resizes to it)
        return n


def train_bytelevel(corpus: list[str], special_tokens: list[str], vocab_size: int) -> Tokenizer:
    """A GPT-2-style byte-level BPE ("Ġ" = leading space) trained on ``corpus``; the special
    tokens take the first ids, in order."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def train_tokenizer(corpus: list[str], arch: str = "idefics3", vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``corpus`` with ChatML and the architecture's image tokens.

    Byte-level means any text encodes (no unknown tokens); the sandbox words become single
    tokens, so "Yes"/"No" are one token each, as the conquer stage expects.
    """
    tok = train_bytelevel(corpus, BASE_SPECIALS + ARCH_SPECIALS[arch], vocab_size)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
        additional_special_tokens=ARCH_SPECIALS[arch],
    )
    fast.chat_template = template_for(arch)
    return fast


def build_tiny_vlm(cfg: TinyVLMConfig, tokenizer: PreTrainedTokenizerFast, seed: int = 0):
    """Build a randomly initialised (model, processor) pair for ``cfg`` (seeded)."""
    import torch

    torch.manual_seed(seed)
    if cfg.arch == "idefics3":
        return _build_idefics3(cfg, tokenizer)
    if cfg.arch == "llava":
        return _build_llava(cfg, tokenizer)
    if cfg.arch in QWEN_ARCHS:
        return _build_qwen(cfg, tokenizer)
    raise ValueError(f"unknown tiny VLM architecture {cfg.arch!r}; expected one of {ARCHS}")


def _text_config(cfg: TinyVLMConfig, tokenizer: PreTrainedTokenizerFast) -> dict:
    return dict(
        model_type="llama",
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads,
        max_position_embeddings=cfg.max_position,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )


def _build_idefics3(cfg: TinyVLMConfig, tokenizer: PreTrainedTokenizerFast):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil, Idefics3Processor

    config = Idefics3Config(
        vision_config=dict(
            hidden_size=cfg.vision_hidden,
            intermediate_size=cfg.vision_hidden * 3,
            num_hidden_layers=cfg.vision_layers,
            num_attention_heads=cfg.vision_heads,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
        ),
        text_config=_text_config(cfg, tokenizer),
        scale_factor=cfg.scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": cfg.image_size},
        max_image_size={"longest_edge": cfg.image_size},
        do_resize=True,
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=cfg.image_seq_len, chat_template=CHAT_TEMPLATE
    )
    return model, processor


def _build_llava(cfg: TinyVLMConfig, tokenizer: PreTrainedTokenizerFast):
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    text = _text_config(cfg, tokenizer)
    text.pop("model_type")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=cfg.vision_hidden,
            intermediate_size=cfg.vision_hidden * 3,
            num_hidden_layers=cfg.vision_layers,
            num_attention_heads=cfg.vision_heads,
            image_size=cfg.image_size,
            patch_size=cfg.patch_size,
        ),
        text_config=LlamaConfig(**text),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    size = {"shortest_edge": cfg.image_size}
    crop = {"height": cfg.image_size, "width": cfg.image_size}
    image_processor = CLIPImageProcessorPil(size=size, crop_size=crop)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    return model, processor


def mrope_section(head_dim: int) -> list[int]:
    """Qwen's multimodal-RoPE split (temporal, height, width) of ``head_dim / 2`` frequencies, e.g. 16 -> [4, 2, 2]."""
    half = head_dim // 2
    if half < 3:
        raise ValueError(f"head_dim {head_dim} is too small for 3-D rotary positions")
    return [half - 2 * (half // 4), half // 4, half // 4]


def _build_qwen(cfg: TinyVLMConfig, tokenizer: PreTrainedTokenizerFast):
    """Qwen2-VL or Qwen2.5-VL (3-D rotary positions) with the image-only processor subclass."""
    from transformers import Qwen2VLImageProcessorPil

    from .processors import ImageOnlyQwen2_5_VLProcessor, ImageOnlyQwen2VLProcessor

    factor = cfg.patch_size * QWEN_MERGE
    if cfg.image_size % factor:
        raise ValueError(f"{cfg.arch}: image_size {cfg.image_size} must be a multiple of 2 x patch_size = {factor}")
    head_dim = cfg.text_hidden // cfg.text_heads
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _QWEN_SPECIALS}
    text = _text_config(cfg, tokenizer)
    for key in ("model_type", "tie_word_embeddings"):
        text.pop(key)
    text["rope_parameters"] = {"rope_type": "default", "mrope_section": mrope_section(head_dim), "rope_theta": 10000.0}
    vision = dict(
        depth=cfg.vision_layers,
        num_heads=cfg.vision_heads,
        patch_size=cfg.patch_size,
        spatial_merge_size=QWEN_MERGE,
        temporal_patch_size=2,
    )
    special = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    if cfg.arch == "qwen2_vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        # embed_dim is the ViT width; hidden_size is the merger's output = the text width.
        vision.update(embed_dim=cfg.vision_hidden, hidden_size=cfg.text_hidden, mlp_ratio=3)
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision, **special))
        processor_cls = ImageOnlyQwen2VLProcessor
    else:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        # hidden_size is the ViT width here; out_hidden_size is the text width. The last block
        # attends fully, the others within windows of window_size pixels.
        vision.update(
            hidden_size=cfg.vision_hidden,
            intermediate_size=cfg.vision_hidden * 3,
            out_hidden_size=cfg.text_hidden,
            fullatt_block_indexes=[cfg.vision_layers - 1],
            window_size=factor * 2,
        )
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=text, vision_config=vision, **special))
        processor_cls = ImageOnlyQwen2_5_VLProcessor
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # Pixel bounds half a merged patch either side of image_size^2: any square image becomes exactly
    # image_size x image_size (bounds of exactly image_size^2 would let float rounding in
    # smart_resize drop a whole row of patches); other aspect ratios keep about that area.
    lo, hi = cfg.image_size - factor // 2, cfg.image_size + factor // 2
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": lo * lo, "longest_edge": hi * hi},
        patch_size=cfg.patch_size,
        merge_size=QWEN_MERGE,
        temporal_patch_size=2,
    )
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE)
    return model, processor


def save_tiny(model, processor, out: Path, cfg: TinyVLMConfig | None = None) -> Path:
    """Save model + processor as a standard checkpoint folder (plus our build config)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if cfg is not None:
        (out / "rlaifv_tiny.json").write_text(json.dumps(asdict(cfg), indent=2))
    return out

"""Tiny VLMs built from config, with a locally trained tokenizer (no model hub needed).

Two architectures: Idefics3 (SmolVLM's architecture; the default) and LLaVA. Both save with
``save_pretrained`` and reload with ``AutoModelForImageTextToText.from_pretrained`` /
``AutoProcessor.from_pretrained``, exactly like a real checkpoint, so the whole pipeline runs
unchanged on them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

#: ChatML with typed content parts; an image part renders as the processor's ``<image>`` placeholder.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
BASE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
ARCH_SPECIALS = {
    "llava": ["<image>"],
    "idefics3": ["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]
    + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)],
}


@dataclass
class TinyVLMConfig:
    """Sizes of a tiny VLM. The defaults make the sandbox model (about 1-3 M parameters)."""

    arch: str = "idefics3"
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
    vocab_size: int = 1024
    max_position: int = 512

    @property
    def image_seq_len(self) -> int:
        n = (self.image_size // self.patch_size) ** 2
        return n // (self.scale_factor**2) if self.arch == "idefics3" else n


def train_tokenizer(corpus: list[str], arch: str = "idefics3", vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``corpus`` with ChatML and the architecture's image tokens.

    Byte-level means any text encodes (no unknown tokens); the sandbox words become single
    tokens, so "Yes"/"No" are one token each, as the conquer stage expects.
    """
    specials = BASE_SPECIALS + ARCH_SPECIALS[arch]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token="<|endoftext|>",
        additional_special_tokens=ARCH_SPECIALS[arch],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_vlm(cfg: TinyVLMConfig, tokenizer: PreTrainedTokenizerFast, seed: int = 0):
    """Build a randomly initialised (model, processor) pair for ``cfg`` (seeded)."""
    import torch

    torch.manual_seed(seed)
    if cfg.arch == "idefics3":
        return _build_idefics3(cfg, tokenizer)
    if cfg.arch == "llava":
        return _build_llava(cfg, tokenizer)
    raise ValueError(f"unknown tiny VLM architecture {cfg.arch!r}; expected 'idefics3' or 'llava'")


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


def save_tiny(model, processor, out: Path, cfg: TinyVLMConfig | None = None) -> Path:
    """Save model + processor as a standard checkpoint folder (plus our build config)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if cfg is not None:
        (out / "rlaifv_tiny.json").write_text(json.dumps(asdict(cfg), indent=2))
    return out

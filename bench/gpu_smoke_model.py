"""The GPU smoke test's model, prompts and probe (see ``bench/gpu_smoke.py``).

Model: a LLaVA-1.5-shaped VLM built from config with a locally trained SentencePiece tokenizer
(``rlaifv.compat.tokenizers.sentencepiece_bpe``, Llama-2 layout) and LLaVA-1.5's own chat
template (``rlaifv/compat/templates``): a CLIP ViT-L/14 tower at 336 px (24 layers, 1024 wide,
576 image tokens) and a 12-layer, 1024-wide Llama decoder, 0.51 B parameters
(:func:`parameter_count` on the meta device; checked by ``tests/test_gpu_smoke_plan.py``). Its
weights are random; the output layer is scaled (``compat.matrix.sharpen``) so greedy decoding
has clear margins and p_yes / p_no vary with the input. Nothing is downloaded.

Probe (``python bench/gpu_smoke_model.py probe --backend hf|vllm ...``, one process per
backend so each has the GPU to itself): greedy answers, p_yes / p_no of fixed questions and
answer log-probs of fixed answers through the backend interface (``rlaifv.backends``), written
to one JSON file that ``gpu_smoke.py`` compares across backends.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14)
TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=16,
            max_position_embeddings=4096)
#: ``--tiny`` (a CPU rehearsal of the driver, not the smoke test): same architecture and image tokens, tiny widths
TINY_VISION = dict(VISION, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
TINY_TEXT = dict(TEXT, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
SHARPEN = 5.0  # output-layer scale: random logits of std ~3 (clear greedy margins in float32)
#: (prompt id, crop as fractions (left, top, right, bottom), question) over matplotlib's bundled grace_hopper.jpg
PROMPTS = (
    ("hopper", (0.0, 0.0, 1.0, 1.0), "Describe the image in detail."),
    ("hopper-top", (0.0, 0.0, 1.0, 0.5), "What is in the picture?"),
    ("hopper-bottom", (0.0, 0.5, 1.0, 1.0), "Describe the image in detail."),
    ("hopper-face", (0.2, 0.1, 0.8, 0.6), "What do you see?"),
    ("hopper-left", (0.0, 0.0, 0.5, 1.0), "Describe the image in detail."),
    ("hopper-right", (0.5, 0.0, 1.0, 1.0), "What is in the picture?"),
)
QUESTIONS = ("Is there a person in the image? Please answer yes or no.", "Is there a cat in the image? Please answer yes or no.",
             "Is the person wearing a uniform? Please answer yes or no.", "Is there a red car in the image? Please answer yes or no.")


def tokenizer():
    from rlaifv.compat.tokenizers import sentencepiece_bpe

    return sentencepiece_bpe(["<image>"], bos="<s>", eos="</s>", pad="<pad>", unk="<unk>")


def llava_config(tok, tiny: bool = False):
    """LlavaConfig at LLaVA-1.5 proportions (576 image tokens) with ``tok``'s vocabulary."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = TINY_VISION if tiny else VISION
    text = dict(TINY_TEXT if tiny else TEXT, vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    return LlavaConfig(vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**text),
                       image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
                       vision_feature_layer=-2, projector_hidden_act="gelu")


def parameter_count(config) -> int:
    """Parameters of the model ``config`` builds, counted on the meta device (no memory, no time)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    return sum(p.numel() for p in model.parameters())


def build_model(folder: Path, seed: int = 0, tiny: bool = False) -> Path:
    """Build, sharpen and save the smoke model (with its processor) to ``folder`` unless it is there."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import CLIPImageProcessorPil, LlavaForConditionalGeneration, LlavaProcessor

    from rlaifv.compat.matrix import sharpen
    from rlaifv.compat.zoo import load_template

    tok = tokenizer()
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(llava_config(tok, tiny))
    sharpen(model, SHARPEN)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    size = VISION["image_size"]
    processor = LlavaProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}),
                               tokenizer=tok, patch_size=VISION["patch_size"], vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=load_template("llava_1_5"))
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def write_prompts(folder: Path) -> Path:
    """``folder/prompts.jsonl`` over crops of matplotlib's bundled photo (relative image paths)."""
    from matplotlib import cbook
    from PIL import Image

    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    w, h = photo.size
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for pid, (l, t, r, b), question in PROMPTS:
        photo.crop((int(l * w), int(t * h), int(r * w), int(b * h))).save(folder / "images" / f"{pid}.jpg", quality=90)
        rows.append({"prompt_id": pid, "question": question, "image": f"images/{pid}.jpg"})
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- probe (one backend per process)


def _backend(kind: str, model: str, dtype: str, gpu_share: float, device: str = "cuda"):
    if kind == "hf":
        from rlaifv.backends.hf import HFBackend
        from rlaifv.models.load import load_vlm
        from rlaifv.models.options import LoadOptions

        m, p = load_vlm(model, options=LoadOptions(device=device, dtype=dtype))
        return HFBackend(m, p)
    from rlaifv.backends.base import VLLMOptions
    from rlaifv.backends.vllm_engine import VLLMBackend

    return VLLMBackend(model, VLLMOptions(dtype=dtype, gpu_memory_utilization=gpu_share), stage="gpu-smoke")


def probe(kind: str, model: str, prompts: Path, answers: Path | None, out: Path, dtype: str, max_new_tokens: int, gpu_share: float,
          device: str = "cuda") -> None:
    """Greedy answers, p_yes / p_no of :data:`QUESTIONS` and log-probs of ``answers`` (JSON
    ``{prompt_id: [answer, ...]}``) for every prompt, timed per job, into ``out``."""
    from PIL import Image

    from rlaifv.backends.base import Decoding

    rows = [json.loads(line) for line in prompts.read_text().splitlines() if line.strip()]
    images = [Image.open(prompts.parent / r["image"]).convert("RGB") for r in rows]
    t0 = time.time()
    backend = _backend(kind, model, dtype, gpu_share, device)
    res: dict = {"backend": kind, "load_s": round(time.time() - t0, 2)}
    t0 = time.time()
    gens = backend.sample(images, [r["question"] for r in rows], [[0] for _ in rows], [Decoding(0.0, 1.0, max_new_tokens)])
    res["greedy"] = {r["prompt_id"]: g[0].text for r, g in zip(rows, gens)}
    res["greedy_s"] = round(time.time() - t0, 2)
    t0 = time.time()
    res["yes_no"] = {}
    for r, im in zip(rows, images):
        res["yes_no"][r["prompt_id"]] = [[y.p_yes, y.p_no, list(y.outside_top_k)] for y in backend.yes_no(im, list(QUESTIONS))]
    res["yes_no_s"] = round(time.time() - t0, 2)
    given = json.loads(answers.read_text()) if answers else {}
    t0 = time.time()
    res["logprobs"] = {r["prompt_id"]: backend.answer_logprobs(im, r["question"], given[r["prompt_id"]])
                       for r, im in zip(rows, images) if given.get(r["prompt_id"])}
    res["logprobs_s"] = round(time.time() - t0, 2)
    res["counts"] = backend.counts()
    backend.close()
    out.write_text(json.dumps(res, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the smoke model into FOLDER")
    b.add_argument("folder", type=Path)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--tiny", action="store_true")
    p = sub.add_parser("probe", help="greedy / yes-no / log-probs through one backend")
    p.add_argument("--backend", choices=("hf", "vllm"), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", type=Path, required=True)
    p.add_argument("--answers", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--gpu-share", type=float, default=0.6)
    p.add_argument("--device", default="cuda", help="hf backend's device (cpu: rehearsal only)")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        print(build_model(args.folder, args.seed, args.tiny))
    else:
        probe(args.backend, args.model, args.prompts, args.answers, args.out, args.dtype, args.max_new_tokens, args.gpu_share, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())

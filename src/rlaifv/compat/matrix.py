"""The compatibility matrix: every zoo architecture through every stage's model code.

Per architecture (``zoo.all_entries()``: a tiny model with its family's real chat template and
a tokenizer of its real kind), each check compares rlaifv's fast path with an independent or
naive computation on the same tensors:

* ``load``: ``save_pretrained``, then plain ``AutoModelForImageTextToText`` + ``AutoProcessor``
  reload to identical inputs and logits (1e-5); where plain ``AutoProcessor`` cannot build the
  processor here (a video processor needs torchvision), ``load_processor``'s image-only class;
* ``template``: conquer's yes/no ids hold the token found by tokenising the rendered prompt
  followed by the answer as the template writes it, and labels end with the template's own
  end-of-turn token;
* ``sample``: the prompt prefilled once and its cache repeated == the prompt duplicated;
* ``conquer``: shared image prefix == one full forward per question (1e-4 relative), both
  with the question suffixes packed in one sequence (block mask) and batched (cache copies);
* ``dpo``: collated labels cover exactly the answer + end-of-turn, and they are the first
  tokens of TRL's own completion for the same example; our ``dpo_loss`` on TRL's batch ==
  ``DPOTrainer.compute_loss`` (1e-5);
* ``best_of_n``: answer log-probs on the shared prompt cache == full forwards (1e-4), packed
  and batched; ``packed: no (...)`` in a detail names why a model's suffixes are not packed.

A check that takes the naive path (``NotImplementedError`` from the shared-prefix code, e.g.
sliding-window or cross-attention caches) is a ``fallback`` with the warning's reason; an
exception is a ``fail`` with its message. ``python -m rlaifv.compat.matrix`` writes
``docs/models.md`` (``make matrix``).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, ImageDraw

from .zoo import ZooEntry, all_entries

STAGES = ("load", "template", "sample", "conquer", "dpo", "best_of_n")
QUESTIONS = ["Is there a red circle in the image? Please answer yes or no.", "Is there a cat?", "Is the square blue? Please answer yes or no."]
ANSWERS = ["Yes, there is a red circle.", "No.", "There is a red circle and a blue square on a white background."]


@dataclass
class Cell:
    """One (architecture, stage) result: ``pass``, ``fallback`` (naive path, with reason) or ``fail``."""

    status: str
    detail: str = ""


def probe_image(size: int = 96) -> Image.Image:
    """A fixed RGB test image (red circle, blue square on white), no files needed."""
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    d.ellipse((8, 8, 40, 40), fill=(220, 30, 30))
    d.rectangle((52, 50, 88, 86), fill=(30, 60, 220))
    return im


def sharpen(model, factor: float = 20.0):
    """Scale the output layer so a random model's probabilities depend visibly on the input."""
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(factor)
    return model


def _run(fn: Callable[[], str]) -> Cell:
    """Run one check; a shared-prefix fallback warning makes it ``fallback``, an exception ``fail``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            detail = fn()
        except Exception as e:  # a matrix cell reports any failure with its message  # noqa: BLE001
            return Cell("fail", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    fallback = [str(w.message) for w in caught if "shared-prefix scoring unavailable" in str(w.message)]
    if fallback:
        return Cell("fallback", fallback[0])
    return Cell("pass", detail)


# --------------------------------------------------------------------------- checks


def check_load(model, processor, workdir: Path) -> str:
    """save_pretrained -> plain Auto classes (or load_processor) -> identical inputs and logits."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from ..models.chat import encode_prompt
    from ..models.load import load_processor

    model.save_pretrained(workdir)
    processor.save_pretrained(workdir)
    model2 = AutoModelForImageTextToText.from_pretrained(workdir).eval()
    how = "AutoProcessor"
    try:
        processor2 = AutoProcessor.from_pretrained(workdir)
    except (ImportError, OSError, ValueError, TypeError) as e:
        processor2, how = load_processor(workdir), f"load_processor (AutoProcessor: {type(e).__name__})"
    a = encode_prompt(processor, probe_image(), QUESTIONS[0])
    b = encode_prompt(processor2, probe_image(), QUESTIONS[0])
    if a.keys() != b.keys() or any(not torch.equal(a[k], b[k]) for k in a):
        raise AssertionError("the reloaded processor encodes the prompt differently")
    with torch.no_grad():
        diff = (model(**a).logits - model2(**b).logits).abs().max().item()
    if diff > 1e-5:
        raise AssertionError(f"reloaded logits differ by {diff:.2e}")
    return f"{type(model2).__name__} + {type(processor2).__name__} via {how}"


def check_template(model, processor) -> str:
    """The yes/no ids contain the template's own first answer token; labels end with its end token."""
    from ..models.chat import prompt_text
    from ..models.template import answer_format, template_yes_no_ids

    tok = processor.tokenizer
    fmt = answer_format(processor)
    ids = template_yes_no_ids(processor)
    text = prompt_text(processor, QUESTIONS[0])
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    for word, group in (("Yes", ids.yes), ("No", ids.no)):
        first = tok(text + fmt.lead + word, add_special_tokens=False)["input_ids"][n]
        if first not in group:
            raise AssertionError(f"{tok.convert_ids_to_tokens(first)!r} (prompt + {fmt.lead + word!r}) is not read as {word.lower()}")
    yes = tok.convert_ids_to_tokens(ids.yes[1])
    return f"{yes!r} after {fmt.context_text[-24:]!r}, end {tok.convert_ids_to_tokens(fmt.end_id)!r}"


def check_sample(model, processor) -> str:
    """Prefill once + repeated cache == duplicated prompts (one prompt, 3 seeded candidates)."""
    from ..stages.sample import SampleConfig, generate_candidates

    seeds = [[1, 2, 3]]
    cfg = dict(max_new_tokens=6, temperature=1.0, n=3)
    shared = generate_candidates(model, processor, [probe_image()], [QUESTIONS[0]], seeds, SampleConfig(**cfg))
    naive = generate_candidates(model, processor, [probe_image()], [QUESTIONS[0]], seeds, SampleConfig(**cfg, share_prefill=False))
    if shared != naive:
        raise AssertionError(f"prefill-once texts {shared} != duplicated prompts {naive}")
    return f"{len(shared[0])} candidates equal"


def check_conquer(model, processor) -> str:
    """Shared image prefix == naive forwards, p_yes / p_no within 1e-4 (relative)."""
    from ..records import PolarQuestion
    from ..stages.conquer import ConquerConfig, conquer

    groups = [(probe_image(), [PolarQuestion(f"p#0/{i}", "c", q) for i, q in enumerate(QUESTIONS)])]
    naive = conquer(model, processor, groups, ConquerConfig(model="x", share_prefix=False))
    worst = 0.0
    for mode in ("batched", "packed"):
        shared = conquer(model, processor, groups, ConquerConfig(model="x", prefix_mode=mode))
        diff = max(max(abs(a.p_yes - b.p_yes) / max(b.p_yes, 1e-30), abs(a.p_no - b.p_no) / max(b.p_no, 1e-30)) for a, b in zip(shared, naive))
        if diff > 1e-4:
            raise AssertionError(f"shared-prefix ({mode}) p_yes/p_no differ from naive forwards by {diff:.2e} (relative)")
        worst = max(worst, diff)
    mass = sum(s.p_yes + s.p_no for s in naive) / len(naive)
    return f"max rel diff {worst:.1e} (batched and packed), mean yes+no mass {mass:.3f}; {_packed(model)}"


def _packed(model) -> str:
    """``packed: yes`` or ``packed: no (reason)`` for the detail of a shared-prefix check."""
    from ..models.prefix import pack_refusal

    reason = pack_refusal(model)
    return "packed: yes" if reason is None else f"packed: no ({reason})"


def check_best_of_n(model, processor) -> str:
    """Answer log-probs on the shared prompt cache == full forwards (summed, 1e-4)."""
    from ..models.answers import answer_logprobs

    naive = answer_logprobs(model, processor, probe_image(), QUESTIONS[0], ANSWERS, share_prefix=False)
    worst = 0.0
    for mode in ("batched", "packed"):
        shared = answer_logprobs(model, processor, probe_image(), QUESTIONS[0], ANSWERS, mode=mode)
        diff = max(abs(a.sum().item() - b.sum().item()) for a, b in zip(shared, naive))
        if diff > 1e-4 * max(1.0, max(abs(b.sum().item()) for b in naive)):
            raise AssertionError(f"shared-prefix ({mode}) answer log-probs differ by {diff:.2e}")
        worst = max(worst, diff)
    return f"max diff {worst:.1e} (batched and packed); {_packed(model)}"


def check_dpo(model, processor, workdir: Path) -> str:
    """Labels = answer + end-of-turn, a prefix of TRL's completion; our loss == TRL's on its batch."""
    from ..models.chat import IGNORE_INDEX, answer_ids, collate
    from ..models.template import answer_format

    tok = processor.tokenizer
    batch = collate(processor, [probe_image()], [QUESTIONS[0]], [ANSWERS[0]])
    sup = batch["input_ids"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
    if sup != answer_ids(processor, ANSWERS[0]) or sup[-1] != answer_format(processor).end_id:
        raise AssertionError(f"labels {tok.convert_ids_to_tokens(sup)} are not the answer + end-of-turn")
    if tok.decode(sup[:-1], skip_special_tokens=True).strip() != ANSWERS[0]:
        raise AssertionError(f"labels decode to {tok.decode(sup[:-1])!r}, not the answer")
    if not answer_format(processor).has_template:
        return "labels = answer + EOS; TRL comparison n/a (TRL's DPOTrainer needs a chat template)"
    return trl_parity(model, processor, sup, workdir)


def trl_parity(model, processor, our_labels: list[int], workdir: Path) -> str:
    """TRL's completion starts with our labels, and ``dpo_loss`` on TRL's batch == TRL's loss (1e-5)."""
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig, DPOTrainer

    from ..training.losses import IGNORE_INDEX, dpo_loss, sequence_logps

    ref = model
    policy = copy.deepcopy(model)
    with torch.no_grad():
        torch.manual_seed(0)
        for p in policy.get_output_embeddings().parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[0]}]}]
    ds = Dataset.from_dict({"images": [[probe_image()]], "prompt": [prompt],
                            "chosen": [[{"role": "assistant", "content": [{"type": "text", "text": ANSWERS[0]}]}]],
                            "rejected": [[{"role": "assistant", "content": [{"type": "text", "text": ANSWERS[2]}]}]]})
    args = TRLConfig(output_dir=str(workdir / "trl"), use_cpu=True, max_length=None, report_to=[], save_strategy="no",
                     per_device_train_batch_size=1, beta=0.1, bf16=False)
    trainer = DPOTrainer(model=policy, ref_model=copy.deepcopy(ref), args=args, train_dataset=ds, processing_class=processor)
    batch = next(iter(trainer.get_train_dataloader()))
    completion = batch["input_ids"][0][batch["completion_mask"][0].bool()].tolist()
    tok = processor.tokenizer
    note = ""
    if completion[:1] == [tok.bos_token_id] and our_labels[:1] != [tok.bos_token_id]:
        completion, note = completion[1:], f"; TRL's completion starts with an extra {tok.bos_token!r} (its tokenizer adds BOS)"
    if completion[: len(our_labels) - 1] != our_labels[:-1]:
        raise AssertionError(f"TRL's completion {tok.convert_ids_to_tokens(completion)} does not start with our answer tokens "
                             f"{tok.convert_ids_to_tokens(our_labels[:-1])}")
    after = tok.convert_ids_to_tokens(completion[len(our_labels) - 1 :])
    policy.eval()
    with torch.no_grad():
        try:
            trl_loss = trainer.compute_loss(trainer.model, batch).item()
        except RuntimeError as e:  # TRL's own forward on its own batch: TRL does not support this model
            return f"labels agree with TRL's completion; TRL comparison n/a (DPOTrainer.compute_loss fails on its own batch: {str(e).splitlines()[0][:120]})"
        logps = []
        for m in (policy, ref):
            labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE_INDEX)
            kw = {k: v for k, v in batch.items() if k != "completion_mask"}
            logps += list(sequence_logps(m(**kw, use_cache=False).logits, labels)[0].chunk(2))
        ours = dpo_loss(*logps, beta=0.1).loss.item()
    if abs(ours - trl_loss) > 1e-5:
        raise AssertionError(f"dpo_loss {ours:.6f} != TRL compute_loss {trl_loss:.6f}")
    end = tok.convert_ids_to_tokens(our_labels[-1])
    if after[:1] == [end]:
        tail = f"; TRL also supervises {after[1:]} after it" if after[1:] else ""
        return f"TRL loss {trl_loss:.4f} matched; answer + {end!r} agree with TRL's completion{tail}{note}"
    return f"TRL loss {trl_loss:.4f} matched; TRL supervises {after} after the answer where we train the end token {end!r}{note}"


# --------------------------------------------------------------------------- the matrix


def run_entry(e: ZooEntry, stages: tuple[str, ...] = STAGES, seed: int = 0) -> dict[str, Cell]:
    """Every check of ``stages`` on a freshly built ``e`` (a build failure fails every stage)."""
    try:
        model, processor = e.build(seed)
    except Exception as err:  # reported in every cell of the row  # noqa: BLE001
        return {s: Cell("fail", f"build: {type(err).__name__}: {str(err).splitlines()[0][:200]}") for s in stages}
    sharpen(model)
    model.eval()
    out: dict[str, Cell] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = {"load": lambda: check_load(model, processor, work / "saved"), "template": lambda: check_template(model, processor),
                "sample": lambda: check_sample(model, processor), "conquer": lambda: check_conquer(model, processor),
                "dpo": lambda: check_dpo(model, processor, work), "best_of_n": lambda: check_best_of_n(model, processor)}
        for s in stages:
            out[s] = _run(runs[s])
    return out


def markdown(entries: list[ZooEntry], results: dict[str, dict[str, Cell]], seconds: float) -> str:
    """``docs/models.md``: the status table, then every non-pass reason and each row's details."""
    lines = ["# Model compatibility matrix", "",
             "Written by `make matrix` (`python -m rlaifv.compat.matrix --out docs/models.md`); do not edit by hand.",
             "Each row is a tiny, randomly initialised model of the family built from config (`src/rlaifv/compat/`), with the",
             "family's published chat template (provenance: `src/rlaifv/compat/templates/PROVENANCE.md`) and a tokenizer of its",
             "real kind. What each column checks is in `src/rlaifv/compat/matrix.py`. `fallback`: the naive path was used",
             "(reason below), with the same results.", "",
             f"Measured with transformers {_version('transformers')}, TRL {_version('trl')}, torch {torch.__version__}; "
             f"{len(entries)} architectures in {seconds:.0f} s.", "",
             "| architecture | model type | template | tokenizer | first answer token, end of turn (measured) | " + " | ".join(STAGES) + " |",
             "|" + "---|" * (5 + len(STAGES))]
    for e in entries:
        r = results[e.name]
        lines.append(f"| {e.name} | `{e.model_type}` | {e.template or '(none: prefix prompt)'} | {e.tokenizer_kind} | "
                     f"{_md(r['template'].detail if r['template'].status == 'pass' else '-')} | " + " | ".join(_cell(r[s]) for s in STAGES) + " |")
    lines += ["", "## Details", ""]
    for e in entries:
        lines.append(f"- **{e.name}**: " + "; ".join(f"{s}: {results[e.name][s].status}" + (f" ({results[e.name][s].detail})" if results[e.name][s].detail else "")
                                                     for s in STAGES))
        lines += [f"  - note: {n}" for n in e.notes]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    """A table-safe cell: pipes escaped, newlines shown as \\n."""
    return text.replace("|", "\\|").replace("\n", "\\n")


def _cell(c: Cell) -> str:
    shown = {"pass": "pass", "fallback": "fallback", "fail": "**FAIL**"}.get(c.status, c.status)
    return shown + (" (TRL n/a)" if "TRL comparison n/a" in c.detail else "")


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def main(argv: list[str] | None = None) -> int:
    """Run the matrix and write the Markdown table; exit 1 if any cell fails."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/models.md"))
    ap.add_argument("--only", nargs="*", help="entry names (default: all)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    entries = [e for e in all_entries() if not args.only or e.name in args.only]
    t0 = time.time()
    results = {}
    for e in entries:
        t = time.time()
        results[e.name] = run_entry(e)
        print(f"{e.name:22s} " + " ".join(f"{s}={c.status}" for s, c in results[e.name].items()) + f"  ({time.time() - t:.1f} s)", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(entries, results, time.time() - t0))
    print(f"wrote {args.out}")
    return 1 if any(c.status == "fail" for r in results.values() for c in r.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())

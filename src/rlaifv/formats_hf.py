"""``rlaifv export --format hf``: a ``datasets`` DatasetDict a Hub user can pick up.

The folder ``out`` holds what ``DatasetDict.save_to_disk`` writes (split ``train``) plus a
generated dataset card ``README.md``. Load it with ``datasets.load_from_disk(out)``; push it
with ``--push-to-hub REPO`` (``datasets``' own ``push_to_hub``, then the card).

Columns (one row per preference pair):

* ``image``: an ``Image()`` feature holding the prompt's original file bytes (never re-encoded);
* ``prompt`` / ``chosen`` / ``rejected``: TRL's conversational vision preference format, as
  ``DPOTrainer`` takes it with a single ``image`` column (a user message with an image part
  and a text part; one assistant message with one text part);
* ``question``, ``pair_id``, ``prompt_id``, ``chosen_id``, ``rejected_id`` (candidate ids of the
  run), ``chosen_score`` / ``rejected_score`` (-(rejected claims) in a feedback run).

The card says how the data was made, read from the run folder when there is one: policy and
sampling (``candidates/manifest.json``), divide and ask backends, labeler and conquer mode
(``scores/manifest.json``), pairing (``pairs/stats.json``), counts (``feedback.json``), package
versions, and the method's citation. Absolute local paths are shown by their last part only.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import datasets

from .formats import _image_cell, _message_feature
from .images import DEFAULT_MAX_IMAGE_PIXELS
from .records import PreferencePair, Prompt

PathLike = str | os.PathLike
SPLIT = "train"
CARD = "README.md"
HF_COLUMNS = ("image", "prompt", "chosen", "rejected", "question", "pair_id", "prompt_id", "chosen_id", "rejected_id",
              "chosen_score", "rejected_score")
CITATION = """@inproceedings{yu2025rlaifv,
  title     = {RLAIF-V: Open-Source AI Feedback Leads to Super GPT-4V Trustworthiness},
  author    = {Yu, Tianyu and Zhang, Haoye and Yao, Yuan and Dang, Yunkai and Chen, Da and Lu, Xiaoman and
               Cui, Ganqu and He, Taiwen and Liu, Zhiyuan and Chua, Tat-Seng and Sun, Maosong},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2025},
  note      = {arXiv:2405.17220}
}"""


#: the card's schema table (one line per column)
SCHEMA = {"image": "`Image()`: the prompt's image, original file bytes",
          "prompt": "list of messages: a user message with an image part and a text part (TRL conversational format)",
          "chosen": "list of messages: the preferred assistant answer",
          "rejected": "list of messages: the dispreferred assistant answer",
          "question": "the prompt's question as text", "pair_id": "`chosen_id>rejected_id`",
          "prompt_id": "the prompt's id in the run", "chosen_id": "candidate id of the chosen answer",
          "rejected_id": "candidate id of the rejected answer",
          "chosen_score": "score of the chosen answer: -(claims the labeler rejected)",
          "rejected_score": "score of the rejected answer"}


class ExportError(RuntimeError):
    """The export cannot be written or pushed as asked; the message says what to do."""


def export_inputs(run: PathLike | None, pairs: PathLike | None, prompts: PathLike | None
                  ) -> tuple[list[PreferencePair], dict[str, Prompt], Path]:
    """(pairs, prompt_id -> prompt, the folder relative image paths resolve against) of an export.

    ``pairs`` defaults to ``run/pairs``, ``prompts`` to ``run/prompts/prompts.jsonl`` (the copy
    ``feedback`` keeps in every run, ``inputs.copy_into_run``). ExportError when neither a run
    nor the missing path is given, or a run made before that copy existed has none.
    """
    from .inputs import run_prompts_file
    from .store import read_records

    if run is None and (pairs is None or prompts is None):
        raise ExportError("give --run RUN (a feedback run folder), or both --pairs and --prompts")
    pairs_path = Path(pairs) if pairs is not None else Path(run) / "pairs"  # type: ignore[arg-type]
    prompts_path = Path(prompts) if prompts is not None else run_prompts_file(run)  # type: ignore[arg-type]
    if prompts is None and not prompts_path.exists():
        raise ExportError(f"{run} has no prompts/prompts.jsonl (a run made before feedback copied its prompts into "
                          "the run): give the prompts file it was made from with --prompts")
    prompt_map = {p.prompt_id: p for p in read_records(prompts_path, Prompt)}
    base = prompts_path.parent if prompts_path.is_file() else prompts_path
    return list(read_records(pairs_path, PreferencePair)), prompt_map, base


def hf_features() -> datasets.Features:
    """Features of the ``hf`` export (module doc)."""
    msg, text, score = _message_feature(), datasets.Value("string"), datasets.Value("float64")
    kinds = {"image": datasets.Image(), "prompt": msg, "chosen": msg, "rejected": msg,
             "chosen_score": score, "rejected_score": score}
    return datasets.Features({name: kinds.get(name, text) for name in HF_COLUMNS})


def hf_rows(pairs: Sequence[PreferencePair], prompts: Mapping[str, Prompt], base_dir: Path | None,
            max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> dict[str, list[Any]]:
    """Column -> values; every image decoded once per prompt first (``formats._image_cell``)."""
    rows: dict[str, list[Any]] = {name: [] for name in HF_COLUMNS}
    checked: dict[str, bytes] = {}
    for pair in pairs:
        values = {"image": _image_cell(pair, prompts, base_dir, max_pixels, checked),
                  "prompt": [{"role": "user", "content": [{"type": "image", "text": None},
                                                          {"type": "text", "text": pair.question}]}],
                  "chosen": [{"role": "assistant", "content": [{"type": "text", "text": pair.chosen}]}],
                  "rejected": [{"role": "assistant", "content": [{"type": "text", "text": pair.rejected}]}],
                  "question": pair.question, "pair_id": pair.id, "prompt_id": pair.prompt_id,
                  "chosen_id": pair.chosen_id, "rejected_id": pair.rejected_id,
                  "chosen_score": float(pair.chosen_score), "rejected_score": float(pair.rejected_score)}
        for name in HF_COLUMNS:
            rows[name].append(values[name])
    return rows


def to_hf(pairs: Sequence[PreferencePair], prompts: Mapping[str, Prompt], base_dir: PathLike | None, out_dir: PathLike,
          run: PathLike | None = None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
          run_pairs: bool = True) -> datasets.DatasetDict:
    """Write ``out_dir`` (``save_to_disk`` + ``README.md``, built in ``out_dir.tmp`` and swapped in); return it.

    ``run`` (a feedback run folder) feeds the card's provenance (its pairing statistics only
    when ``run_pairs``: the pairs are the run's ``pairs/``). ``out_dir`` must be new, empty
    or an earlier ``hf`` export (it is replaced); anything else is refused (ExportError).
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / "dataset_dict.json").is_file():
        raise ExportError(f"{out} exists and is not an earlier hf export (no dataset_dict.json); use a new --out folder")
    base = Path(base_dir) if base_dir is not None else None
    ds = datasets.DatasetDict({SPLIT: datasets.Dataset.from_dict(hf_rows(pairs, prompts, base, max_pixels), features=hf_features())})
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a killed export's leftovers
    ds.save_to_disk(str(tmp))
    (tmp / CARD).write_text(dataset_card(ds[SPLIT], Path(run) if run is not None else None, run_pairs), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return ds


# ----------------------------------------------------------------------------- the dataset card


def _read(path: Path) -> dict[str, Any]:
    """A JSON file of the run as a dict ({} when absent or unreadable: the card then says "not recorded")."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _shown(value: Any) -> Any:
    """Absolute local paths by their last part (a public card should not carry /home/<user>/...)."""
    if isinstance(value, dict):
        return {k: _shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown(v) for v in value]
    if isinstance(value, str) and (value.startswith("/") or value.startswith("~") or (len(value) > 2 and value[1:3] == ":\\")):
        return f"{Path(value).name} (local folder)"
    return value


def _model(value: Any) -> str:
    return f"`{_shown(value)}`" if value else "not recorded"


def run_provenance(run: Path | None, run_pairs: bool = True) -> dict[str, Any]:
    """What the card reports about a feedback run: stage configs, counts, pairing stats (``run_pairs``), versions."""
    if run is None:
        return {}
    manifests = {stage: _read(run / folder / "manifest.json") for stage, folder in
                 (("sample", "candidates"), ("divide", "claims"), ("ask", "questions"), ("conquer", "scores"),
                  ("conquer_holistic", "holistic_scores"))}
    return {"configs": {k: m.get("config") for k, m in manifests.items() if m.get("config")},
            "versions": next((m["versions"] for m in manifests.values() if m.get("versions")), {}),
            "feedback": _read(run / "feedback.json"), "pairs": _read(run / "pairs" / "stats.json") if run_pairs else {},
            "pairs_given": not run_pairs}


def _how_made(prov: dict[str, Any]) -> list[str]:
    """The card's "How it was made" bullet lines."""
    cfg = prov.get("configs", {})
    sample, divide, ask = cfg.get("sample", {}), cfg.get("divide", {}), cfg.get("ask", {})
    conquer = cfg.get("conquer") or cfg.get("conquer_holistic") or {}
    lines = [f"- **Policy** (sampled the candidates): {_model(sample.get('model'))}; {sample.get('n', '?')} candidates per "
             f"prompt, temperature {sample.get('temperature', '?')}, at most {sample.get('max_new_tokens', '?')} new tokens, "
             f"seed {sample.get('seed', '?')} (one seed per candidate, identical decoding)."]
    if divide:
        llm = divide.get("llm", {}).get("model_path") or divide.get("endpoint", {}).get("model")
        lines.append(f"- **Divide** (answer -> atomic claims): `{divide.get('backend')}` backend" + (f", {_model(llm)}" if divide.get("backend") == "llm" else "") + ".")
    if ask:
        llm = ask.get("llm", {}).get("model_path") or ask.get("endpoint", {}).get("model")
        lines.append(f"- **Ask** (claim -> yes/no question): `{ask.get('backend')}` backend" + (f", {_model(llm)}" if ask.get("backend") == "llm" else "") + ".")
    lines.append(f"- **Labeler** (p_yes / p_no per question; a claim is rejected when p_no >= p_yes): {_model(conquer.get('model'))}, "
                 f"mode `{conquer.get('mode', '?')}`.")
    stats = prov.get("pairs", {})
    if stats:
        lines.append(f"- **Pairs**: score = -(rejected claims); pairs with a score gap >= {stats.get('min_score_gap', '?')}, "
                     f"ties dropped ({stats.get('dropped_tie', 0)}), {stats.get('pairs_before_cap', '?')} pairs before the "
                     f"per-prompt cap, {stats.get('pairs_after_cap', '?')} after it, {stats.get('pairs_after_balance', '?')} "
                     f"after length balancing.")
    if prov.get("pairs_given"):
        lines.append("- **Pairs**: given separately (`export --pairs`), not the run's `pairs/`: the run's pairing statistics do not apply.")
    return lines


def _counts(ds: datasets.Dataset, prov: dict[str, Any]) -> list[str]:
    counts = prov.get("feedback", {}).get("counts", {})
    lines = [f"- rows (preference pairs): {len(ds)}", f"- distinct prompts with a pair: {len(set(ds['prompt_id']))}"]
    lines += [f"- {k} in the run: {v}" for k, v in counts.items()]
    rejected = {k: v for k, v in prov.get("feedback", {}).get("rejected", {}).items() if v}
    if rejected:
        lines.append("- inputs rejected by a stage: " + ", ".join(f"{k} {v}" for k, v in rejected.items()))
    return lines


def _front_matter(n: int) -> str:
    size = "n<1K" if n < 1_000 else "1K<n<10K" if n < 10_000 else "10K<n<100K" if n < 100_000 else "100K<n<1M"
    return ("---\ntask_categories:\n- image-text-to-text\ntags:\n- dpo\n- preference\n- rlaif-v\n- rlaifv\n- hallucination\n"
            f"size_categories:\n- {size}\n---\n")


def dataset_card(ds: datasets.Dataset, run: Path | None, run_pairs: bool = True) -> str:
    """The README.md of an ``hf`` export (schema, how it was made, counts, citation)."""
    prov = run_provenance(run, run_pairs)
    schema = "\n".join(f"| `{name}` | {SCHEMA[name]} |" for name in HF_COLUMNS)
    how = _how_made(prov) if prov else ["- Not exported from a feedback run folder: the pairs' provenance was not recorded here."]
    configs = json.dumps(_shown(prov.get("configs", {})), indent=2, sort_keys=True) if prov else "{}"
    versions = ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items() if v) or "not recorded"
    return f"""{_front_matter(len(ds))}
# Preference pairs from RLAIF-V feedback (made with rlaifv)

Vision preference pairs (image, question, a chosen and a rejected answer) made with rlaifv, a
re-implementation of **RLAIF-V** (Yu et al., CVPR 2025, [arXiv 2405.17220](https://arxiv.org/abs/2405.17220)): a policy samples several answers per prompt with identical decoding, each answer is
divided into atomic claims, each claim becomes a yes/no question the labeler answers about the image, and
answers with fewer rejected claims are preferred.

## Load

```python
import datasets
ds = datasets.load_from_disk("THIS_FOLDER")["train"]   # or datasets.load_dataset("REPO")["train"] once pushed
```

The `image`, `prompt`, `chosen` and `rejected` columns are what TRL's `DPOTrainer` takes for a vision
model (`DPOTrainer(model=..., train_dataset=ds, processing_class=processor, ...)`); the other columns are
dropped by it.

## Schema

| column | content |
|---|---|
{schema}

## How it was made

{chr(10).join(how)}

Package versions: {versions}.

<details><summary>Stage configs (from the run's manifests)</summary>

```json
{configs}
```

</details>

## Counts

{chr(10).join(_counts(ds, prov))}

## Citation

```bibtex
{CITATION}
```
"""


# ----------------------------------------------------------------------------- the hub


def push_to_hub(out_dir: PathLike, repo_id: str, private: bool = False) -> None:
    """Push a saved ``hf`` export with ``datasets``' ``push_to_hub``, then its card.

    The saved folder is never touched: on any failure (offline, no token, no network) an
    ExportError says so in one line and names the folder to push again from.
    """
    out = Path(out_dir)
    ds = datasets.load_from_disk(str(out))
    try:
        ds.push_to_hub(repo_id, private=private)
    except (OSError, ValueError) as e:  # huggingface_hub's errors (offline, HTTP, no token) are OSErrors
        raise ExportError(f"push to the hub ({repo_id}) failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}; "
                          f"nothing is lost, the dataset is saved in {out}: rerun with --push-to-hub when the hub is reachable") from e
    try:
        _push_card(out / CARD, repo_id)
    except (OSError, ValueError) as e:
        raise ExportError(f"the data is on the hub ({repo_id}) but its card was not uploaded: {type(e).__name__}: "
                          f"{' '.join(str(e).split())[:300]}; upload {out / CARD} as the repo's README.md") from e


def _push_card(card_path: Path, repo_id: str) -> None:
    """Our card, keeping the YAML ``push_to_hub`` wrote (dataset_info, configs) next to ours."""
    from huggingface_hub import DatasetCard

    ours = DatasetCard(card_path.read_text(encoding="utf-8"))
    hub = DatasetCard.load(repo_id, repo_type="dataset")
    for key, value in hub.data.to_dict().items():
        if key not in ours.data.to_dict():
            ours.data[key] = value
    ours.push_to_hub(repo_id, repo_type="dataset", commit_message="rlaifv dataset card")

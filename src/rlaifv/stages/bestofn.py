"""Best-of-N with the RLAIF-V reward: sample N answers per prompt, score them, keep the best.

RLAIF-V (Yu et al., CVPR 2025, arXiv 2405.17220, Sec. 3.3 "inference-time scaling") reuses the
DPO-aligned model as a reward model: its implicit reward, length-normalised, ranks N sampled
answers and the best one is returned. Scorers (``SCORERS``):

* ``rlaifv-reward`` (default): ``(beta / T) * sum_t [log pi_aligned(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)]``
  over the answer tokens, T = their number (:func:`implicit_reward`);
* ``dpo-reward``: the same sum without the 1/T (the plain DPO implicit reward);
* ``reward-min`` / ``reward-last``: beta times the smallest / the last token's log-ratio, the
  other aggregates of the reference code's reward pipeline (``stages/rewards.py``);
* ``labeler``: the divide-and-conquer score of the feedback engine, -(number of rejected
  claims), from the ``divide``, ``ask`` and ``conquer`` stages with a labeler model;
* ``perplexity``: the mean token log-prob of the answer under the sampling policy (higher is
  better), the naive baseline.

"Answer tokens" are ``chat.answer_ids(processor, text)``: the answer's tokens **including the
final EOS**, the tokens DPO training supervises. Ties go to the lowest candidate index.

Flow per prompt: ``stages/sample.py::sample`` draws the N candidates (prompt prefilled once,
one seed per candidate); each scoring model encodes image + prompt once and scores the N
answers batched on that KV cache (``models/answers.py``); models that are the same loaded
object are run once. The aligned model and the reference are either two checkpoints or one
LoRA adapter (``models/load.py``), the reference then being the same model with the adapter
switched off, so only one model is in memory.

Output: one :class:`BestOfNResult` per prompt (chosen answer + every candidate with its token
counts, summed log-probs, claims and scores), through ``runner.run_stage``: resumable per
prompt, manifest written, progress bar. The sandbox sweep over N lives in
``sandbox/bestofn_sweep.py``.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, ContextManager, Sequence

import torch
from PIL import Image

from ..config import ConfigError
from ..images import load_image
from ..models.answers import answer_logprobs
from ..models.chat import answer_ids
from ..models.load import load_vlm, unwrap_peft
from ..models.options import LoadOptions
from ..records import Candidate, Prompt, Record, RecordError
from ..resume import ResumeOptions, prompt_fingerprint
from ..runner import rank_and_world
from ..store import read_inputs, read_records, rejects_count
from .ask import AskConfig, ask
from ..backends.base import EndpointOptions, VLLMOptions, check_backend, manifest_view
from ..backends.stage import role_backend
from .conquer import ConquerConfig, check_conquer_inputs, conquer, score_via
from .divide import DivideConfig, divide
from .feedback import _run, prompt_of_claim, prompts_file
from .llm import build_chat_lm
from .rewards import REWARD_SCORERS, candidate_scores, implicit_reward, labeler_score, mean_logprob, pick_best  # noqa: F401 (re-exported)
from .sample import SampleConfig, sample, sample_via

SCORERS = (*REWARD_SCORERS, "labeler", "perplexity")
#: which model's log-probs each scorer reads
ROLES_OF = {**{name: ("aligned", "reference") for name in REWARD_SCORERS}, "perplexity": ("policy",), "labeler": ()}


@dataclass
class SweepConfig:
    """``rlaifv best-of-n --sweep``: how the sandbox measurement varies N (see ``sandbox/bestofn_sweep.py``)."""

    ns: tuple[int, ...] = (1, 2, 4, 8, 16, 32)  # N values; max(ns) candidates are sampled once per seed
    seeds: tuple[int, ...] = (0, 1, 2)  # sampling seeds (mean and spread over them)
    scorers: tuple[str, ...] = SCORERS  # scorers compared (all computed on the same candidates)

    def __post_init__(self) -> None:
        bad = [s for s in self.scorers if s not in SCORERS]
        if bad or not self.scorers:
            raise ConfigError(f"sweep.scorers {list(self.scorers)}: expected a non-empty subset of {SCORERS}")
        if not self.ns or min(self.ns) < 1 or not self.seeds:
            raise ConfigError(f"sweep needs N values >= 1 and at least one seed; got ns={list(self.ns)}, seeds={list(self.seeds)}")


@dataclass
class BestOfNConfig:
    """Settings of ``rlaifv best-of-n`` (YAML sections: sample, divide, ask, conquer, sweep)."""

    prompts: str = ""  # prompts file (JSONL/parquet of Prompt records); empty: use `sandbox_prompts`
    sandbox_prompts: int = 0  # >0: this many sandbox describe prompts (scenes of `sandbox_split`) into out/prompts
    sandbox_split: str = "test"  # val | test: held-out sandbox scenes
    out: str = "runs/best-of-n"  # run folder: results/ (records), prompts/ (sandbox), summary.json
    scorer: str = "rlaifv-reward"  # picks the answer: rlaifv-reward | dpo-reward | reward-min | reward-last | labeler | perplexity
    also_score: tuple[str, ...] = ()  # further scorers computed and recorded for every candidate
    aligned: str = ""  # reward model: DPO-aligned checkpoint or LoRA adapter folder ("" = the policy, sample.model)
    reference: str = ""  # reference model of the reward ("" = `aligned` with its LoRA adapter switched off)
    beta: float = 0.1  # DPO beta: scales the rewards; never changes which answer wins
    score_batch_size: int = 16  # candidate answers per scoring forward in the batched and naive prefix modes (packed: pack_tokens)
    share_prefix: bool = True  # image + prompt encoded once per model (False: one full forward per answer; for checks)
    #: packed: the N answers in one sequence with a block mask on the prompt's cache (fastest; default); batched:
    #: one row and one cache copy per answer (automatic fallback for models that cannot pack); naive: one full
    #: forward per answer (for checks; also share_prefix: false). Same log-probs within 1e-4.
    prefix_mode: str = "packed"
    pack_tokens: int = 2048  # packed mode: most answer tokens per forward (bounds the mask and activations)
    #: who computes the aligned / reference log-probs (reward scorers): hf (loaded here) | vllm | openai (each role's
    #: model name is asked of the server, e.g. vLLM serving the aligned LoRA adapter under its own name; `reference` required).
    #: The policy follows sample.backend (sampling, perplexity), the labeler conquer.backend (rlaifv/backends/)
    backend: str = "hf"
    endpoint: EndpointOptions = field(default_factory=EndpointOptions)  # backend openai: the server of the reward models
    vllm: VLLMOptions = field(default_factory=VLLMOptions)  # backend vllm: the engine's options
    on_error: str = "raise"  # raise | skip (a bad prompt goes to results/rejects.jsonl)
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(n=8))  # policy (sample.model), N (sample.n), decoding
    divide: DivideConfig = field(default_factory=DivideConfig)  # labeler scorer: claims of each answer
    ask: AskConfig = field(default_factory=AskConfig)  # labeler scorer: yes/no question per claim
    conquer: ConquerConfig = field(default_factory=ConquerConfig)  # labeler scorer: labeler (conquer.model) and mode
    sweep: SweepConfig = field(default_factory=SweepConfig)  # only for --sweep

    def __post_init__(self) -> None:
        """Refuse settings that cannot mean anything (ConfigError names the key)."""
        for name in (self.scorer, *self.also_score):
            if name not in SCORERS:
                raise ConfigError(f"best-of-n scorer {name!r}: expected one of {SCORERS}")
        if not self.beta > 0:
            raise ConfigError(f"best-of-n beta must be > 0, got {self.beta}")
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"best-of-n on_error must be raise or skip, got {self.on_error!r}")
        if self.score_batch_size < 1:
            raise ConfigError(f"best-of-n score_batch_size must be >= 1, got {self.score_batch_size}")
        if self.prefix_mode not in ("packed", "batched", "naive"):
            raise ConfigError(f"best-of-n prefix_mode must be packed, batched or naive, got {self.prefix_mode!r}")
        if self.pack_tokens < 1:
            raise ConfigError(f"best-of-n pack_tokens must be >= 1, got {self.pack_tokens}")
        check_backend("best-of-n", self.backend, self.endpoint, self.vllm)
        if self.backend != "hf" and set(REWARD_SCORERS) & set(self.scorers) and not self.reference:
            raise ConfigError(f"best-of-n backend {self.backend}: the reward scorers need `reference` (--reference) named "
                              "(a server cannot switch a LoRA adapter off)")

    @property
    def scorers(self) -> tuple[str, ...]:
        """The selecting scorer first, then the extra ones (no duplicates)."""
        return tuple(dict.fromkeys((self.scorer, *self.also_score)))


# ----------------------------------------------------------------------------- the record


@dataclass
class BestOfNResult(Record):
    """The best of N answers to one prompt, with every candidate and its scores.

    ``candidates[k]`` holds ``candidate_id``, ``sample_index``, ``seed``, ``text``,
    ``n_tokens`` and ``logp`` (per model role: policy / aligned / reference; summed over the
    answer tokens incl. EOS), ``claims`` and ``rejected`` (labeler scorer) and ``scores``
    (scorer -> value). ``chosen_index`` is the best candidate under ``scorer``.
    """

    kind: ClassVar[str] = "best_of_n"
    prompt_id: str
    question: str
    scorer: str
    chosen_index: int
    chosen: str
    candidates: list[dict[str, Any]]
    models: dict[str, str] = field(default_factory=dict)
    beta: float = 0.1

    @property
    def id(self) -> str:
        return self.prompt_id

    def scores(self, scorer: str | None = None) -> list[float]:
        """Every candidate's score under ``scorer`` (default: the selecting one), in sample order."""
        name = scorer or self.scorer
        try:
            return [float(c["scores"][name]) for c in self.candidates]
        except (KeyError, TypeError) as e:
            raise RecordError(f"best_of_n {self.prompt_id!r}: no {name!r} score for every candidate ({e})") from e

    def validate(self) -> None:
        label = f"best_of_n {self.prompt_id!r}"
        if self.scorer not in SCORERS:
            raise RecordError(f"{label}: unknown scorer {self.scorer!r}")
        if not isinstance(self.candidates, list) or not self.candidates:
            raise RecordError(f"{label}: no candidates")
        if not isinstance(self.chosen_index, int) or not 0 <= self.chosen_index < len(self.candidates):
            raise RecordError(f"{label}: chosen_index {self.chosen_index!r} out of range for {len(self.candidates)} candidates")
        if self.candidates[self.chosen_index].get("text") != self.chosen:
            raise RecordError(f"{label}: chosen text differs from candidate {self.chosen_index}")
        try:
            best = pick_best(self.scores(), label)
        except ValueError as e:
            raise RecordError(str(e)) from e
        if self.scores()[best] != self.scores()[self.chosen_index]:
            raise RecordError(f"{label}: candidate {self.chosen_index} is not the best under {self.scorer}")


# ----------------------------------------------------------------------------- models


@dataclass
class ScoringModel:
    """A loaded model as one scoring role: the transformers model, its processor, and whether
    its LoRA adapter is switched off (the reference of a LoRA-aligned model)."""

    name: str
    model: Any
    processor: Any
    peft: Any = None  # the PeftModel around `model`, if it carries an adapter
    adapter_off: bool = False
    backend: Any = None  # a serving backend (vllm / openai) instead of `model` (rlaifv/backends/)

    @property
    def key(self) -> tuple[int, bool]:
        """Same key = same numbers: such roles are scored once."""
        return id(self.backend if self.backend is not None else self.model), self.adapter_off

    def context(self) -> ContextManager:
        return self.peft.disable_adapter() if self.adapter_off else nullcontext()


@dataclass
class BestOfNModels:
    """Everything a best-of-N run computes with (built once per process by :func:`load_models`)."""

    policy: ScoringModel
    aligned: ScoringModel | None = None
    reference: ScoringModel | None = None
    labeler: ScoringModel | None = None
    divide_lm: Any = None  # loaded chat LM of divide/ask's llm backend (None: rules)
    ask_lm: Any = None

    def names(self) -> dict[str, str]:
        return {r: m.name for r in ("policy", "aligned", "reference", "labeler") if (m := getattr(self, r)) is not None}


def load_models(cfg: BestOfNConfig, scorers: Sequence[str] | None = None) -> BestOfNModels:
    """Load the policy and what ``scorers`` (default: ``cfg.scorers``) need; a name loads once."""
    cfg = with_models(cfg)
    scorers = tuple(scorers or cfg.scorers)
    loaded: dict[tuple, ScoringModel] = {}

    def get(name: str, how: Any = cfg.sample, kind: str = "hf") -> ScoringModel:
        """``name`` loaded as ``how`` says (sample section: policy, aligned, reference; conquer: the labeler), or
        served by backend ``kind`` (``how`` then holds its endpoint / vllm section)."""
        key = (name, repr(LoadOptions.of(how)) if kind == "hf" else id(how), kind)
        if key in loaded:
            return loaded[key]
        if kind != "hf":
            loaded[key] = ScoringModel(name, None, None, backend=role_backend(kind, "best-of-n", name, how, Path(cfg.out) / "results"))
        else:
            model, processor = load_vlm(name, options=how)
            inner, peft = unwrap_peft(model)
            loaded[key] = ScoringModel(name, inner, processor, peft)
        return loaded[key]

    models = BestOfNModels(policy=get(cfg.sample.model, cfg.sample, cfg.sample.backend))
    if set(REWARD_SCORERS) & set(scorers):
        reward = (cfg, cfg.backend) if cfg.backend != "hf" else (cfg.sample, "hf")
        models.aligned = get(cfg.aligned or cfg.sample.model, *reward)
        if cfg.reference:
            models.reference = get(cfg.reference, *reward)
        elif models.aligned.peft is not None:
            models.reference = replace(models.aligned, name=f"{models.aligned.name} (adapter off)", adapter_off=True)
        else:
            raise ConfigError("the reward scorers need a reference model: set `reference` (--reference), "
                              "or give a LoRA adapter folder as `aligned` (its base is the reference)")
    if "labeler" in scorers:
        models.labeler = get(cfg.conquer.model, cfg.conquer, cfg.conquer.backend)
        models.divide_lm = build_chat_lm(cfg.divide.llm, cfg.divide.endpoint) if cfg.divide.backend == "llm" else None
        models.ask_lm = build_chat_lm(cfg.ask.llm, cfg.ask.endpoint) if cfg.ask.backend == "llm" else None
    return models


# ----------------------------------------------------------------------------- the stage


def role_logprobs(models: BestOfNModels, roles: Sequence[str], image: Image.Image, question: str, answers: Sequence[str],
                  cfg: BestOfNConfig) -> dict[str, list[torch.Tensor]]:
    """role -> per-answer token log-probs; each distinct (model, adapter state) runs once."""
    done: dict[tuple[int, bool], list[torch.Tensor]] = {}
    out: dict[str, list[torch.Tensor]] = {}
    for role in roles:
        sm: ScoringModel = getattr(models, role)
        if sm.key not in done and sm.backend is not None:
            done[sm.key] = [torch.tensor(x, dtype=torch.float32) for x in sm.backend.answer_logprobs(image, question, answers)]
        elif sm.key not in done:
            with sm.context():
                done[sm.key] = answer_logprobs(sm.model, sm.processor, image, question, answers, cfg.score_batch_size, cfg.share_prefix,
                                               cfg.prefix_mode, cfg.pack_tokens)
        out[role] = done[sm.key]
    if models.aligned is not None and models.reference is not None and "reference" in roles and models.aligned.processor is not None \
            and models.reference.processor is not None:
        for a in answers:
            if answer_ids(models.aligned.processor, a) != answer_ids(models.reference.processor, a):
                raise ValueError(f"aligned ({models.aligned.name}) and reference ({models.reference.name}) tokenise the answer "
                                 f"{a[:40]!r} differently; the implicit reward needs one tokenizer")
    return out


def claim_verdicts(models: BestOfNModels, prompts: Sequence[Prompt], images: Sequence[Image.Image], candidates: Sequence[Candidate],
                   cfg: BestOfNConfig) -> dict[str, tuple[list[str], list[bool]]]:
    """candidate id -> (claims, rejected flags) through the feedback engine's divide, ask, conquer."""
    question_of = {p.prompt_id: p.question for p in prompts}
    claims = [cl for r in divide(candidates, question_of, cfg.divide, lm=models.divide_lm) for cl in r.claims]
    questions = ask(claims, cfg.ask, lm=models.ask_lm)
    groups = [(img, [q for q in questions if prompt_of_claim(q.claim_id) == p.prompt_id]) for p, img in zip(prompts, images)]
    lab = models.labeler
    scores = score_via(lab.backend, groups, cfg.conquer)[0] if lab.backend is not None else conquer(lab.model, lab.processor, groups, cfg.conquer)
    accepted = {s.claim_id: s.accepted for s in scores}
    out: dict[str, tuple[list[str], list[bool]]] = {c.id: ([], []) for c in candidates}
    for cl in claims:
        out[cl.candidate_id][0].append(cl.text)
        out[cl.candidate_id][1].append(not accepted[cl.id])
    return out


def choose(prompt: Prompt, candidates: Sequence[Candidate], logps: dict[str, list[torch.Tensor]],
           verdicts: dict[str, tuple[list[str], list[bool]]] | None, cfg: BestOfNConfig, names: dict[str, str]) -> BestOfNResult:
    """The record of one prompt: every candidate's scores, and the best under ``cfg.scorer``."""
    rows: list[dict[str, Any]] = []
    for k, c in enumerate(candidates):
        mine = {role: lps[k] for role, lps in logps.items()}
        claims, rejected = verdicts[c.id] if verdicts is not None else (None, None)
        row: dict[str, Any] = {"candidate_id": c.id, "sample_index": c.sample_index, "seed": c.seed, "text": c.text,
                               "n_tokens": {r: int(x.numel()) for r, x in mine.items()},
                               "logp": {r: float(x.double().sum()) for r, x in mine.items()}}
        if claims is not None:
            row.update(claims=claims, rejected=rejected)
        row["scores"] = candidate_scores(c.id, cfg.scorers, mine, rejected, cfg.beta)
        rows.append(row)
    best = pick_best([r["scores"][cfg.scorer] for r in rows], f"prompt {prompt.prompt_id!r}")
    return BestOfNResult(prompt_id=prompt.prompt_id, question=prompt.question, scorer=cfg.scorer, chosen_index=best,
                         chosen=rows[best]["text"], candidates=rows, models=names, beta=cfg.beta)


def best_of_n(models: BestOfNModels, prompts: Sequence[Prompt], images: Sequence[Image.Image], cfg: BestOfNConfig) -> list[BestOfNResult]:
    """Sample ``cfg.sample.n`` answers per prompt, score them with ``cfg.scorers``, keep the best.

    A pure function of the models, prompts, images and cfg (candidate seeds come from
    ``cfg.sample.seed`` and the prompt id). An empty candidate answer or a non-finite
    log-prob raises an error naming the candidate.
    """
    pol = models.policy
    if pol.backend is not None:
        cands = sample_via(pol.backend, prompts, images, cfg.sample, model_name=cfg.sample.model)
    else:
        cands = sample(pol.model, pol.processor, prompts, images, cfg.sample, model_name=cfg.sample.model)
    for c in cands:
        if not c.text.strip():
            raise ValueError(f"candidate {c.id!r}: empty answer; best-of-n cannot score it (use --on-error skip to set the prompt aside)")
    by_prompt = {p.prompt_id: [c for c in cands if c.prompt_id == p.prompt_id] for p in prompts}
    verdicts = claim_verdicts(models, prompts, images, cands, cfg) if "labeler" in cfg.scorers else None
    roles = tuple(dict.fromkeys(r for s in cfg.scorers for r in ROLES_OF[s]))
    out: list[BestOfNResult] = []
    for p, img in zip(prompts, images):
        group = by_prompt[p.prompt_id]
        logps = role_logprobs(models, roles, img, p.question, [c.text for c in group], cfg) if roles else {}
        out.append(choose(p, group, logps, verdicts, cfg, models.names()))
    return out


# ----------------------------------------------------------------------------- running


def stage_config(cfg: BestOfNConfig) -> dict[str, Any]:
    """What the manifest pins (resuming with another value is refused): everything that changes results."""
    d = manifest_view(asdict(cfg))  # backend hf: the keys a run always had (runs made before backends resume)
    d["sample"], d["conquer"] = manifest_view(d["sample"]), manifest_view(d["conquer"])
    for k in ("out", "on_error", "sweep", "prompts", "sandbox_prompts", "sandbox_split"):  # inputs are fingerprinted instead
        d.pop(k)
    return d


def load_prompts(cfg: BestOfNConfig) -> tuple[list[Prompt], Path]:
    """(prompts, prompts file): ``cfg.prompts``, or ``cfg.sandbox_prompts`` scenes written to out/prompts."""
    path = prompts_file(cfg.prompts, cfg.sandbox_prompts, cfg.out, cfg.sandbox_split)
    rejects_dir = Path(cfg.out) / "results" if rank_and_world()[0] == 0 else None  # malformed lines, with on_error skip
    return read_inputs(path, Prompt, cfg.on_error, rejects_dir, "best-of-n", what="prompts"), path  # type: ignore[arg-type]


def run_best_of_n(cfg: BestOfNConfig, prompts: list[Prompt], prompts_path: Path, out: Path, models: BestOfNModels | None = None,
                  resume: ResumeOptions | None = None):
    """The stage over ``prompts`` into ``out`` (resumable per prompt; split across processes
    under ``accelerate launch`` like the feedback stages). ``models`` reuses loaded models."""
    cfg = with_models(cfg, require=models is None)  # the manifest pins the models actually used
    base = Path(prompts_path).parent

    def make_process():
        mods = models or load_models(cfg)

        def process(batch: list[Prompt]) -> list[BestOfNResult]:
            return best_of_n(mods, batch, [load_image(p, base, cfg.sample.max_image_pixels) for p in batch], cfg)

        return process

    return _run("best-of-n", Path(out), BestOfNResult, prompts, lambda p: p.prompt_id, make_process, lambda r: r.prompt_id,
                config=stage_config(cfg), seeds={"seed": cfg.sample.seed}, input_paths=[prompts_path],
                batch_size=cfg.sample.prompts_per_batch, on_error=cfg.on_error, rank=None, world=None,
                fingerprint=lambda p: prompt_fingerprint(p, base), resume=resume)  # question + image bytes: a changed prompt is noticed


def summarize(results: Sequence[BestOfNResult]) -> dict[str, Any]:
    """Counts and means of a finished run (what ``rlaifv best-of-n`` prints)."""
    n = len(results)
    words = lambda t: len(t.split())  # noqa: E731
    out: dict[str, Any] = {"prompts": n, "candidates per prompt": max((len(r.candidates) for r in results), default=0)}
    if not n:
        return out
    out["chosen = candidate 0"] = sum(r.chosen_index == 0 for r in results) / n
    out["mean chosen index"] = sum(r.chosen_index for r in results) / n
    out["chosen words"] = sum(words(r.chosen) for r in results) / n
    out["candidate words"] = sum(words(c["text"]) for r in results for c in r.candidates) / sum(len(r.candidates) for r in results)
    for name in results[0].candidates[0]["scores"]:
        out[f"chosen {name}"] = sum(r.scores(name)[r.chosen_index] for r in results) / n
    return out


def with_models(cfg: BestOfNConfig, require: bool = True) -> BestOfNConfig:
    """A sandbox run (``sandbox_prompts``, no ``prompts``) defaults to the shipped sandbox:policy /
    sandbox:labeler; any other run must name the policy, and the labeler if a scorer needs it
    (``require``; not when the caller brings loaded models)."""
    sample_cfg, judge = cfg.sample, cfg.conquer
    if cfg.sandbox_prompts > 0 and not cfg.prompts:
        sample_cfg = replace(sample_cfg, model=sample_cfg.model or "sandbox:policy")
        judge = replace(judge, model=judge.model or "sandbox:labeler")
    if require and not sample_cfg.model:
        raise ConfigError("best-of-n: give --policy (or sample.model in the config): the model that samples the N answers")
    if require and "labeler" in cfg.scorers and not judge.model:
        raise ConfigError("best-of-n: the labeler scorer needs --labeler (or conquer.model in the config)")
    return replace(cfg, sample=sample_cfg, conquer=judge)


def best_of_n_run(cfg: BestOfNConfig, resume: ResumeOptions | None = None) -> dict[str, Any]:
    """``rlaifv best-of-n``: prompts -> out/results (records) + out/summary.json; returns the summary."""
    cfg = with_models(cfg)
    out = Path(cfg.out)
    prompts, path = load_prompts(cfg)
    if "labeler" in cfg.scorers:
        check_conquer_inputs(cfg.conquer, prompts)  # a sandbox-only stand-in refuses real prompts
    run_best_of_n(cfg, prompts, path, out / "results", resume=resume)
    if rank_and_world()[0] != 0:
        return {}
    summary = summarize(list(read_records(out / "results", BestOfNResult)))
    summary["rejected"] = rejects_count(out / "results")  # see out/results/rejects.jsonl
    if "openai" in (cfg.backend, cfg.sample.backend, cfg.conquer.backend):  # every request in results/backend_requests.jsonl
        from ..backends.transport import log_counts

        counts = log_counts(out / "results")
        summary["backend requests"], summary["backend retries"] = counts["requests"], counts["retries"]
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / "summary.json")
    return summary

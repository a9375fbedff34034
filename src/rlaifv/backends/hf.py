"""``backend: hf``: the in-process Hugging Face code paths behind the :class:`~rlaifv.backends.base.Backend` protocol.

The stages keep calling their own functions for ``hf`` (``stages/sample.py::sample``,
``stages/conquer.py::score_direct``, ``models/answers.py::answer_logprobs``), so its numbers do
not change; this class exposes the same paths through the protocol, which is what other
backends are compared against (``tests/test_backend_serve.py``). Greedy decoding (temperature
0, not a setting of the method's sampling) is plain ``generate(do_sample=False)`` with the
template's stop tokens, one call per prompt.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .base import Capabilities, Decoding, Generation, YesNo


class HFBackend:
    """A loaded VLM + processor answering the three jobs in this process."""

    name = "hf"

    def __init__(self, model: Any, processor: Any, cfg: Any = None) -> None:
        self.model, self.processor, self.cfg = model, processor, cfg

    def capabilities(self) -> Capabilities:
        return Capabilities("hf", sample_n=True, seed=True, yes_no="full_vocab", answer_logprobs=True)

    def sample(self, images: Sequence[Any], questions: Sequence[str], seeds: Sequence[Sequence[int]],
               decodings: Sequence[Decoding]) -> list[list[Generation]]:
        """Seeded sampling exactly as ``stages/sample.py`` (one generator per candidate); greedy when
        every decoding has temperature 0."""
        if not decodings:
            return [[] for _ in images]
        if all(d.temperature == 0 for d in decodings):
            return [[g] * len(s) for g, s in zip(self._greedy(images, questions, decodings[0]), seeds)]
        if any(d.temperature == 0 for d in decodings) or len({(d.top_p, d.max_new_tokens) for d in decodings}) > 1:
            raise ValueError("hf backend: candidates of a prompt share top_p and max_new_tokens, and are all sampled or all greedy")
        from ..stages.sample import SampleConfig, _generate_each

        temps = tuple(d.temperature for d in decodings)
        cfg = SampleConfig(model="-", n=len(decodings), temperature=temps[0], top_p=decodings[0].top_p,
                           max_new_tokens=decodings[0].max_new_tokens, share_prefill=getattr(self.cfg, "share_prefill", True),
                           confounded_temperatures=temps if len(set(temps)) > 1 else ())
        out = _generate_each(self.model, self.processor, images, questions, seeds, cfg)
        return [[Generation(t, c) for t, c in zip(texts, cut)] for texts, cut in out]

    @torch.no_grad()
    def _greedy(self, images: Sequence[Any], questions: Sequence[str], d: Decoding) -> list[Generation]:
        from ..models.chat import collate
        from ..models.template import generation_stop_ids

        out = []
        tok = self.processor.tokenizer
        stops = generation_stop_ids(self.processor, self.model)
        for image, question in zip(images, questions):
            batch = {k: v.to(self.model.device) for k, v in collate(self.processor, [image], [question], padding_side="left").items()}
            gen = self.model.generate(**batch, do_sample=False, max_new_tokens=d.max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=stops)
            new = gen[0, batch["input_ids"].shape[1] :]
            stopped = bool(torch.isin(new, torch.tensor(stops, dtype=new.dtype, device=new.device)).any())
            out.append(Generation(tok.decode(new, skip_special_tokens=True).strip(), not stopped and len(new) >= d.max_new_tokens))
        return out

    def yes_no(self, image: Any, questions: Sequence[str]) -> list[YesNo]:
        """``stages/conquer.py``'s direct read-out (shared prefix, the configured yes/no ids)."""
        from ..stages.conquer import ConquerConfig, _score_image, labeler_yes_no_ids

        cfg = self.cfg if isinstance(self.cfg, ConquerConfig) else ConquerConfig(model="-")
        scores = _score_image(self.model, self.processor, image, list(questions), [], cfg, labeler_yes_no_ids(self.processor, cfg))
        return [YesNo(float(y), float(n)) for y, n in scores]

    def answer_logprobs(self, image: Any, question: str, answers: Sequence[str]) -> list[list[float]]:
        from ..models.answers import answer_logprobs

        return [x.tolist() for x in answer_logprobs(self.model, self.processor, image, question, answers)]

    def counts(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        return None

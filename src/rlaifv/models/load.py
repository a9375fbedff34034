"""Load any image-text-to-text model from a folder: ``AutoModelForImageTextToText`` + ``AutoProcessor``.

``sandbox:policy`` and ``sandbox:labeler`` name the sandbox checkpoints shipped with the
package (see ``rlaifv sandbox pretrain`` for the commands that rebuilt them).

Processors (``load_processor``): a folder whose ``processor_config.json`` (or, in older
layouts, ``preprocessor_config.json``) says ``"processor_class": "ImageOnlyQwen2VLProcessor"``
or ``"ImageOnlyQwen2_5_VLProcessor"`` was saved from one of our image-only subclasses
(``models.processors``; ``save_pretrained`` writes that key itself) and is loaded through
that subclass, since ``AutoProcessor`` cannot resolve it. Every other folder goes through
``AutoProcessor`` unchanged; only if that fails or returns something that is not a
multimodal processor (e.g. a real Qwen2-VL checkpoint without torchvision, whose video
processor cannot be built) and ``config.json``'s ``model_type`` is ``qwen2_vl`` /
``qwen2_5_vl``, the image-only subclass is used instead, with a warning.
"""

from __future__ import annotations

import json
import warnings
from importlib import resources
from pathlib import Path

import torch

SANDBOX_MODELS = ("policy", "labeler")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


class ModelLoadError(RuntimeError):
    """A model path does not hold a loadable checkpoint."""


def resolve_model_path(name: str | Path) -> Path:
    """``sandbox:<preset>`` -> the shipped checkpoint; otherwise the path itself (must exist)."""
    s = str(name)
    if s.startswith("sandbox:"):
        preset = s.split(":", 1)[1]
        if preset not in SANDBOX_MODELS:
            raise ModelLoadError(f"unknown sandbox model {s!r}; expected one of {[f'sandbox:{p}' for p in SANDBOX_MODELS]}")
        path = Path(str(resources.files("rlaifv") / "assets" / "sandbox" / preset))
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{s}: shipped checkpoint missing at {path}; rebuild it with `rlaifv sandbox pretrain --preset {preset} --out {path}`")
        return path
    path = Path(s)
    if not path.exists():
        raise ModelLoadError(f"model path {path} does not exist (rlaifv never downloads weights; give a local folder)")
    return path


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def processor_marker(path: Path) -> str | None:
    """The ``processor_class`` recorded in the folder's processor config files, if any."""
    for name in ("processor_config.json", "preprocessor_config.json"):
        marker = _read_json(path / name).get("processor_class")
        if isinstance(marker, str):
            return marker
    return None


def load_processor(path: str | Path):
    """The processor saved in ``path`` (see the module docstring for the image-only Qwen classes)."""
    from transformers import AutoProcessor
    from transformers.processing_utils import ProcessorMixin

    from .processors import IMAGE_ONLY_BY_MODEL_TYPE, processor_class_for

    path = Path(path)
    cls = processor_class_for(processor_marker(path))
    if cls is not None:
        return cls.from_pretrained(path)
    error: Exception | None = None
    try:
        processor = AutoProcessor.from_pretrained(path)
        if isinstance(processor, ProcessorMixin):
            return processor
        reason = f"AutoProcessor returned a {type(processor).__name__}, not a multimodal processor"
    except (OSError, ValueError, ImportError, TypeError) as e:
        error, reason = e, f"AutoProcessor failed: {e}"
    fallback = IMAGE_ONLY_BY_MODEL_TYPE.get(_read_json(path / "config.json").get("model_type"))
    if fallback is None:
        if error is not None:
            raise error
        raise ValueError(f"no multimodal processor in {path}: {reason}")
    warnings.warn(f"{path}: {reason}; loading the image-only {fallback.__name__} instead (no video inputs)", stacklevel=2)
    return fallback.from_pretrained(path)


def load_vlm(name: str | Path, device: str = "cpu", dtype: str = "float32"):
    """(model, processor) in eval mode on ``device`` with ``dtype`` (fp32 default; bf16 is a switch)."""
    from transformers import AutoModelForImageTextToText

    path = resolve_model_path(name)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=DTYPES[dtype])
        processor = load_processor(path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load a VLM from {path}: {e}") from e
    return model.to(device).eval(), processor

"""Load any image-text-to-text model from a folder: ``AutoModelForImageTextToText`` + ``AutoProcessor``.

``sandbox:policy`` and ``sandbox:labeler`` name the sandbox checkpoints shipped with the
package (see ``rlaifv sandbox pretrain`` for the commands that rebuilt them).
"""

from __future__ import annotations

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


def load_vlm(name: str | Path, device: str = "cpu", dtype: str = "float32"):
    """(model, processor) in eval mode on ``device`` with ``dtype`` (fp32 default; bf16 is a switch)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = resolve_model_path(name)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=DTYPES[dtype])
        processor = AutoProcessor.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load a VLM from {path}: {e}") from e
    return model.to(device).eval(), processor

"""Load any image-text-to-text model from a folder: ``AutoModelForImageTextToText`` + ``AutoProcessor``.

``sandbox:policy`` and ``sandbox:labeler`` name the sandbox checkpoints shipped with the
package (see ``rlaifv sandbox pretrain`` for the commands that rebuilt them).

Processors (``load_processor``): rlaifv saves its image-only processors (``models.processors``:
a processor without its video slot, since video processors need torchvision) under the REAL
class name, e.g. ``"processor_class": "Qwen2VLProcessor"``, so plain transformers and TRL
load them wherever torchvision exists. ``load_processor`` tries ``AutoProcessor`` first; if
that fails or returns something that is not a multimodal processor (e.g. no torchvision, so
the video processor cannot be built), it falls back, with a warning saying why, to the
image-only subclass of the recorded real class, or else of the real processor of
``config.json``'s ``model_type`` (any processor with a video slot: Qwen2-VL, Qwen2.5-VL,
Qwen3-VL, InternVL, GLM-4V, ...). A folder saved by an older rlaifv, whose marker is
``ImageOnlyQwen2VLProcessor`` / ``ImageOnlyQwen2_5_VLProcessor``, is loaded through that
subclass directly, since ``AutoProcessor`` cannot resolve the name.

PEFT adapters (``load_vlm`` on a folder holding ``adapter_config.json``, e.g. a LoRA adapter
saved by DPO training): the base model named by the adapter's ``base_model_name_or_path`` (a
local folder, a path relative to the adapter folder, or a ``sandbox:NAME`` name) is loaded and
wrapped in a ``peft.PeftModel``; only one model is in memory, and the base is available with
the adapter switched off (``with model.disable_adapter():``), which is what best-of-N uses as
the DPO reference. The processor comes from the adapter folder if it holds processor files,
else from the base.
"""

from __future__ import annotations

import json
import warnings
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError

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
    """The processor saved in ``path`` (see the module docstring for the image-only fallback)."""
    from transformers import AutoProcessor
    from transformers.processing_utils import ProcessorMixin

    from .processors import image_only_class, image_only_for_model_type, processor_class_for, ungated_processor_class

    path = Path(path)
    marker = processor_marker(path)
    cls = processor_class_for(marker)
    if cls is not None:  # an rlaifv-only name (older rlaifv): AutoProcessor cannot resolve it
        return cls.from_pretrained(path)
    error: Exception | None = None
    try:
        processor = AutoProcessor.from_pretrained(path)
        if isinstance(processor, ProcessorMixin):
            return processor
        reason = f"AutoProcessor returned a {type(processor).__name__}, not a multimodal processor"
    except (OSError, ValueError, ImportError, TypeError, AttributeError) as e:
        error, reason = e, f"AutoProcessor failed: {type(e).__name__}: {' '.join(str(e).split())}"
    fallback = (image_only_class(marker) or ungated_processor_class(marker)) if marker else None
    if fallback is None:
        fallback = image_only_for_model_type(_read_json(path / "config.json").get("model_type"))
    if fallback is None:
        if error is not None:
            raise error
        raise ValueError(f"no multimodal processor in {path}: {reason}")
    why = "; video processors need torchvision, which is not installed" if not _torchvision_available() else ""
    if fallback.__name__ == marker:  # the real class, loaded past transformers' torchvision gate
        warnings.warn(f"{path}: {reason}; loading {marker} from its source instead (its code needs no torchvision)", stacklevel=2)
    else:
        warnings.warn(f"{path}: {reason}; loading the image-only {fallback.__name__} instead "
                      f"(images only, no video inputs{why})", stacklevel=2)
    return fallback.from_pretrained(path)


def _torchvision_available() -> bool:
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


ADAPTER_CONFIG = "adapter_config.json"
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def is_adapter(path: str | Path) -> bool:
    """True for a PEFT adapter folder (it holds ``adapter_config.json``)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path) -> Path:
    """The base model folder a PEFT adapter was trained on (``base_model_name_or_path``).

    Accepts a ``sandbox:NAME`` name, an existing path, or a path relative to the adapter
    folder; never downloads. Raises ``ModelLoadError`` naming the adapter otherwise.
    """
    path = Path(path)
    base = _read_json(path / ADAPTER_CONFIG).get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise ModelLoadError(f"{path / ADAPTER_CONFIG}: no base_model_name_or_path; cannot tell which model the adapter belongs to")
    if base.startswith("sandbox:"):
        return resolve_model_path(base)
    found = Path(base)
    if not found.exists() and not found.is_absolute() and (path / base).exists():
        found = path / base
    if not found.exists():
        raise ModelLoadError(f"{path}: base model {base!r} (adapter_config.json) is not a local folder "
                             "(rlaifv never downloads weights; edit base_model_name_or_path to the base folder or sandbox:NAME)")
    if is_adapter(found):
        raise ModelLoadError(f"{path}: its base {found} is itself an adapter; merge it into a full checkpoint first")
    return found


def _has_processor(path: Path) -> bool:
    return any((path / name).is_file() for name in _PROCESSOR_FILES)


def _load_adapter(path: Path, dtype: torch.dtype):
    """(PeftModel over the base model, processor) for an adapter folder (see the module docstring)."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = adapter_base(path)
    try:
        model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype)
        model = PeftModel.from_pretrained(model, path)
        processor = load_processor(path if _has_processor(path) else base)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise ModelLoadError(f"cannot load the adapter {path} over {base}: {e}") from e
    return model, processor


def load_vlm(name: str | Path, device: str = "cpu", dtype: str = "float32"):
    """(model, processor) in eval mode on ``device`` with ``dtype`` (fp32 default; bf16 is a switch).

    A PEFT adapter folder gives a ``peft.PeftModel`` over its base (module docstring).
    """
    from transformers import AutoModelForImageTextToText

    path = resolve_model_path(name)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    if is_adapter(path):
        model, processor = _load_adapter(path, DTYPES[dtype])
        return model.to(device).eval(), processor
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=DTYPES[dtype])
        processor = load_processor(path)
    except SafetensorError as e:  # a truncated / corrupt weights file: say which one
        raise ModelLoadError(f"cannot load a VLM from {path}: {_weight_files(path)} is corrupt or truncated ({e})") from e
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load a VLM from {path}: {e}") from e
    return model.to(device).eval(), processor


def _weight_files(path: Path) -> str:
    """The folder's weight files by name (what a truncated download or copy leaves broken)."""
    names = sorted(p.name for p in Path(path).glob("*.safetensors"))
    return ", ".join(names) if names else "a weights file"


def unwrap_peft(model):
    """(the transformers model, the PeftModel around it or None).

    LoRA layers live inside the transformers model, so calling it runs the adapter; the
    PeftModel is needed only to switch the adapter off (``disable_adapter()``).
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.get_base_model(), model
    return model, None

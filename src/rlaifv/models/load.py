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

Loading options (``models.options.LoadOptions``: device, dtype, device_map, max_memory,
attn_implementation, 4/8-bit, trust_remote_code) go to ``from_pretrained`` for the model, the
adapter's base and the processor alike.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from .options import DTYPE_NAMES, LoadOptions

#: the shipped sandbox checkpoints: the pre-trained pair, and the ``*-direct`` fine-tunes whose
#: first answer token answers claim questions (``rlaifv sandbox finetune-labeler --preset NAME``)
SANDBOX_MODELS = ("policy", "labeler", "policy-direct", "labeler-direct")
#: dtype name -> torch dtype (the names are ``models.options.DTYPE_NAMES``; "auto" is left to transformers)
DTYPES = {k: getattr(torch, v) for k, v in DTYPE_NAMES.items() if v != "auto"}


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
            how = f"finetune-labeler --preset {preset}" if preset.endswith("-direct") else f"pretrain --preset {preset}"
            raise ModelLoadError(f"{s}: shipped checkpoint missing at {path}; rebuild it with `rlaifv sandbox {how} --out {path}`")
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


def load_processor(path: str | Path, trust_remote_code: bool = False):
    """The processor saved in ``path`` (see the module docstring for the image-only fallback);
    ``trust_remote_code`` lets a folder's own processor code run (``--trust-remote-code``)."""
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
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
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


#: written beside adapter_config.json when rlaifv saves an adapter: where its base model is, in forms that survive a move
ADAPTER_BASE_RECORD = "rlaifv_adapter.json"


def record_adapter_base(folder: str | Path, base: str) -> dict:
    """Make a saved adapter's base reference portable; returns the record.

    ``base`` is the model the adapter was trained on, as the user named it (a folder, or
    ``sandbox:NAME``). PEFT stores ``base_model_name_or_path`` as given, so a relative path
    only worked from the working directory of the training run. Now ``adapter_config.json``
    holds the absolute path (plain PEFT loads it on this machine), and ``rlaifv_adapter.json``
    holds the name, the absolute path and the path relative to the adapter folder: a run folder
    moved together with its base model, or copied to another machine in the same layout, still
    finds it (``adapter_base``). ``sandbox:NAME`` stays a name (the package's own copy anywhere).
    """
    import os

    folder = Path(folder)
    absolute = resolve_model_path(base).resolve() if base.startswith("sandbox:") else Path(base).expanduser().resolve()
    record = {"base_model": base, "absolute": str(absolute),
              "relative_to_adapter": Path(os.path.relpath(absolute, folder.resolve())).as_posix()}
    config = _read_json(folder / ADAPTER_CONFIG)
    if config:
        config["base_model_name_or_path"] = str(absolute)
        (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / ADAPTER_BASE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _recorded_base(path: Path, record: dict) -> Path:
    """The base of an adapter saved with ``record_adapter_base``: its sandbox name, else the
    absolute path, else the path relative to the adapter folder; an error naming both otherwise."""
    name = record.get("base_model")
    if isinstance(name, str) and name.startswith("sandbox:"):
        return resolve_model_path(name)
    absolute, relative = record.get("absolute"), record.get("relative_to_adapter")
    candidates = [Path(absolute)] if isinstance(absolute, str) and absolute else []
    candidates += [path / relative] if isinstance(relative, str) and relative else []
    for found in candidates:
        if found.is_dir():
            return found
    raise ModelLoadError(f"{path}: its base model {name!r} is at neither {absolute} (where it was when the adapter was saved) "
                         f"nor {path / str(relative)} (the same place relative to the adapter folder); put the base model "
                         f"at one of them, or edit {path / ADAPTER_BASE_RECORD}")


def adapter_base(path: str | Path) -> Path:
    """The base model folder a PEFT adapter was trained on.

    An adapter rlaifv saved carries ``rlaifv_adapter.json`` (``record_adapter_base``). Others
    are read from ``base_model_name_or_path``: a ``sandbox:NAME`` name, an existing path, or a
    path relative to the adapter folder. Never downloads; ``ModelLoadError`` naming the adapter
    otherwise.
    """
    path = Path(path)
    record = _read_json(path / ADAPTER_BASE_RECORD)
    if record:
        found = _recorded_base(path, record)
    else:
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


def _load_adapter(path: Path, opts: LoadOptions):
    """(PeftModel over the base model, processor) for an adapter folder (see the module docstring)."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = adapter_base(path)
    try:
        model = AutoModelForImageTextToText.from_pretrained(base, **opts.pretrained_kwargs())
        model = PeftModel.from_pretrained(model, path)
        processor = load_processor(path if _has_processor(path) else base, opts.trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError, SafetensorError) as e:
        raise ModelLoadError(f"cannot load the adapter {path} over {base}: {_load_error(e)}") from e
    return model, processor


def load_vlm(name: str | Path, device: str = "cpu", dtype: str = "float32", options: Any = None):
    """(model, processor) in eval mode on ``device`` with ``dtype`` (fp32 default; bf16 is a switch).

    ``options``: every loading option (``models.options.LoadOptions``, or a stage config that
    inherits it, e.g. ``SampleConfig``); when given, ``device`` and ``dtype`` come from it.
    ``device_map`` / quantized weights: ``from_pretrained`` places the model and it is not
    moved (read its input device from ``model.device``). ``device: cuda`` under a multi-process
    launch means this process's GPU (``cuda:$LOCAL_RANK``). A PEFT adapter folder gives a
    ``peft.PeftModel`` over its base (module docstring).
    """
    from transformers import AutoModelForImageTextToText

    from ..runner import local_device

    opts = LoadOptions.of(options) if options is not None else LoadOptions(device=device, dtype=dtype)
    if opts.device_map is None and local_device(opts.device) != opts.device:  # quantized: {"": device}
        opts = dataclasses.replace(opts, device=local_device(opts.device))
    path = resolve_model_path(name)
    if is_adapter(path):
        model, processor = _load_adapter(path, opts)
        return _place(model, opts), processor
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, **opts.pretrained_kwargs())
        processor = load_processor(path, opts.trust_remote_code)
    except SafetensorError as e:  # a truncated / corrupt weights file: say which one
        raise ModelLoadError(f"cannot load a VLM from {path}: {_weight_files(path)} is corrupt or truncated ({e})") from e
    except (OSError, ValueError, ImportError) as e:
        raise ModelLoadError(f"cannot load a VLM from {path}: {_load_error(e)}") from e
    return _place(model, opts), processor


def _place(model, opts: LoadOptions):
    """The model in eval mode, moved to ``opts.device`` unless ``from_pretrained`` placed it."""
    return (model if opts.placed_by_map else model.to(opts.device)).eval()


def _load_error(e: BaseException) -> str:
    """The loader's message, with the flag to use when the folder needs its own code to run."""
    msg = " ".join(str(e).split())
    if "trust_remote_code" in msg:
        return ("the folder holds custom model code (auto_map in config.json) that runs when it loads; pass "
                f"--trust-remote-code (trust_remote_code: true) if you trust it ({msg[:200]})")
    return msg


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

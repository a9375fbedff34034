"""How a model is loaded: one block of options shared by every stage that loads a model.

``LoadOptions`` is defined once and reaches users three ways:

* **stage configs** (``SampleConfig``, ``ConquerConfig``, ``DPOConfig``, ``LLMConfig``) inherit
  it, so each model-loading YAML section takes these keys flat, next to ``model``
  (``device: cuda``, ``device_map: auto``, ``max_memory: "0=20GiB,1=20GiB"``, ...); the old
  ``device`` / ``dtype`` keys are the same fields as before;
* **flags**: ``rlaifv.cli_options`` turns the same fields into ``--device``, ``--dtype``,
  ``--device-map``, ``--max-memory``, ``--attn-implementation``, ``--load-in-4bit``,
  ``--load-in-8bit`` and ``--trust-remote-code`` on every command that loads a model;
* **loaders**: ``models.load.load_vlm`` and the chat LLM of ``stages/llm.py`` pass them to
  ``from_pretrained`` (``pretrained_kwargs``).

Checked when built, before any work: an unknown dtype or device string, ``device: cuda`` on a
torch without CUDA, 4/8-bit loading without bitsandbytes, ``flash_attention_2`` without
flash-attn, ``max_memory`` without ``device_map`` and ``device_map`` together with a device
other than the default ``cpu`` are one-line ``ConfigError``\\ s naming the flag.

Placement rule: ``device`` moves the whole model to one device (``model.to(device)``);
``device_map`` lets accelerate place it (``auto`` spreads a large model over the GPUs, capped per
device by ``max_memory``) and the model is never moved afterwards; inputs go to the device of
its first layer. Give one of the two. ``device: cuda`` means this process's GPU
(``cuda:$LOCAL_RANK``) under a multi-process launch; ``device_map`` is for one process that
holds the whole model (model parallel), not for ``accelerate launch`` data parallelism (a map
that spreads the model is refused under a multi-process launch).

This module does not import torch at import time (``rlaifv --help`` stays fast).
"""

from __future__ import annotations

import contextvars
import dataclasses
import importlib.util
import re
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError

#: accepted dtype names -> the torch attribute ("auto": the checkpoint's own dtype)
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float16": "float16", "fp16": "float16", "auto": "auto"}
#: accelerate's placement strategies (``device_map`` values that are not one device)
MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_DEVICE = re.compile(r"^((cpu|mps)(:0)?|(cuda|xpu|npu|hpu)(:\d+)?)$")  # "cpu:0": what accelerate names a CPU process
_SIZE = re.compile(r"^\d+(\.\d+)?\s*([KMGT]i?B)?$", re.IGNORECASE)
_MEMORY_KEY = re.compile(r"^(\d+|cpu|disk|mps|(cuda|xpu|npu):\d+)$")

#: the flag prefix error messages name (``labeler-`` while ``cli_options`` checks the labeler flags)
_FLAG_PREFIX: contextvars.ContextVar[str] = contextvars.ContextVar("rlaifv_load_flag_prefix", default="")


@dataclass(kw_only=True)
class LoadOptions:
    """Where and how a model is loaded (module docstring). Every field is a flag of the same name."""

    device: str = field(default="cpu", metadata={"help": "cpu | cuda | cuda:N | mps: the device the whole model is moved to "
                                                         "(leave it at cpu with --device-map)."})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16 | auto (the checkpoint's own dtype)."})
    device_map: str | dict | None = field(default=None, metadata={
        "help": "Let accelerate place the model: auto | balanced | balanced_low_0 | sequential, or one device "
                "(e.g. cuda:1); a YAML mapping module -> device also works. The model is never moved afterwards."})
    max_memory: str | dict | None = field(default=None, metadata={
        "help": "With --device-map: memory cap per device, e.g. 0=20GiB,1=20GiB,cpu=64GiB (GPU index, cpu or disk = size)."})
    attn_implementation: str | None = field(default=None, metadata={
        "help": "eager | sdpa | flash_attention_2 | ... (default: transformers' choice for the model)."})
    load_in_4bit: bool = field(default=False, metadata={"help": "4-bit weights via bitsandbytes (pip install bitsandbytes); train: LoRA only."})
    load_in_8bit: bool = field(default=False, metadata={"help": "8-bit weights via bitsandbytes (pip install bitsandbytes); train: LoRA only."})
    trust_remote_code: bool = field(default=False, metadata={
        "help": "Run Python code shipped in the model folder (config.json auto_map); off by default: only for folders you trust."})

    def __post_init__(self) -> None:
        check_load_options(self, _FLAG_PREFIX.get())

    # ------------------------------------------------------------------ building

    @classmethod
    def of(cls, cfg: Any) -> "LoadOptions":
        """The loading options of ``cfg`` (a stage config inheriting ``LoadOptions``, or one itself)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(LoadOptions)})

    @classmethod
    def build(cls, values: dict[str, Any], flag_prefix: str = "") -> "LoadOptions":
        """``LoadOptions(**values)`` whose errors name ``--{flag_prefix}NAME`` (e.g. ``--labeler-device``)."""
        token = _FLAG_PREFIX.set(flag_prefix)
        try:
            return cls(**values)
        finally:
            _FLAG_PREFIX.reset(token)

    # ------------------------------------------------------------------ reading

    @property
    def quantized(self) -> bool:
        return bool(self.load_in_4bit or self.load_in_8bit)

    @property
    def placed_by_map(self) -> bool:
        """True when ``from_pretrained`` places the model (device_map, or quantized weights, which
        cannot be moved after loading); False when the model is moved with ``.to(device)``."""
        return self.device_map is not None or self.quantized

    def resolved_device_map(self) -> str | dict | None:
        """The ``device_map`` for ``from_pretrained``: a strategy name, or ``{"": device}`` for one
        device, or the mapping given; None when the model is moved with ``.to(device)``."""
        dm = self.device_map
        if isinstance(dm, str) and dm not in MAP_STRATEGIES:
            return {"": dm}
        if dm is None and self.quantized:
            return {"": self.device}
        return dm

    def max_memory_dict(self) -> dict[int | str, str | int] | None:
        """``"0=20GiB,cpu=64GiB"`` (or a YAML mapping) -> ``{0: "20GiB", "cpu": "64GiB"}``."""
        return parse_max_memory(self.max_memory) if self.max_memory is not None else None

    def torch_dtype(self):
        """The torch dtype (or ``"auto"``) for ``from_pretrained``."""
        import torch

        name = DTYPE_NAMES[self.dtype]
        return name if name == "auto" else getattr(torch, name)

    def pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``from_pretrained`` for these options.

        ``trust_remote_code`` is always passed (False by default): left unset, transformers may
        stop and ask on the terminal before running a folder's code.
        """
        kw: dict[str, Any] = {"dtype": self.torch_dtype(), "trust_remote_code": bool(self.trust_remote_code)}
        if self.attn_implementation:
            kw["attn_implementation"] = self.attn_implementation
        if self.quantized:
            from transformers import BitsAndBytesConfig

            compute = {"bnb_4bit_compute_dtype": kw["dtype"]} if self.load_in_4bit and kw["dtype"] != "auto" else {}
            kw["quantization_config"] = BitsAndBytesConfig(load_in_4bit=self.load_in_4bit, load_in_8bit=self.load_in_8bit, **compute)
        device_map = self.resolved_device_map()
        if device_map is not None:
            _check_one_process(self.device_map)
            kw["device_map"] = device_map
        if self.max_memory is not None:
            kw["max_memory"] = self.max_memory_dict()
        return kw


def _flag(name: str, prefix: str) -> str:
    return f"--{prefix}{name.replace('_', '-')}"


def check_load_options(opts: LoadOptions, prefix: str = "") -> None:
    """ConfigError (one line, naming the flag) for options no model can be loaded with here."""
    if opts.dtype not in DTYPE_NAMES:
        raise ConfigError(f"{_flag('dtype', prefix)}: unknown dtype {opts.dtype!r}; expected one of {', '.join(DTYPE_NAMES)}")
    if not isinstance(opts.device, str) or not _DEVICE.match(opts.device):
        raise ConfigError(f"{_flag('device', prefix)} {opts.device!r}: not a device; expected cpu, cuda, cuda:N or mps")
    if opts.load_in_4bit and opts.load_in_8bit:
        raise ConfigError(f"{_flag('load_in_4bit', prefix)} and {_flag('load_in_8bit', prefix)}: give one of them")
    if opts.device_map is not None and opts.device != "cpu":
        raise ConfigError(f"{_flag('device_map', prefix)} {_show(opts.device_map)} with {_flag('device', prefix)} {opts.device}: "
                          f"the device map places the model itself, so give one of them (with a device map, leave "
                          f"{_flag('device', prefix)} at cpu, its default)")
    _check_device(opts.device, _flag("device", prefix))
    if opts.device_map is not None:
        _check_device_map(opts.device_map, _flag("device_map", prefix))
    if opts.max_memory is not None:
        if opts.device_map is None:
            raise ConfigError(f"{_flag('max_memory', prefix)} {_show(opts.max_memory)} needs {_flag('device_map', prefix)} "
                              f"(it caps what the device map puts on each device), e.g. {_flag('device_map', prefix)} auto")
        try:
            memory = parse_max_memory(opts.max_memory)
        except ValueError as e:
            raise ConfigError(f"{_flag('max_memory', prefix)} {_show(opts.max_memory)}: {e}") from e
        gpus = [key for key in memory if isinstance(key, int)]
        if gpus:
            import torch

            visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if max(gpus) >= visible:
                raise ConfigError(f"{_flag('max_memory', prefix)} {_show(opts.max_memory)}: names GPU {max(gpus)}, but this torch "
                                  f"({torch.__version__}) sees {visible} CUDA GPU(s); name only cpu (and disk) here, or run on the GPU machine")
    if opts.attn_implementation is not None:
        _check_attention(opts.attn_implementation, _flag("attn_implementation", prefix))
    if opts.quantized and importlib.util.find_spec("bitsandbytes") is None:
        which = _flag("load_in_4bit" if opts.load_in_4bit else "load_in_8bit", prefix)
        raise ConfigError(f"{which}: bitsandbytes is not installed; pip install bitsandbytes (or drop {which})")
    if not isinstance(opts.trust_remote_code, bool):
        raise ConfigError(f"{_flag('trust_remote_code', prefix)}: expected true or false, got {opts.trust_remote_code!r}")


def _show(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def _check_one_process(device_map: Any) -> None:
    """A device map that spreads the model over devices needs one process holding it: under a
    multi-process launch every process would spread its own copy over the same GPUs."""
    from ..runner import rank_and_world

    world = rank_and_world()[1]
    spreads = device_map in MAP_STRATEGIES or (isinstance(device_map, dict) and len(set(device_map.values())) > 1)
    if world > 1 and spreads:
        raise ConfigError(f"--device-map {_show(device_map)} under a launch of {world} processes: each process would spread its own "
                          "copy over all visible GPUs; use --device cuda (one GPU per process), or run one process for the device map")


def _check_device(device: Any, flag: str) -> None:
    """A device string torch knows, whose hardware this machine (and this torch build) has."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ConfigError(f"{flag} {device!r}: not a device; expected cpu, cuda, cuda:N or mps")
    kind, _, index = device.partition(":")
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"{flag} {device}: this torch ({torch.__version__}) sees no CUDA GPU (torch.cuda.is_available() "
                              f"is False); use {flag} cpu, or install a CUDA build of torch on a machine with a GPU")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"{flag} {device}: only {torch.cuda.device_count()} CUDA GPU(s) are visible (cuda:0..)")
    elif kind == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ConfigError(f"{flag} mps: the MPS backend is not available on this machine; use {flag} cpu")


def _check_device_map(device_map: Any, flag: str) -> None:
    if isinstance(device_map, str):
        if device_map not in MAP_STRATEGIES:
            if not _DEVICE.match(device_map):
                raise ConfigError(f"{flag} {device_map!r}: expected one of {', '.join(MAP_STRATEGIES)} or a device (cpu, cuda:N)")
            _check_device(device_map, flag)
        return
    if not isinstance(device_map, dict) or not device_map:
        raise ConfigError(f"{flag}: expected a strategy name, a device, or a non-empty mapping module -> device, got {device_map!r}")
    for module, dev in device_map.items():
        if not isinstance(module, str) or not isinstance(dev, (str, int)) or isinstance(dev, bool):
            raise ConfigError(f"{flag}: entry {module!r}: {dev!r} is not module name -> device")
        if isinstance(dev, str) and dev != "disk":
            _check_device(dev, flag)


def _check_attention(name: Any, flag: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{flag}: expected an attention implementation name (eager, sdpa, flash_attention_2, ...), got {name!r}")
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError(f"{flag} {name}: flash-attn is not installed; pip install flash-attn (needs a CUDA GPU), or use sdpa")


def parse_max_memory(value: str | dict) -> dict[int | str, str | int]:
    """``"0=20GiB,1=20GiB,cpu=64GiB"`` or ``{0: "20GiB", "cpu": "64GiB"}`` -> accelerate's
    ``max_memory`` mapping (GPU indices as ints). ValueError saying what is wrong otherwise."""
    expected = "expected DEVICE=SIZE pairs separated by commas, e.g. 0=20GiB,1=20GiB,cpu=64GiB (DEVICE: a GPU index, cpu or disk)"
    if isinstance(value, str):
        items = []
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            key, eq, size = part.partition("=")
            if not eq:
                raise ValueError(f"{part!r} has no '='; {expected}")
            items.append((key.strip(), size.strip()))
    elif isinstance(value, dict):
        items = [(str(k).strip(), v.strip() if isinstance(v, str) else v) for k, v in value.items()]
    else:
        raise ValueError(expected)
    if not items:
        raise ValueError(f"empty; {expected}")
    out: dict[int | str, str | int] = {}
    for key, size in items:
        if not _MEMORY_KEY.match(key):
            raise ValueError(f"unknown device {key!r}; {expected}")
        if isinstance(size, bool) or not (isinstance(size, int) or (isinstance(size, str) and _SIZE.match(size))):
            raise ValueError(f"size {size!r} of {key!r} is not bytes or a number with KB/MB/GB/KiB/MiB/GiB")
        if key.startswith("cuda:"):
            key = key.split(":", 1)[1]
        out[int(key) if key.isdigit() else key] = int(size) if isinstance(size, str) and size.isdigit() else size
    return out

"""Image-only processors: a transformers processor without its video slot (no torchvision needed).

Processors such as ``Qwen2VLProcessor``, ``Qwen2_5_VLProcessor``, ``Qwen3VLProcessor``,
``InternVLProcessor`` or ``Glm4vProcessor`` build a video processor, and every video
processor needs torchvision, which has no build matching the CPU torch used here. The
image-only subclass of such a processor (:func:`image_only_class`) takes the same arguments
minus ``video_processor``: ``ProcessorMixin`` reads its sub-processor slots from the
``__init__`` signature, so the video slot disappears, and images (image-token expansion,
``image_grid_thw``, ``mm_token_type_ids``, ...) work as in the parent class.
``ImageOnlyQwen2VLProcessor`` and ``ImageOnlyQwen2_5_VLProcessor`` are the two named ones
older rlaifv versions defined; every other one is made on demand and named
``ImageOnly<RealClass>`` (also a module attribute, so instances pickle).

Saving: the folder names the REAL class. ``processor_config.json`` (and the tokenizer's
``tokenizer_config.json``) say ``"processor_class": "Qwen2VLProcessor"`` (etc.), and
``processor_config.json`` gets a minimal ``"video_processor"`` block (its
``video_processor_type`` plus the patch settings shared with the image processor), so plain
``AutoProcessor`` / TRL load the real class wherever torchvision exists. Here,
``models.load.load_processor`` tries ``AutoProcessor`` first and, when it fails for lack of
torchvision, falls back to the image-only subclass of the recorded real class (or of the
``config.json`` model type), with a warning. Folders saved by older rlaifv versions, whose
marker is ``ImageOnlyQwen2VLProcessor`` / ``ImageOnlyQwen2_5_VLProcessor``, still load:
:func:`processor_class_for` resolves those names.
"""

from __future__ import annotations

import inspect
import re
import sys
from importlib import util as importlib_util
from pathlib import Path

from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor

#: Real processor class -> its video processor class (the name AutoVideoProcessor resolves).
#: Used for the ``video_processor`` block written next to an image-only processor; classes not
#: listed here are looked up in transformers' sources (see :func:`video_processor_type`).
VIDEO_PROCESSOR_TYPES = {
    "Qwen2VLProcessor": "Qwen2VLVideoProcessor",
    "Qwen2_5_VLProcessor": "Qwen2VLVideoProcessor",
    "Qwen3VLProcessor": "Qwen3VLVideoProcessor",
    "InternVLProcessor": "InternVLVideoProcessor",
    "Glm4vProcessor": "Glm4vVideoProcessor",
}
#: Image-processor settings a video processor of the same family shares (copied when present).
_SHARED_VIDEO_KEYS = ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std", "do_rescale", "rescale_factor", "do_normalize", "do_convert_rgb")


def needs_video_processor(cls) -> bool:
    """True if the processor class has a ``video_processor`` slot (so building it needs torchvision)."""
    return "video_processor" in inspect.signature(cls.__init__).parameters


def video_processor_type(real_name: str) -> str | None:
    """The video processor class name of a transformers processor class, without importing it.

    (Without torchvision, transformers blanks the names in its video-processor mapping, so they
    come from :data:`VIDEO_PROCESSOR_TYPES` or from the model's ``video_processing_*.py`` source.)
    """
    if real_name in VIDEO_PROCESSOR_TYPES:
        return VIDEO_PROCESSOR_TYPES[real_name]
    import transformers

    module = getattr(getattr(transformers, real_name, None), "__module__", "") or ""
    spec = importlib_util.find_spec(module) if module else None
    if spec is None or not spec.origin:
        return None
    source = Path(spec.origin).with_name(Path(spec.origin).name.replace("processing_", "video_processing_", 1))
    if not source.exists():
        return None
    found = re.findall(r"^class (\w+VideoProcessor)\(", source.read_text(), flags=re.M)
    return found[0] if found else None


class ImageOnlyProcessorMixin:
    """Shared by every image-only processor: save under the real class's name (module docstring)."""

    #: The transformers class this one stands in for, e.g. "Qwen2VLProcessor".
    real_class_name: str = ""

    def to_dict(self):
        output = super().to_dict()
        output["processor_class"] = self.real_class_name
        video = self._video_processor_block(output.get("image_processor"))
        if video is not None and "video_processor" not in output:
            output["video_processor"] = video
        return output

    def _video_processor_block(self, image_dict) -> dict | None:
        """A minimal video-processor config: the class name plus the settings shared with images."""
        name = video_processor_type(self.real_class_name)
        if name is None:
            return None
        block = {"video_processor_type": name}
        if isinstance(image_dict, dict):
            block.update({k: image_dict[k] for k in _SHARED_VIDEO_KEYS if k in image_dict})
        return block

    def save_pretrained(self, save_directory, *args, **kwargs):
        # ProcessorMixin.save_pretrained tells each tokenizer its processor class (written into
        # tokenizer_config.json) as ``type(self).__name__``; keep the real name there too.
        tokenizers = [getattr(self, a) for a in type(self).get_attributes() if "tokenizer" in a and getattr(self, a, None) is not None]
        real = self.real_class_name
        for tok in tokenizers:
            tok._processor_class = real
            tok.__dict__["_set_processor_class"] = lambda _name: None
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            for tok in tokenizers:
                tok.__dict__.pop("_set_processor_class", None)


class ImageOnlyQwen2VLProcessor(ImageOnlyProcessorMixin, Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without the video slot (image processor + tokenizer + chat template)."""

    real_class_name = "Qwen2VLProcessor"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(ImageOnlyProcessorMixin, Qwen2_5_VLProcessor):  # noqa: N801 (mirrors the transformers name)
    """``Qwen2_5_VLProcessor`` without the video slot (image processor + tokenizer + chat template)."""

    real_class_name = "Qwen2_5_VLProcessor"

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)


def _init_without_video(real):
    """An ``__init__`` with ``real.__init__``'s parameters minus ``video_processor``, calling it.

    Written out as source (not ``*args, **kwargs``): ``ProcessorMixin.from_args_and_dict``
    reads the accepted names from ``__init__.__code__.co_varnames``.
    """
    sig = inspect.signature(real.__init__)
    defaults: dict = {}
    params, call = [], []
    for i, (name, p) in enumerate(sig.parameters.items()):
        if name == "video_processor":
            if p.default is inspect.Parameter.empty:  # a required slot (SmolVLM): pass None explicitly
                call.append("video_processor=None")
            continue
        if i == 0:
            params.append(name)
        elif p.kind is inspect.Parameter.VAR_POSITIONAL:
            params.append(f"*{name}")
            call.append(f"*{name}")
        elif p.kind is inspect.Parameter.VAR_KEYWORD:
            params.append(f"**{name}")
            call.append(f"**{name}")
        else:
            if p.default is inspect.Parameter.empty:
                params.append(name)
            else:
                defaults[name] = p.default
                params.append(f"{name}=_defaults[{name!r}]")
            call.append(f"{name}={name}")
    source = f"def __init__({', '.join(params)}):\n    _real.__init__({', '.join([next(iter(sig.parameters))] + call)})\n"
    namespace = {"_defaults": defaults, "_real": real}
    exec(compile(source, f"<image-only {real.__name__}.__init__>", "exec"), namespace)  # noqa: S102 (names come from inspect)
    return namespace["__init__"]


class NoVideoProcessor:
    """The class-level stand-in for the missing video processor: some processors read its frame
    count and fps even for image-only chats (``SmolVLMProcessor.apply_chat_template``)."""

    num_frames = None
    fps = None


#: Real class name -> its image-only subclass (filled on demand by image_only_class).
_BY_REAL: dict[str, type] = {c.real_class_name: c for c in (ImageOnlyQwen2VLProcessor, ImageOnlyQwen2_5_VLProcessor)}


def image_only_class(real):
    """The image-only subclass of a processor class (or its name) that has a video slot.

    The subclass's ``__init__`` has the real signature minus ``video_processor`` (the real
    ``__init__`` then runs with ``video_processor=None``). Returns None when ``real`` is not a
    transformers processor class or has no video slot.
    """
    import transformers
    from transformers.processing_utils import ProcessorMixin

    if isinstance(real, str):
        if real in _BY_REAL:
            return _BY_REAL[real]
        try:
            real = getattr(transformers, real)
        except (AttributeError, ImportError):
            return None
    if not (isinstance(real, type) and issubclass(real, ProcessorMixin)) or not needs_video_processor(real):
        return None
    if real.__name__ in _BY_REAL:
        return _BY_REAL[real.__name__]
    __init__ = _init_without_video(real)
    name = f"ImageOnly{real.__name__}"
    cls = type(name, (ImageOnlyProcessorMixin, real), {
        "__init__": __init__,
        "video_processor": NoVideoProcessor(),
        "real_class_name": real.__name__,
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": f"``{real.__name__}`` without the video slot (no torchvision needed; see ``rlaifv.models.processors``).",
    })
    setattr(sys.modules[__name__], name, cls)
    _BY_REAL[real.__name__] = cls
    return cls


#: Processors transformers gates behind torchvision although their code does not use it
#: (class name -> module): loaded from their source by :func:`ungated_processor_class`.
UNGATED_MODULES = {"PixtralProcessor": "transformers.models.pixtral.processing_pixtral"}
#: Source lines swapped when loading them: the torchvision image-processor module only supplies a
#: helper that the PIL image-processor module defines identically.
_UNGATED_IMPORTS = {"from .image_processing_pixtral import get_resize_output_image_size":
                    "from .image_processing_pil_pixtral import get_resize_output_image_size"}
_UNGATED: dict[str, type] = {}


def ungated_processor_class(name: str):
    """The real processor class ``name`` even when transformers gates it behind torchvision, or None.

    ``PixtralProcessor`` (Mistral3, Pixtral) is declared ``@requires(backends=("torchvision",
    "torch"))`` but its code needs neither torchvision nor a video processor; without
    torchvision transformers hands out a placeholder that raises on use. This loads the same
    source file as a sibling module (``<module>_ungated``), with its one torchvision-module import
    pointed at the identical helper of the PIL image processor, so the class is the real one,
    with the real name (which is what ``save_pretrained`` writes).
    """
    import importlib
    import transformers
    from transformers.utils.import_utils import DummyObject

    try:
        cls = getattr(transformers, name)
        if not isinstance(cls, DummyObject):
            return cls if name in UNGATED_MODULES else None
    except (AttributeError, ImportError):
        pass
    if name not in UNGATED_MODULES:
        return None
    if name in _UNGATED:
        return _UNGATED[name]
    module_name = UNGATED_MODULES[name]
    package, _, leaf = module_name.rpartition(".")
    origin = Path(importlib.import_module(package).__file__).with_name(leaf + ".py")
    import types

    source = origin.read_text()
    for old, new in _UNGATED_IMPORTS.items():
        source = source.replace(old, new)
    module = types.ModuleType(f"{module_name}_ungated")
    module.__package__, module.__file__ = package, str(origin)
    sys.modules[module.__name__] = module
    exec(compile(source, str(origin), "exec"), module.__dict__)  # noqa: S102 (transformers' own source)
    _UNGATED[name] = cls = getattr(module, name)
    return cls


#: Processor class names older rlaifv versions wrote as the marker -> class.
IMAGE_ONLY_PROCESSORS = {cls.__name__: cls for cls in (ImageOnlyQwen2VLProcessor, ImageOnlyQwen2_5_VLProcessor)}
#: ``config.model_type`` -> the image-only processor of the two named Qwen classes (see image_only_for_model_type).
IMAGE_ONLY_BY_MODEL_TYPE = {"qwen2_vl": ImageOnlyQwen2VLProcessor, "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor}


def image_only_for_model_type(model_type: str | None):
    """The image-only processor for a ``config.json`` model type whose processor has a video slot, or None."""
    if not model_type:
        return None
    if model_type in IMAGE_ONLY_BY_MODEL_TYPE:
        return IMAGE_ONLY_BY_MODEL_TYPE[model_type]
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    real = PROCESSOR_MAPPING_NAMES.get(model_type)
    return image_only_class(real) if isinstance(real, str) else None


def processor_class_for(name: str | None):
    """The class to load a folder whose ``processor_class`` marker is ``name``, if rlaifv must do it.

    An old image-only marker (``ImageOnlyQwen2VLProcessor``, ...) or the name of any class made
    by :func:`image_only_class`; None for real transformers names (load_processor tries
    ``AutoProcessor`` on those first).
    """
    name = name or ""
    if name in IMAGE_ONLY_PROCESSORS:
        return IMAGE_ONLY_PROCESSORS[name]
    if name.startswith("ImageOnly"):
        return image_only_class(name[len("ImageOnly"):])
    return None

"""Image-only Qwen2-VL / Qwen2.5-VL processors (no video processor, so no torchvision needed).

``Qwen2VLProcessor`` and ``Qwen2_5_VLProcessor`` build a video processor, and every video
processor needs torchvision, which has no build matching the CPU torch used here. These
subclasses take only an image processor, a tokenizer and a chat template: ``ProcessorMixin``
reads its sub-processor slots from the ``__init__`` signature, so the video slot disappears,
and images (``<|image_pad|>`` expansion, ``image_grid_thw``, ``mm_token_type_ids``) work as in
the parent class.

Saving: ``save_pretrained`` writes ``"processor_class": "<subclass name>"`` into
``processor_config.json`` (``ProcessorMixin.to_dict`` does this for any processor).
``AutoProcessor`` cannot resolve these names, so ``models.load.load_vlm`` reads that marker
and loads through :func:`processor_class_for`. A real Qwen2-VL checkpoint (``Qwen2VLProcessor``)
still loads through ``AutoProcessor``; only when that fails (no torchvision) does
``load_vlm`` fall back to the image-only subclass of its ``model_type``.
"""

from __future__ import annotations

from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` without the video slot (image processor + tokenizer + chat template)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):  # noqa: N801 (mirrors the transformers name)
    """``Qwen2_5_VLProcessor`` without the video slot (image processor + tokenizer + chat template)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)


#: Processor class names this package defines -> class (the marker ``load_vlm`` looks for).
IMAGE_ONLY_PROCESSORS = {cls.__name__: cls for cls in (ImageOnlyQwen2VLProcessor, ImageOnlyQwen2_5_VLProcessor)}
#: ``config.model_type`` -> the image-only processor to use when ``AutoProcessor`` fails.
IMAGE_ONLY_BY_MODEL_TYPE = {"qwen2_vl": ImageOnlyQwen2VLProcessor, "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor}


def processor_class_for(name: str | None):
    """The image-only processor class named ``name`` (a ``processor_class`` marker), or None."""
    return IMAGE_ONLY_PROCESSORS.get(name or "")

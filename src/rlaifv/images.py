"""Load a prompt's image, failing with an error that names the prompt.

Images are referenced by path (relative to the prompts file's folder) or carried inline as the
encoded file bytes. The original bytes are what the pipeline passes along (``image_bytes_of``):
re-encoding would change pixels (JPEG) and make outputs depend on the Pillow version.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .records import Prompt


class ImageError(ValueError):
    """A prompt's image is missing or cannot be decoded; the message names prompt and path."""


def image_path(prompt: Prompt, base_dir: Path | None = None) -> Path | None:
    """The file a prompt's image lives in (``None`` if it carries bytes and no path)."""
    if prompt.image is None:
        return None
    path = Path(prompt.image).expanduser()
    return path if path.is_absolute() or base_dir is None else Path(base_dir) / path


def _where(prompt: Prompt, base_dir: Path | None) -> str:
    """Human-readable origin of the image, for error messages."""
    if prompt.image_bytes is not None:
        return "inline image_bytes"
    return str(image_path(prompt, base_dir))


def image_bytes_of(prompt: Prompt, base_dir: Path | None = None) -> bytes:
    """The image file's original bytes, never re-encoded.

    ``image_bytes`` wins over ``image`` when a prompt has both (it is the exact data that was
    captured). Raises ImageError when the file is missing or unreadable.
    """
    if prompt.image_bytes is not None:
        return bytes(prompt.image_bytes)
    path = image_path(prompt, base_dir)
    if path is None:  # Prompt.validate forbids this; guard for hand-built records
        raise ImageError(f"prompt {prompt.prompt_id!r}: has neither an image path nor image_bytes")
    try:
        return path.read_bytes()
    except FileNotFoundError as e:
        raise ImageError(f"prompt {prompt.prompt_id!r}: image file not found: {path}") from e
    except OSError as e:
        raise ImageError(f"prompt {prompt.prompt_id!r}: cannot read image {path}: {e}") from e


def load_image(prompt: Prompt, base_dir: Path | None = None) -> Image.Image:
    """Decode a prompt's image fully and return it in RGB.

    ``img.load()`` forces the decode, so a truncated or corrupt file fails here (ImageError
    naming the prompt and path) rather than later inside a model's processor.
    """
    data = image_bytes_of(prompt, base_dir)
    where = _where(prompt, base_dir)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode == "P" and "transparency" in img.info:
                return img.convert("RGBA").convert("RGB")
            return img.convert("RGB")
    except UnidentifiedImageError as e:
        raise ImageError(f"prompt {prompt.prompt_id!r}: {where} is not a readable image") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"prompt {prompt.prompt_id!r}: cannot decode image {where}: {e}") from e

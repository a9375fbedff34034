"""Load a prompt's image, failing with an error that names the prompt.

Images are referenced by path (relative to the prompts file's folder) or carried inline as the
encoded file bytes. The original bytes are what the pipeline passes along (``image_bytes_of``):
re-encoding would change pixels (JPEG) and make outputs depend on the Pillow version.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .records import Prompt

#: Default pixel limit of a decoded image (40 megapixels, e.g. 8000 x 5000; a 12000 x 12000 image
#: would take about 2.4 GB to decode and process). Checked from the header, before decoding.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


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


def load_image(prompt: Prompt, base_dir: Path | None = None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode a prompt's image fully and return it in RGB (see :func:`to_rgb` for every mode).

    The pixel count is checked from the header before anything is decoded (``max_pixels``,
    0 = no limit of ours); ``img.load()`` forces the decode, so a truncated or corrupt file
    fails here (ImageError naming the prompt and path) rather than later inside a processor.
    """
    data = image_bytes_of(prompt, base_dir)
    return decode_image(data, f"prompt {prompt.prompt_id!r}", _where(prompt, base_dir), max_pixels)


def decode_image(data: bytes, label: str, where: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """``data`` decoded to RGB; ImageError ``"{label}: ..."`` naming ``where`` when it is not a
    readable image, is larger than ``max_pixels`` or holds values no RGB rule covers."""
    try:
        with _pil_pixel_limit(max_pixels), Image.open(io.BytesIO(data)) as img:
            check_pixels(img.size, label, where, max_pixels)
            img.load()
            return to_rgb(img, f"{label}: {where}")
    except ImageError:
        raise
    except UnidentifiedImageError as e:
        raise ImageError(f"{label}: {where} is not a readable image") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"{label}: {where} is too large to decode ({e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{label}: cannot decode image {where}: {e}") from e


def check_pixels(size: tuple[int, int], label: str, where: str, max_pixels: int) -> None:
    """ImageError when a ``(width, height)`` read from the header exceeds ``max_pixels`` (0: no limit)."""
    width, height = size
    if max_pixels > 0 and width * height > max_pixels:
        raise ImageError(f"{label}: image {where} is {width}x{height} = {width * height / 1e6:.1f} megapixels, "
                         f"more than max_image_pixels {max_pixels / 1e6:g} megapixels (refused before decoding; "
                         "raise max_image_pixels to accept it)")


@contextmanager
def _pil_pixel_limit(max_pixels: int) -> Iterator[None]:
    """While an image is opened, our limit replaces PIL's decompression-bomb limit.

    With ``max_pixels > 0`` PIL's limit (a warning above ``Image.MAX_IMAGE_PIXELS``, an error
    above twice that) is lifted: :func:`check_pixels` refuses from the header right after
    ``Image.open`` (which decodes nothing), with a message naming our setting, and a limit
    above PIL's is honoured. With ``max_pixels <= 0`` PIL's own limit stays, its
    DecompressionBombError reported as a bad image. Not thread-safe (a process-wide PIL setting).
    """
    if max_pixels <= 0:
        yield
        return
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def check_image_bytes(data: bytes, label: str, where: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
    """ImageError unless ``data`` decodes as an image within ``max_pixels`` (e.g. before ``export``
    embeds a file a prompt names: a path to any file would otherwise be shipped as image bytes)."""
    decode_image(data, label, where, max_pixels).close()


# ----------------------------------------------------------------------------- modes -> RGB


def to_rgb(img: Image.Image, label: str) -> Image.Image:
    """``img`` in RGB with its EXIF orientation applied; the rule per PIL mode:

    * 1, L, P (opaque), RGB, RGBX, YCbCr, CMYK, HSV, LAB: PIL's own conversion (CMYK
      (0, 0, 0, 0) is white);
    * RGBA, LA, PA, RGBa, La and any image with a ``transparency`` key (P or L/RGB with a tRNS
      chunk): composited on **white**, ``round(c * a / 255 + 255 * (1 - a / 255))``;
    * I;16, I;16L, I;16B, I;16N and I (16-bit PNG / TIFF / PGM): the 16-bit range 0..65535 is
      scaled to 0..255, ``round(v * 255 / 65535)`` (65535 -> 255, 32768 -> 128); values of an
      ``I`` image outside 0..65535 are an error (no guess at their range);
    * F (float): values all within [0, 1] are the normalised convention, x 255; else values
      within [0, 255] are PIL's 8-bit scale, taken as they are; rounded half up. Any other
      range, NaN or infinity is an error: a silent clip or rescale would change the picture.

    ``label`` names the record in errors (ImageError).
    """
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode == "I" or mode.startswith("I;16"):
        return _gray_to_rgb(_scaled_16bit(img, label))
    if mode == "F":
        return _gray_to_rgb(_scaled_float(img, label))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return _on_white(img.convert("RGBA"))
    return img.convert("RGB")


def _scaled_16bit(img: Image.Image, label: str) -> np.ndarray:
    """uint8 gray of a 16-bit (or 32-bit integer holding 16-bit) image, rounded to nearest."""
    values = np.asarray(img).astype(np.int64)
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise ImageError(f"{label}: {img.mode} image with values in [{lo}, {hi}], outside the 16-bit range "
                         "0..65535 this reader converts")
    return ((values * 255 + 32767) // 65535).astype(np.uint8)


def _scaled_float(img: Image.Image, label: str) -> np.ndarray:
    """uint8 gray of a float image: [0, 1] x 255, or [0, 255] as is (see :func:`to_rgb`)."""
    values = np.asarray(img).astype(np.float64)
    if not np.isfinite(values).all():
        raise ImageError(f"{label}: float image holds NaN or infinite values")
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if lo < 0 or hi > 255:
        raise ImageError(f"{label}: float image with values in [{lo:g}, {hi:g}]: expected [0, 1] or [0, 255]")
    scale = 255.0 if hi <= 1.0 else 1.0
    return np.floor(values * scale + 0.5).clip(0, 255).astype(np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), "RGB")


def _on_white(rgba: Image.Image) -> Image.Image:
    """RGBA composited on a white background, rounded to nearest in integers."""
    a = np.asarray(rgba).astype(np.uint32)
    alpha = a[:, :, 3:4]
    rgb = (a[:, :, :3] * alpha + 255 * (255 - alpha) + 127) // 255
    return Image.fromarray(rgb.astype(np.uint8), "RGB")

"""Tests for rlaifv.images: RGB loading, clear errors naming the prompt, no re-encoding."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from rlaifv.images import ImageError, image_bytes_of, load_image
from rlaifv.records import Prompt


def save(img: Image.Image, path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def test_load_relative_path_as_rgb(tmp_path: Path) -> None:
    img = Image.new("RGBA", (5, 3), (10, 20, 30, 255))
    img.putpixel((4, 2), (200, 100, 50, 255))
    save(img, tmp_path / "imgs" / "a.png", "PNG")
    out = load_image(Prompt("p1", "q?", image="imgs/a.png"), tmp_path)
    assert out.mode == "RGB" and out.size == (5, 3)
    assert out.getpixel((0, 0)) == (10, 20, 30) and out.getpixel((4, 2)) == (200, 100, 50)


@pytest.mark.parametrize("mode,colour", [("L", 77), ("P", 3), ("1", 1)])
def test_other_modes_become_rgb(tmp_path: Path, mode: str, colour: int) -> None:
    img = Image.new(mode, (4, 4), colour)
    save(img, tmp_path / "x.png", "PNG")
    out = load_image(Prompt("p1", "q?", image=str(tmp_path / "x.png")), None)  # absolute path
    assert out.mode == "RGB"
    assert out.getpixel((1, 1)) == img.convert("RGB").getpixel((1, 1))


def test_load_from_inline_bytes(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (1, 2, 3)).save(buf, format="PNG")
    out = load_image(Prompt("p1", "q?", image_bytes=buf.getvalue()))
    assert out.getpixel((1, 1)) == (1, 2, 3)


def test_missing_file_names_prompt_and_path(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"prompt 'p7'.*not found.*nope\.png") as e:
        load_image(Prompt("p7", "q?", image="nope.png"), tmp_path)
    assert str(tmp_path) in str(e.value)
    assert isinstance(e.value, ValueError)
    with pytest.raises(ImageError, match="p7"):
        image_bytes_of(Prompt("p7", "q?", image="nope.png"), tmp_path)


def test_garbage_png_names_prompt_and_path(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageError, match=r"prompt 'p8'.*bad\.png.*not a readable image"):
        load_image(Prompt("p8", "q?", image="bad.png"), tmp_path)
    with pytest.raises(ImageError, match=r"prompt 'p9'.*inline image_bytes"):
        load_image(Prompt("p9", "q?", image_bytes=b"\x00garbage"))


def test_truncated_image_fails_at_load_not_later(tmp_path: Path) -> None:
    img = Image.effect_noise((64, 64), 50).convert("RGB")  # noise: no compression, many data bytes
    data = save(img, tmp_path / "t.jpg", "JPEG").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"prompt 'p3'.*t\.jpg"):
        load_image(Prompt("p3", "q?", image="t.jpg"), tmp_path)
    png = save(img, tmp_path / "t.png", "PNG").read_bytes()
    (tmp_path / "t.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(ImageError, match=r"prompt 'p4'.*t\.png"):
        load_image(Prompt("p4", "q?", image="t.png"), tmp_path)


def test_image_bytes_are_the_original_file_bytes(tmp_path: Path) -> None:
    img = Image.effect_noise((16, 16), 40).convert("RGB")
    original = save(img, tmp_path / "a.jpg", "JPEG").read_bytes() + b"trailing-bytes-a-reencode-would-drop"
    (tmp_path / "a.jpg").write_bytes(original)
    assert image_bytes_of(Prompt("p1", "q?", image="a.jpg"), tmp_path) == original
    assert image_bytes_of(Prompt("p2", "q?", image_bytes=original)) == original
    # bytes win over the path when both are given (they are the exact captured data)
    assert image_bytes_of(Prompt("p3", "q?", image="missing.jpg", image_bytes=b"xyz"), tmp_path) == b"xyz"

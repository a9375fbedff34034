"""Real photographs for tests of a user's own data: matplotlib's bundled ``grace_hopper.jpg``
(offline, installed with matplotlib, which rlaifv depends on) and crops of it, as a prompts file."""

from __future__ import annotations

import json
from pathlib import Path

#: (prompt id, crop as fractions of (left, top, right, bottom), question)
PHOTO_PROMPTS = (
    ("hopper", (0.0, 0.0, 1.0, 1.0), "Describe the image in detail."),
    ("hopper-top", (0.0, 0.0, 1.0, 0.5), "What is in the picture?"),
    ("hopper-bottom", (0.0, 0.5, 1.0, 1.0), "Describe the image in detail."),
    ("hopper-face", (0.2, 0.1, 0.8, 0.6), "What do you see?"),
)


def photo_prompts(folder: Path, n: int = 4) -> Path:
    """``folder/prompts.jsonl`` with ``n`` prompts over JPEG files in ``folder/images/`` (relative paths)."""
    from matplotlib import cbook
    from PIL import Image

    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    w, h = photo.size
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for pid, (l, t, r, b), question in PHOTO_PROMPTS[:n]:
        photo.crop((int(l * w), int(t * h), int(r * w), int(b * h))).save(folder / "images" / f"{pid}.jpg", quality=90)
        rows.append({"prompt_id": pid, "question": question, "image": f"images/{pid}.jpg"})
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cli_ok(args: list[str]) -> str:
    """Run ``rlaifv ARGS`` in-process (typer's CliRunner); its output, after asserting exit 0
    (an exception inside the command is re-raised with its traceback)."""
    from typer.testing import CliRunner

    from rlaifv.cli import app

    res = CliRunner().invoke(app, args)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    assert res.exit_code == 0, res.output
    return res.output

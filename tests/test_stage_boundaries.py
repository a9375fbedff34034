"""The method's stages never import the sandbox (issue 10.6): the sandbox plugs in through
registries (stages/extensions.py, stages/conquer.py's conquer modes) when it is imported."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import rlaifv.stages

STAGES = Path(rlaifv.stages.__file__).parent


def sandbox_imports(source: str) -> list[str]:
    """Every statement in ``source`` (a module of rlaifv.stages) that imports rlaifv.sandbox: absolute
    or relative ``import`` / ``from`` statements, anywhere (functions included), and
    ``importlib.import_module`` / ``__import__`` calls on a string naming it."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            hits += [a.name for a in node.names if a.name == "rlaifv.sandbox" or a.name.startswith("rlaifv.sandbox.")]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 0:
                full = mod
            elif node.level == 1:  # inside rlaifv.stages
                full = f"rlaifv.stages.{mod}" if mod else "rlaifv.stages"
            else:  # .. = rlaifv
                full = f"rlaifv.{mod}" if mod else "rlaifv"
            names = [full] if full != "rlaifv" else [f"rlaifv.{a.name}" for a in node.names]
            hits += [n for n in names if n == "rlaifv.sandbox" or n.startswith("rlaifv.sandbox.")]
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name in ("import_module", "__import__"):
                hits += [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str) and "sandbox" in a.value]
    return hits


def test_the_checker_finds_every_spelling():
    found = sandbox_imports("import rlaifv.sandbox.world\nfrom rlaifv.sandbox import parse\nfrom ..sandbox.tasks import X\n"
                            "def f():\n    from .. import sandbox\n    from ..sandbox import prompts\n"
                            "import importlib\nimportlib.import_module('rlaifv.sandbox.loop')\n")
    assert sorted(found) == sorted(["rlaifv.sandbox.world", "rlaifv.sandbox", "rlaifv.sandbox.tasks", "rlaifv.sandbox",
                                    "rlaifv.sandbox", "rlaifv.sandbox.loop"])
    assert sandbox_imports("from ..models.load import load_vlm\nfrom .extensions import prompt_source\nimport rlaifv.sandboxes\n") == []


def test_no_stage_module_imports_the_sandbox():
    modules = sorted(STAGES.glob("*.py"))
    assert len(modules) >= 10  # the folder was found
    offenders = {m.name: hits for m in modules if (hits := sandbox_imports(m.read_text(encoding="utf-8")))}
    assert offenders == {}, f"stages/ must not import rlaifv.sandbox: {offenders}"


_FRESH = """
import importlib, json, pkgutil, sys
import rlaifv.stages as S
names = [m.name for m in pkgutil.iter_modules(S.__path__)]
for n in names:
    importlib.import_module("rlaifv.stages." + n)
out = {"modules": names, "sandbox": sorted(k for k in sys.modules if k.startswith("rlaifv.sandbox"))}
from rlaifv.config import ConfigError
from rlaifv.stages.conquer import CONQUER_MODES, ConquerConfig
from rlaifv.stages.extensions import evaluator, prompt_source
out["modes"] = sorted(CONQUER_MODES)
for name, fn in (("mode", lambda: ConquerConfig(mode="describe_then_match")), ("source", lambda: prompt_source("sandbox")),
                 ("evaluator", lambda: evaluator("sandbox"))):
    try:
        fn()
        out[name] = "no error"
    except ConfigError as e:
        out[name] = str(e)
import rlaifv.sandbox.loop
out["after"] = sorted(CONQUER_MODES)
print(json.dumps(out))
"""


def test_fresh_interpreter_stages_load_no_sandbox_and_say_how_to_get_it():
    """Importing every stages module in a fresh interpreter loads no rlaifv.sandbox module; the
    stand-ins and the sandbox prompt source / evaluator are then absent, and asking for them is a
    ConfigError that names the import (not a KeyError); importing rlaifv.sandbox.loop registers them."""
    res = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert {"conquer", "extensions", "feedback", "iterate", "select", "bestofn"} <= set(out["modules"])
    assert out["sandbox"] == []
    assert out["modes"] == ["direct"]
    assert "not registered" in out["mode"] and "register_conquer_mode" in out["mode"] and "describe_then_match" in out["mode"]
    assert "register_prompt_source" in out["source"] and "register_evaluator" in out["evaluator"]
    assert out["after"] == ["describe_then_answer", "describe_then_match", "direct"]


def test_the_stand_ins_keep_the_sandbox_describe_prompt():
    from rlaifv.sandbox.tasks import DESCRIBE_PROMPT
    from rlaifv.stages.conquer import ConquerConfig

    assert ConquerConfig().describe_prompt == DESCRIBE_PROMPT

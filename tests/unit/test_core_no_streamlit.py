"""core/ is the domain and its services: it never imports streamlit (pages do)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "core"


def _imports(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value))
    return names


def test_the_scan_sees_every_form_of_import():
    sample = "import streamlit as st\nfrom streamlit.testing import x\nimportlib.import_module('streamlit')\n"
    assert _imports(ast.parse(sample)) == {"streamlit", "streamlit.testing"}


def test_no_module_in_core_imports_streamlit():
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 10
    offenders = [str(path.relative_to(CORE)) for path in files
                 if any(name == "streamlit" or name.startswith("streamlit.") for name in _imports(ast.parse(path.read_text())))]
    assert offenders == []


def test_importing_every_core_module_leaves_streamlit_unloaded():
    modules = sorted(".".join(p.relative_to(CORE.parent).with_suffix("").parts) for p in CORE.rglob("*.py")
                     if "migrations" not in p.parts and p.name != "__init__.py")
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m == 'streamlit' or m.startswith('streamlit.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=CORE.parent, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

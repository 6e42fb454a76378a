"""The layout's promises (docs/architecture.md, "Layers"), checked: the layer contract holds, and the edges,
the wire models and the job config import without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TORCH_FREE = ["tempering.api.app", "tempering.api.protocol", "tempering.api.protocol_serving",
              "tempering.api.protocol_evaluations", "tempering.api.protocol_tools", "tempering.api.protocol_sweeps",
              "tempering.train.sweep", "tempering.train.config", "tempering.train.refs",
              "tempering.train.jobdata", "tempering.serve.params", "tempering.cli.main"]


def test_layer_contract_holds():
    importlinter = pytest.importorskip("importlinter.cli")
    code = importlinter.lint_imports(config_filename=str(ROOT / ".importlinter"), no_cache=True, no_logo=True)
    assert code == 0, "lint-imports found an upward import or a cycle between layers (output above)"


def test_upward_import_is_caught(tmp_path):
    """The contract is not vacuous: a copy of the package with one upward import (data → api) breaks it."""
    importlinter = pytest.importorskip("importlinter.cli")
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "tempering", copy / "tempering", ignore=shutil.ignore_patterns("__pycache__"))
    upward = copy / "tempering" / "data" / "upward.py"
    upward.write_text("from tempering.api import errors  # deliberately upward\n")
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import importlinter.cli as c; "
              "sys.exit(c.lint_imports(config_filename=sys.argv[2], no_cache=True, no_logo=True))")
    result = subprocess.run([sys.executable, "-c", script, str(copy), str(ROOT / ".importlinter")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode != 0
    assert "tempering.data.upward -> tempering.api.errors" in result.stdout
    del importlinter


def test_edges_wire_and_config_import_without_torch():
    blocker = "import sys\nfor name in ('torch', 'transformers', 'peft'):\n    sys.modules[name] = None\n"
    imports = "".join(f"import {m}\n" for m in TORCH_FREE)
    result = subprocess.run([sys.executable, "-c", blocker + imports], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_help_runs_without_torch():
    script = ("import sys\nfor name in ('torch', 'transformers', 'peft'):\n    sys.modules[name] = None\n"
              "sys.argv = ['tempering', '--help']\nfrom tempering.cli.main import main\nmain()\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "tune" in result.stdout

"""The layering contracts of pyproject.toml ([tool.importlinter], checked by import-linter's
``lint-imports``) hold in this checkout, and each one fails when an import that breaks it
is added (to a copy of the packages): the engine never imports the UI, the UI never imports
the heavy ML stack, the screens' state modules (tui.chatstate, tui.chathistory,
tui.evalstate, tui.dashstate) never import Textual, and engine.data never imports training code.

Run time is what tests/test_engine_imports.py and tests/test_tui_imports.py check (what a
fresh interpreter holds after an import); these contracts read every import statement,
those inside functions too, without running anything.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import importlinter  # noqa: F401 - in the test extra (pip install -e ".[test]"): missing, the test fails
import pytest

REPO = Path(__file__).resolve().parents[1]
CONTRACTS = ("engine-headless", "tui-light", "tui-plain-state", "data-no-training")


def lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess:
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    args = ["--no-cache", "--no-logo", *(a for c in contracts for a in ("--contract", c))]
    return subprocess.run([sys.executable, "-c", code, *args], cwd=root, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})


def installed_layout(root: Path, copy: bool) -> Path:
    """``root/finetui/{engine,tui}``: the packages as the wheel installs them (pyproject.toml maps
    the repository's folders into one import name), copied or linked to this checkout."""
    package = root / "finetui"
    package.mkdir(parents=True)
    shutil.copy(REPO / "finetui" / "__init__.py", package / "__init__.py")
    for name in ("engine", "tui"):
        if copy:
            shutil.copytree(REPO / name, package / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (package / name).symlink_to(REPO / name, target_is_directory=True)
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_checkout_keeps_every_contract(tmp_path):
    out = lint_imports(installed_layout(tmp_path / "tree", copy=False))
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert out.stdout.count(" KEPT") == len(CONTRACTS), out.stdout[-2000:]


def copy_packages(tmp_path: Path) -> Path:
    return installed_layout(tmp_path / "tree", copy=True)


# (contract, module to edit, the offending line): at module level, or inside a function
OFFENCES = [
    ("engine-headless", "engine/runs.py", "from textual.app import App"),
    ("engine-headless", "engine/data/readers.py", "def _show():\n    from finetui.tui import app"),
    ("tui-light", "tui/app.py", "import torch"),
    ("tui-light", "tui/widgets/lossplot.py", "def _load():\n    from transformers import AutoModel"),
    ("tui-light", "tui/session.py", "import peft, bitsandbytes, datasets"),
    ("tui-plain-state", "tui/chatstate.py", "from textual.widgets import Static"),
    ("tui-plain-state", "tui/chatdriver.py", "def _show():\n    from textual.app import App"),
    ("tui-plain-state", "tui/evalstate.py", "def _show():\n    from finetui.tui.widgets.chatlog import ChatLog"),
    ("tui-plain-state", "tui/dashstate.py", "from textual.app import App"),
    ("tui-plain-state", "tui/createstate.py", "def _show():\n    from textual.widgets import Input"),
    ("tui-plain-state", "tui/jobs.py", "from textual.app import App"),
    ("data-no-training", "engine/data/render.py", "from finetui.engine.perf import fused_loss"),
    ("data-no-training", "engine/data/dataset.py", "def _trainer():\n    from finetui.engine.lean_trainer import LeanTrainer"),
]


@pytest.mark.parametrize("contract,module,line", OFFENCES, ids=[f"{c}:{m}" for c, m, _ in OFFENCES])
def test_each_contract_catches_an_offending_import(tmp_path, contract, module, line):
    root = copy_packages(tmp_path)
    assert lint_imports(root, contract).returncode == 0  # the copy keeps it before the edit
    path = root / "finetui" / module
    path.write_text(path.read_text() + "\n\n" + line + "\n")
    out = lint_imports(root, contract)
    assert out.returncode == 1 and "BROKEN" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]
    assert module.removesuffix(".py").replace("/", ".") in out.stdout  # it names the importer

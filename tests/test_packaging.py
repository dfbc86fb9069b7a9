"""One installed import name: the distribution adds ``finetui`` to a user's environment and
nothing else (pyproject.toml maps engine/, tui/, themes/ and sample_data/ into it with
setuptools' ``package-dir``).

- the wheel built from this checkout holds only ``finetui/...`` (and its .dist-info), with
  every subpackage and the data files the app reads (themes, sample data, styles, prompts);
- pyproject.toml's explicit package list names every folder with an ``__init__.py`` (a new
  subpackage left out would be missing from the wheel);
- no module imports the old top-level names (``engine``, ``tui``, ...), which exist only in a
  source checkout.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAPPED = {"engine": "finetui.engine", "tui": "finetui.tui", "themes": "finetui.themes",
          "sample_data": "finetui.sample_data"}


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_package_dir_maps_the_folders_into_one_name():
    setuptools = project()["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"finetui": "finetui", **{v: k for k, v in MAPPED.items()}}
    folders = sorted(
        ".".join(("finetui", *init.parent.relative_to(REPO).parts))
        for top in MAPPED for init in (REPO / top).rglob("__init__.py") if "__pycache__" not in init.parts)
    assert sorted(p for p in setuptools["packages"] if p != "finetui") == folders
    assert project()["project"]["scripts"]["finetui"] == "finetui.engine.cli:main"


def test_no_module_imports_an_old_top_level_name():
    offenders = []
    for top in ("finetui", *MAPPED, "tests", "benchmarks"):
        for path in sorted((REPO / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                offenders += [f"{path.relative_to(REPO)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in MAPPED]
    assert not offenders, offenders


@pytest.mark.slow
def test_the_wheel_installs_one_top_level_name(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("finetui-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"finetui"}, sorted(tops)
    for needed in ("finetui/__main__.py", "finetui/engine/cli.py", "finetui/engine/data/create/question_prompt.txt",
                   "finetui/tui/app.tcss", "finetui/sample_data/quickstart.yaml",
                   "finetui/sample_data/finetui_faq.jsonl", "finetui/tui/screens/__init__.py"):
        assert needed in names, needed
    assert any(n.startswith("finetui/themes/") and n.endswith((".yaml", ".toml")) for n in names)
    assert any(n.startswith("finetui/sample_data/presets/") for n in names)
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "finetui = finetui.engine.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()

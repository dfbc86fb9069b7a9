"""The engine never imports Textual, and its light modules never import the heavy ML stack.

Each module is imported in a fresh interpreter, so what one module drags in cannot hide
behind what another test already imported. Extend LIGHT_MODULES when you add a module the
UI may import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENGINE = REPO / "engine"

# Modules the UI process imports: stdlib + pydantic/yaml/psutil (and pyarrow lazily) only.
LIGHT_MODULES = (
    "finetui.engine.config",
    "finetui.engine.events",
    "finetui.engine.atomic",
    "finetui.engine.runs",
    "finetui.engine.checkpoint_kind",
    "finetui.engine.data.conversation",
    "finetui.engine.data.readers",
    "finetui.engine.data.formats",
    "finetui.engine.data.columns",
    "finetui.engine.data.dropcheck",
    "finetui.engine.data.paged",
    "finetui.engine.hardware",
    "finetui.engine.footprint",
    "finetui.engine.perf",
    "finetui.engine.perf.allocator",
    "finetui.engine.perf.import_cache",
    "finetui.engine.perf.threads",
    "finetui.engine.units",
    "finetui.engine.data.create.documents",
    "finetui.engine.data.create.passages",
    "finetui.engine.data.create.quality",
    "finetui.engine.data.create.store",
    "finetui.engine.data.create.writers",
    "finetui.engine.data.create.run",
)
HEAVY_PACKAGES = ("torch", "transformers", "peft", "datasets", "bitsandbytes")
UI_PACKAGES = ("textual",)


def engine_modules() -> list[str]:
    names = []
    for path in sorted(ENGINE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(("finetui", *parts)))
    return names


def imported_after(module: str) -> list[str]:
    """Top-level packages of interest present in sys.modules after importing ``module``
    alone in a fresh interpreter."""
    watched = UI_PACKAGES + HEAVY_PACKAGES
    code = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(json.dumps([p for p in {watched!r} if p in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"importing {module} failed:\n{out.stderr[-2000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_light_modules_are_engine_modules():
    missing = [m for m in LIGHT_MODULES if m not in engine_modules()]
    optional = {"finetui.engine.hardware", "finetui.engine.footprint"}
    assert not [m for m in missing if m not in optional], f"LIGHT_MODULES names modules that do not exist: {missing}"


@pytest.mark.parametrize("module", engine_modules())
def test_engine_module_never_imports_textual(module):
    loaded = imported_after(module)
    assert "textual" not in loaded, f"{module} imports textual"
    if module in LIGHT_MODULES:
        heavy = [p for p in loaded if p in HEAVY_PACKAGES]
        assert not heavy, f"{module} is light but imports {', '.join(heavy)} at import time"

"""The model picker for ``model.name_or_path``: the models finetui knows, with their size and
the memory the current settings would need, and a path field for anything else.

It lists what :func:`engine.model_catalog.list_models` finds (the built-ins ``tiny`` and
``smollm2``, converted GGUF files, models in the Hugging Face cache) and, for each, the
parameter count and :func:`engine.footprint.estimate` of the current config with that model
in it. Finding them walks folders, so it runs in a worker thread (:func:`scan_models` touches
no widget); the dialog fills its list when the thread is done.

Below the list a :class:`~tui.widgets.pathinput.PathInput` takes a local folder, a ``.gguf``
file or a hub id (tab completes paths). The dialog returns the chosen value; the Settings
screen validates it like any other edit.

Light: engine.model_catalog and engine.footprint only (no torch, no engine.gguf).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from finetui.engine.units import format_bytes
from finetui.tui.widgets.dialogs import DIALOG_CSS
from finetui.tui.widgets.pathinput import PathInput

OTHER_ID = "__other__"  # the last option: type a path below
NAME_WIDTH = 22


@dataclass
class ModelChoice:
    """One model the picker offers."""

    value: str  # what model.name_or_path becomes
    name: str  # as listed
    kind: str  # built-in, gguf, hub cache
    params: int | None
    status: str  # ready, fetched on first use (93 MB) ...
    detail: str  # title or place
    estimate: Any = None  # engine.footprint.MemoryEstimate for the current settings
    problem: str | None = None  # why there is no estimate


def status_of(row: dict[str, Any]) -> str:
    if row.get("cached"):
        return "ready"
    fetch = row.get("fetch_bytes")
    # Decimal megabytes, as the fetch itself reports the download.
    return f"fetched on first use ({format_bytes(fetch, si=True)})" if fetch else "not fetched yet"


def _with_model(config: dict[str, Any], name: str) -> dict[str, Any]:
    data = {section: dict(values) for section, values in config.items()}
    data.setdefault("model", {})["name_or_path"] = name
    return data


def scan_models(config: dict[str, Any], gpu: bool | None = None) -> list[ModelChoice]:
    """Every model :func:`engine.model_catalog.list_models` finds, each with the memory
    estimate of ``config`` (a Config's ``to_dict()``) with that model in it. Reads folders:
    call it from a worker thread."""
    from finetui.engine import footprint, model_catalog

    choices: list[ModelChoice] = []
    for row in model_catalog.list_models():
        name = str(row["name"])
        value = name
        if row["kind"] == "gguf" and not Path(name).expanduser().is_file() and row.get("path"):
            value = str(row["path"])  # the GGUF file is gone: its converted folder still loads
        detail = row.get("title") or row.get("path") or ""
        if row["kind"] == "hub cache":
            detail = f"Hugging Face cache: {row.get('path')}"
        choice = ModelChoice(value=value, name=name, kind=str(row["kind"]), params=row.get("params"),
                             status=status_of(row), detail=str(detail))
        try:
            try:
                choice.estimate = footprint.estimate(_with_model(config, value), gpu=gpu)
            except footprint.FootprintError:
                if row["kind"] != "gguf" or not row.get("path"):
                    raise
                # The GGUF file changed since its conversion: the converted config still tells the size.
                model_config, source = footprint.read_model_config(str(row["path"]))
                choice.estimate = footprint.estimate(_with_model(config, value), model_config, source, gpu=gpu)
            choice.params = choice.params or choice.estimate.params_total
        except footprint.FootprintError as exc:
            choice.problem = str(exc)
        except Exception as exc:  # a config.json the counter does not understand
            choice.problem = f"no estimate: {exc}"
        choices.append(choice)
    return choices


def path_problem(value: str) -> str | None:
    """Why a typed model path cannot be a model (None: acceptable). Built-in names and hub
    ids (ORG/NAME) pass; local paths must be a .gguf file or a folder with config.json."""
    from finetui.engine import model_catalog

    raw = value.strip()
    if not raw:
        return "type a folder, a .gguf file or a hub id (ORG/NAME)"
    if model_catalog.builtin(raw) is not None:
        return None
    path = Path(os.path.expanduser(raw))
    if path.is_file():
        if model_catalog.is_gguf(raw) or path.name == "config.json":
            return None
        return f"{raw}: not a .gguf file (a model folder holds config.json)"
    if path.is_dir():
        if (path / "config.json").is_file():
            return None
        ggufs = sorted(p.name for p in path.glob("*.gguf"))[:3]
        if ggufs:
            return f"{raw}: no config.json; pick a GGUF file inside it: {', '.join(ggufs)}"
        return f"{raw}: folder has no config.json"
    hub_id = raw.count("/") == 1 and not raw.startswith((".", "/", "~")) and not model_catalog.is_gguf(raw)
    if hub_id:
        return None
    return f"{raw}: no such file or folder"


class ModelPicker(ModalScreen[str | None]):
    """Pick ``model.name_or_path``: known models (↑/↓, enter) or a typed path (tab)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="dialog.cancel")]
    DEFAULT_CSS = ("ModelPicker { align: center middle; }\n"
                   "ModelPicker OptionList, ModelPicker OptionList:focus { height: auto; max-height: 10;"
                   " border: none; padding: 0; scrollbar-size-vertical: 1;"
                   " text-wrap: nowrap; text-overflow: ellipsis; }\n"
                   "ModelPicker #model-header { color: $text-muted; text-style: bold; }\n"
                   "ModelPicker #model-detail { height: 2; color: $text-muted;"
                   " text-wrap: nowrap; text-overflow: ellipsis; }\n"
                   "ModelPicker #model-path { margin-top: 1; }\n"
                   + DIALOG_CSS)

    def __init__(self, current: str, config: dict[str, Any], probe_gpus: Callable[[], list] | None = None) -> None:
        """current: model.name_or_path now; config: the settings (Config.to_dict());
        probe_gpus: GPUs of this box, called in the worker thread (decides what dtype auto means)."""
        super().__init__()
        self.current = current
        self.config = config
        self.probe_gpus = probe_gpus
        self.choices: list[ModelChoice] = []
        self.loaded = False

    def compose(self):
        typed = self.current if self.current and not self._is_builtin(self.current) else ""
        with Vertical(classes="dialog"):
            yield Static("Model (model.name_or_path)", classes="dialog-title")
            yield Static(self._row_text("  model", "params", "memory", "status"), id="model-header")
            yield OptionList(id="model-list")
            yield Static("looking for models…", id="model-detail")
            yield Static("or a folder, a .gguf file or a hub id (ORG/NAME):", id="model-path")
            yield PathInput(typed, suffixes=(".gguf", ".json"), id="model-input", compact=True,
                            placeholder="path/to/model.gguf, path/to/folder, ORG/NAME")
            yield Static("", classes="dialog-error", id="error")
            yield Static("↑/↓ choose · enter use · tab type a path · esc cancel", classes="dialog-hint")

    @staticmethod
    def _is_builtin(name: str) -> bool:
        from finetui.engine import model_catalog

        return model_catalog.builtin(name) is not None

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()
        self.run_worker(self._scan, thread=True, exclusive=True, group="model-picker")

    # ------------------------------------------------------------------ the list

    def _scan(self) -> None:
        gpus = None
        if self.probe_gpus is not None:
            try:
                gpus = bool(self.probe_gpus())
            except Exception:
                gpus = None
        try:
            choices, problem = scan_models(self.config, gpu=gpus), None
        except Exception as exc:  # an unreadable cache must not take the dialog down
            choices, problem = [], f"could not list models: {exc}"
        self.app.call_from_thread(self.show_choices, choices, problem)

    @staticmethod
    def _row_text(name: str, params: str, memory: str, status: str) -> Text:
        """One line: name, parameters, memory estimate, status (the header uses it too)."""
        if len(name) > NAME_WIDTH - 1:  # the end tells models apart (ORG/...-1.7B-Instruct)
            name = name[:2] + "…" + name[len(name) - NAME_WIDTH + 5:]
        return Text(f"{name:<{NAME_WIDTH}}{params:>6}  {memory:>9}  {status}", end="")

    def _option(self, choice: ModelChoice) -> Option:
        from finetui.engine.footprint import human_count

        params = human_count(choice.params) if choice.params else "?"
        memory = f"{format_bytes(choice.estimate.total_bytes)}" if choice.estimate is not None else "?"
        now = self.current in (choice.value, choice.name)
        name = Path(choice.name).name if choice.kind == "gguf" else choice.name  # the place is in the detail
        prompt = self._row_text(("● " if now else "  ") + name, params, memory, choice.status)
        if now:
            prompt.stylize("bold")
        return Option(prompt, id=f"model-{len(self.choices)}")

    def show_choices(self, choices: list[ModelChoice], problem: str | None = None) -> None:
        if not self.is_attached:
            return  # closed while the thread was looking
        option_list = self.query_one(OptionList)
        self.choices = []
        options = []
        for choice in choices:
            options.append(self._option(choice))
            self.choices.append(choice)
        options.append(Option(Text("  other: type a folder, a .gguf file or a hub id below", style="italic"),
                              id=OTHER_ID))
        option_list.set_options(options)
        current = next((i for i, c in enumerate(self.choices) if self.current in (c.value, c.name)),
                       len(self.choices) if self.current else 0)  # a typed path: 'other'
        option_list.highlighted = current
        self.loaded = True
        if problem:
            self.show_error(problem)
        self.show_detail(current)

    def show_detail(self, index: int | None) -> None:
        from finetui.engine.footprint import human_count

        text = Text(no_wrap=True, overflow="ellipsis")
        if index is None or index >= len(self.choices):
            text.append("a model not listed: tab to the path field")
        else:
            choice = self.choices[index]
            text.append(f"{choice.kind} · {choice.detail}")
            text.append("\n")
            est = choice.estimate
            if est is None:
                text.append(choice.problem or "no estimate", style="italic")
            else:
                method = self.config.get("method", {}).get("type", "")
                train = self.config.get("train", {})
                data = self.config.get("data", {})
                text.append(f"{method}, bs {train.get('batch_size')} × {data.get('max_length')}: "
                            f"est. {format_bytes(est.total_bytes)} · {human_count(est.params_trainable)} trainable"
                            f" · weights {format_bytes(est.weights_bytes)} {est.weights_dtype}")
        self.query_one("#model-detail", Static).update(text)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if self.loaded:
            self.show_detail(event.option_index)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id == OTHER_ID:
            self.query_one(PathInput).focus()
            return
        index = event.option_index
        if 0 <= index < len(self.choices):
            self.dismiss(self.choices[index].value)

    # ------------------------------------------------------------------ the path field

    def show_error(self, message: str) -> None:
        self.query_one("#error", Static).update(Text(message))

    def on_input_changed(self, event: Input.Changed) -> None:
        self.show_error("")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        value = event.value.strip()
        problem = path_problem(value)
        if problem:
            self.show_error(problem)
            return
        if Path(os.path.expanduser(value)).name == "config.json":
            value = str(Path(value).parent)
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)

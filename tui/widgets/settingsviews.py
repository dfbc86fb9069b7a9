"""How the Settings screen draws what :mod:`finetui.tui.settingsstate` decides: the origin
line, a row's help, the footprint line under the form, the estimate in the preview and the
start dialog's body. Rich text only; ``variables`` are the app's theme variables.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

from finetui.engine import config as cfg
from finetui.tui.session import SettingsState, display_path
from finetui.tui.settingsstate import Footprint
from finetui.tui.widgets.fieldform import describe, show_value


def origin_line(state: SettingsState) -> Text:
    """Where the config came from and how many settings differ from it."""
    changed = state.changed()
    where = f" ({display_path(state.base_path)})" if state.base_path is not None and \
        not state.origin.startswith("file") else ""
    origin = Text(no_wrap=True, overflow="ellipsis")
    origin.append(state.origin + where)
    origin.append(f" · {len(changed)} changed" if changed else " · unchanged")
    if changed:
        origin.append("  ● = --set on the command", style="dim")
    return origin


def help_text(spec: dict[str, Any]) -> Text:
    """A setting's key, type, default and description."""
    text = Text(no_wrap=False, overflow="ellipsis")
    text.append(spec["key"], style="bold")
    text.append(f"  {describe(spec)}", style="dim")
    default = show_value(spec["default"])
    text.append(f"  default: {default if default else '(none)'}", style="dim")
    text.append("\n" + spec["description"])
    return text


def fit_text(fp: Footprint, config: cfg.Config, variables: dict[str, str]) -> Text | None:
    """``fits GPU0 80.0 GB`` or ``exceeds …`` (None without a GPU reading)."""
    from finetui.engine.units import format_bytes

    fit = fp.fit(config)
    if fit is None:
        return None
    fits, total = fit
    colour = variables.get("success" if fits else "error", "")
    return Text(f"{'fits' if fits else 'exceeds'} GPU0 {format_bytes(total)}", style=f"bold {colour}")


def footprint_line(fp: Footprint, config: cfg.Config, variables: dict[str, str]) -> Text:
    """One line under the form: the first limit crossed, or the problem, or the model, its
    size, the method and the estimate (per GPU when sharded) and whether it fits."""
    from finetui.engine.footprint import human_count
    from finetui.engine.units import format_bytes

    line = Text(no_wrap=True, overflow="ellipsis")
    estimate = fp.estimate
    if fp.limits:
        line.append(f"✖ {fp.limits[0]}", style=f"bold {variables.get('error', 'red')}")
    elif estimate is None:
        line.append(fp.problem or "no estimate", style="bold red" if fp.blocks else "bold yellow")
    else:
        line.append(f"{config.model.name_or_path}", style="bold")
        line.append(f" {human_count(estimate.params_total)} params, {format_bytes(estimate.size_bytes)}")
        line.append(f" │ {estimate.method} {human_count(estimate.params_trainable)} trainable")
        line.append(f" │ est. {format_bytes(estimate.total_bytes)}", style="bold")
        line.append(f" (bs {config.train.batch_size} × {config.data.max_length})", style="dim")
        share = fp.share(config)
        if share is not None:
            offload = f" +{format_bytes(share.offloaded_bytes)} CPU" if share.offloaded_bytes else ""
            line.append(f" │ {share.strategy} ×{fp.share_gpus()}: {format_bytes(share.total_bytes)}/GPU{offload}",
                        style="bold")
        fit = fit_text(fp, config, variables)
        if fit is not None:
            line.append(" │ ")
            line.append_text(fit)
    return line


def footprint_text(fp: Footprint, config: cfg.Config, variables: dict[str, str]) -> Text:
    """The estimate, one line a part (weights, gradients and optimizer, activations,
    overhead), the GPU it fits or not, its notes."""
    text = Text()
    if fp.estimate is None:
        text.append(fp.problem or "computing…", style="red")
        return text
    for label, value in fp.detail_rows():
        text.append(f"{label:<14}", style="bold" if not label.startswith(" ") else "")
        text.append(value + "\n")
    fit = fit_text(fp, config, variables)
    if fit is not None:
        text.append(f"{'GPU':<14}")
        text.append_text(fit)
        text.append("\n")
    elif fp.gpus is not None:
        text.append(f"{'GPU':<14}none found: trains on the CPU\n")
    for note in fp.estimate.notes:
        text.append(f"note: {note}\n", style="dim")
    return text


def preview_text(state: SettingsState, fp: Footprint, variables: dict[str, str]) -> Text:
    """The equivalent command, the estimate and the YAML."""
    text = Text()
    text.append("# equivalent command\n", style="dim")
    text.append(state.train_command() + "\n\n", style="bold")
    text.append("# estimate before launch (config.json only, no weights loaded)\n", style="dim")
    text.append_text(footprint_text(fp, state.config, variables))
    text.append("\n# YAML (w saves it)\n", style="dim")
    text.append(state.config.to_yaml())
    return text


def start_body(state: SettingsState, fp: Footprint, blocking: str | None, drops: list[str],
               variables: dict[str, str]) -> Text:
    """The start dialog: the command, the limits crossed, the data the run would drop (if
    too much), the estimate."""
    body = Text()
    body.append(state.train_command() + "\n\n", style="bold")
    if fp.limits and blocking is None:
        body.append("\n".join(fp.limits) + "\n", style=f"bold {variables.get('error', 'red')}")
        body.append("turn the setting named above, or start anyway (finetui train --force)\n\n", style="dim")
    if drops:
        body.append("\n".join(drops) + "\n", style=f"bold {variables.get('warning', 'yellow')}")
        body.append("fix the data or the settings (Datasets: m maps columns, u uses a dataset as shown), "
                    "or start anyway (what would be dropped is not trained)\n\n", style="dim")
    body.append_text(footprint_text(fp, state.config, variables))
    return body

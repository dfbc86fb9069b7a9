"""finetui: fine-tune LLMs from a terminal.

The distribution installs one import name, ``finetui``. Its parts keep their own folders in
the repository (pyproject.toml maps them with setuptools' ``package-dir``):

- ``finetui.engine``      <- engine/       headless: config, data, training, runs, CLI
- ``finetui.tui``         <- tui/          the Textual app (never loads torch)
- ``finetui.themes``      <- themes/       colour themes (YAML)
- ``finetui.sample_data`` <- sample_data/  the demo's datasets and configs

``python -m finetui`` is the ``finetui`` command.
"""

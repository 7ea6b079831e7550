"""``python -m use_core.pipeline <stage>``: run one stage of the table (what dvc.yaml calls).

The same commands as ``use <stage>``, from an entry that imports nothing but the stage runner,
so each stage's import closure (its ``deps`` in dvc.yaml) holds only the code it runs.
"""

from __future__ import annotations

import typer

from use_core.pipeline.commands import add_stage_commands

app = typer.Typer(
    name="python -m use_core.pipeline",
    help="Run one stage of the USE pipeline (the stages of use_core.pipeline.table).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
add_stage_commands(app)

if __name__ == "__main__":
    app()

"""What every `medallion` command shares: the consoles, the settings of the invocation, one-line error reporting,
the `--address` and `--as-of DATE` options, and the progress display.

Commands import only this module, click and rich at their top: the libraries a command needs (Ray, Arrow, Delta
Lake, ...) load inside it, so `medallion --help` and a mistyped option answer at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from functools import wraps
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.status import Status

from engine.errors import EngineError
from engine.redact import redact_text

if TYPE_CHECKING:
    from engine.config import Settings
    from engine.pipeline import Pipeline

WIDE = 160
console = Console(highlight=False, width=None if sys.stdout.isatty() else WIDE)
"""The commands' output on stdout (160 columns wide when it is not a terminal)."""
errors = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else WIDE)
"""Errors and progress on stderr."""

_ADDRESS_KEY = "medallion.address"
log = logging.getLogger("engine.cli")


def _remember_address(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    """Keep a given `--address` for the whole command: one given after the command replaces the group's."""
    if value is not None:
        ctx.meta[_ADDRESS_KEY] = value


address_option = click.option(
    "--address", default=None, metavar="HOST:PORT", expose_value=False, callback=_remember_address,
    help="Ray cluster address (default: a private local instance).")
"""`--address`, on `medallion` itself and on the commands that run on a cluster (after the command, it wins)."""

as_of_date_option = click.option(
    "--as-of", "as_of", type=click.DateTime(["%Y-%m-%d"]), default=None, metavar="DATE",
    help="Last day of the data (UTC); the same scale, seed and date give the same files (default: today).")
"""`--as-of DATE` of the commands that generate landing data."""


pipelines_option = click.option(
    "--pipeline", "pipeline_names", multiple=True,
    help="Only the tables of this pipeline, built or not, with its current declarations (repeatable); by default "
         "every table under the root, with the declarations the last run of the pipeline named in its last commit "
         "recorded.")
"""`--pipeline NAME` of the commands that describe a root's tables (`catalog`, `report`)."""


def settings_of(ctx: click.Context) -> Settings:
    """The settings of this invocation: the configuration file, then the environment, then the command line's
    `--root`, `--address` and `--verbose`; the storage root checked."""
    from engine.config import ADDRESS_ENV, load_settings
    from engine.storage import check_root

    options = ctx.find_root().params
    if _ADDRESS_KEY in ctx.meta:  # the command line beats RAY_ADDRESS, as it beats the configuration
        os.environ[ADDRESS_ENV] = ctx.meta[_ADDRESS_KEY]
    settings = load_settings(
        options.get("config"),
        overrides={
            "storage": {"root": options.get("root")},
            "ray": {"address": ctx.meta.get(_ADDRESS_KEY), "verbose": options.get("verbose") or None},
        },
    )
    log.debug("settings: %s", settings.model_dump_json())
    check_root(settings.storage.root, allow_unsafe_writes=settings.storage.allow_unsafe_writes)
    return settings


def loaded_pipelines(names: Sequence[str]) -> list[Pipeline]:
    """The pipelines named (`--pipeline`), loaded; their code, and the engine's, imported only when some are."""
    if not names:
        return []
    from engine.entrypoints import load_pipeline

    return [load_pipeline(name) for name in names]


def reported(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn engine errors into a one-line reason on stderr (hidden values and URL credentials redacted) and exit
    status 1; any other exception likewise, named by its type, with the traceback only under --verbose."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EngineError as err:
            fail(str(err))
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as err:
            if click.get_current_context().find_root().params.get("verbose"):
                raise
            fail(f"unexpected {type(err).__name__}: {err}; run with `medallion --verbose ...` for the traceback")

    return run


def fail(message: str) -> NoReturn:
    """Print `message` as one `error:` line on stderr (secrets redacted, markup escaped) and exit with status 1."""
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    errors.print(f"[red]error:[/red] {escape(redact_text(line))}", soft_wrap=True)
    sys.exit(1)


class Bar:
    """A rich progress bar of tables (or views) done out of a total, on stderr."""

    def __init__(self, progress: Progress, total: int, description: str) -> None:
        self.progress = progress
        self.task = progress.add_task(description, total=total)

    def update(self, text: str, done: int | None = None) -> None:
        self.progress.update(self.task, description=text, **({"completed": done} if done is not None else {}))


@contextlib.contextmanager
def display(total: int, quiet: bool = False, description: str = "starting Ray") -> Iterator[Status | Bar | None]:
    """What shows a run's progress: a progress bar on stderr when it is a terminal, else the status line
    (shown only on a terminal); nothing when `quiet`."""
    if quiet:
        yield None
    elif errors.is_terminal:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=errors, transient=True,
                      redirect_stdout=console.is_terminal, redirect_stderr=True) as progress:
            yield Bar(progress, total, description)
    else:
        with console.status(description) as status:
            yield status

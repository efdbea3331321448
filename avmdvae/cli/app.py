"""The Typer application and the `command` decorator every sub-command uses.

`command` turns an `AvmdvaeError` raised anywhere below a command into one red line on stderr and
exit code 2, with no traceback. Any other exception is a bug and keeps its traceback. (Notes and
warnings of the library are one-line messages of the `avmdvae.*` loggers, on stderr.)

Importing this module (and every command module) stays light: the commands import the library
(torch, numpy...) in their bodies, so that `--help` and argument errors answer at once.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as Bars
from typer.core import TyperCommand, TyperGroup, TyperOption

from avmdvae.constants import Progress
from avmdvae.errors import AvmdvaeError
from avmdvae.runtime import keep_freed_memory


class _FlagsTakeNoValue:
    """Typer shows the type of a flag (a bool option, --help) as `<bool>`, as if it took a value: show none."""

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if isinstance(param, TyperOption) and param.is_flag:
                param.metavar = ""
        return params


class Command(_FlagsTakeNoValue, TyperCommand):
    """Every avmdvae command (see `command`)."""


class Group(_FlagsTakeNoValue, TyperGroup):
    """The avmdvae app and its groups (`train`)."""


app = typer.Typer(
    cls=Group,
    name="avmdvae",
    help="Audiovisual speech representation learning and manipulation with the VQ-MDVAE.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(cls=Group, help="Train the stage-1 VQ-VAEs, the MDVAE, or the unimodal VQ-DSAE baselines.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Print `AvmdvaeError`s as one line and exit 2 instead of showing a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        keep_freed_memory()  # every command is heavy tensor work: reuse freed memory (see runtime.py)
        try:
            return fn(*args, **kwargs)
        except AvmdvaeError as e:
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: outputs written so far are complete; re-run to resume.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def command(*args: Any, typer_app: typer.Typer | None = None, **kwargs: Any) -> Callable[[F], F]:
    """Register a sub-command of `typer_app` (default: the top-level app) wrapped in `user_errors`."""

    def decorator(fn: F) -> F:
        (typer_app or app).command(*args, cls=Command, **kwargs)(user_errors(fn))
        return fn

    return decorator


def progress_lines() -> Progress:
    """A progress callback as plain lines on stderr, one per named step and tenth done (for log files)."""
    shown: dict[str, int] = {}

    def update(name: str, done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if shown.get(name) != tenth:
            shown[name] = tenth
            err_console.print(f"   {name}: {done}/{total}", highlight=False, soft_wrap=True)

    return update


@contextlib.contextmanager
def progress_bars(quiet: bool = False, lines: bool | None = None) -> Iterator[Progress]:
    """A progress callback for the Python API: one rich bar per named step on stderr, or plain lines
    (`progress_lines`) where `lines` asks for them or, by default, where stderr is not a terminal."""
    if quiet:
        yield lambda name, done, total: None
        return
    if lines is None:
        lines = not err_console.is_terminal
    if lines:
        yield progress_lines()
        return
    bars = Bars(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=err_console, transient=True)
    tasks: dict[str, Any] = {}

    def update(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = bars.add_task(name[:28], total=total)
        bars.update(tasks[name], completed=done, total=total)

    with bars:
        yield update

"""`avmdvae train vqvae | mdvae | dsae`, and the run-directory branch of `avmdvae info`.

Each command resolves the config (defaults <- --config YAML <- --set / shortcut options), builds the
task adapter and hands it to the one training loop (avmdvae.training.loop.train). Under `torchrun`
the same commands run distributed data parallel.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column

from avmdvae.cli.app import command, console, err_console, train_app
from avmdvae.cli.manipulate import ThreadsOpt
from avmdvae.cli.preprocess import info_handler
from avmdvae.errors import ConfigError
from avmdvae.training.config import resolve, to_yaml
from avmdvae.training.progress import PlainReporter, Reporter, Snapshot, format_metrics

if TYPE_CHECKING:  # torch-heavy modules are imported where used: `--help` must not wait for torch
    from avmdvae.training.loop import RunResult, Task

CONFIG_HELP = "YAML config (see models/*.yaml); defaults are the paper's reference sizes."
SET_HELP = "Override one config key, e.g. --set train.lr=1e-3 --set model.n_codes=256 (repeatable)."
DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda or mps."
BF16_HELP = "bf16 autocast (CUDA or CPU); same as --set train.precision=bf16."
RESUME_HELP = "Continue the run in -o from its last checkpoint (ends where an uninterrupted run ends)."
MAX_STEPS_HELP = (
    "Stop once the run reaches this step (counted from its start): validate, save, and say how to go on."
)
TIME_LIMIT_HELP = "Stop after this much training time, e.g. 90m, 2h, 1h30m, 3600 (s): validate, save, say so."
EXIT_SIGTERM, EXIT_SIGINT = 143, 130  # 128 + signal number, as a shell reports a job ended by it
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?")


def parse_duration(text: str) -> float:
    """'90m' -> 5400.0, '1h30m', '2h', '45s', '3600' (seconds); anything else is a ConfigError."""
    m = _DURATION.fullmatch(text.strip().lower())
    if not text.strip() or m is None or not any(m.groups()):
        raise ConfigError(f"--time-limit {text!r}: give a duration like 90m, 2h, 1h30m or 3600 (seconds)")
    h, mins, secs = (float(g) if g else 0.0 for g in m.groups())
    return 3600 * h + 60 * mins + secs


class _Notes(Reporter):
    """-q: no progress, but notes (warnings, where the checkpoint is) still reach stderr."""

    def note(self, message: str) -> None:
        err_console.print(f"[yellow]note:[/] {message}", highlight=False, soft_wrap=True)


class _RichReporter(_Notes):
    """On a terminal: one bar over the run's steps with the latest labelled metrics, a line per
    validation, a transient bar per stage-1 feature cache."""

    def __init__(self) -> None:
        # the step, epoch and ETA keep their width; the figures get the rest of the line (the full line
        # is printed at each validation)
        self.bars = Progress(
            TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True, min_width=12)),
            BarColumn(bar_width=20),
            MofNCompleteColumn(table_column=Column(no_wrap=True)),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
            console=console,
            transient=False,
            expand=True,
        )
        self.run_bar: Any = None
        self.feature_bars: dict[str, Any] = {}

    def begin(self, start_step: int, end_step: int, per_epoch: int, epochs: int) -> None:
        self.run_bar = self.bars.add_task("training", total=end_step, completed=start_step, info="")
        self.bars.start()

    def features(self, name: str, done: int, total: int) -> None:
        if name not in self.feature_bars:
            self.feature_bars[name] = self.bars.add_task(name, total=total, info="clips")
            self.bars.start()
        self.bars.update(self.feature_bars[name], completed=done)
        if done == total:
            self.bars.remove_task(self.feature_bars.pop(name))

    def train(self, snap: Snapshot) -> None:
        self.bars.update(
            self.run_bar,
            completed=snap.step,
            description=f"epoch {snap.epoch}/{snap.epochs}",
            info=format_metrics(snap.metrics, snap.kind, snap.modality),
        )

    def validation(self, snap: Snapshot, best: bool) -> None:
        self.bars.console.print(
            f"validation at step {snap.step}, epoch {snap.epoch}/{snap.epochs}: "
            f"{format_metrics(snap.metrics, snap.kind, snap.modality)}" + (" (best so far)" if best else ""),
            highlight=False,
            soft_wrap=True,
        )

    def end(self) -> None:
        self.bars.stop()


def _reporter(quiet: bool) -> Reporter:
    """Rich display on a terminal; plain complete lines, flushed, when output goes to a file or pipe."""
    if quiet:
        return _Notes()
    if console.is_terminal:
        return _RichReporter()
    return PlainReporter()


class _Terminated(Exception):
    """SIGTERM outside the training loop (start-up, stage-1 feature cache)."""


@contextmanager
def _sigterm_ends_cleanly(resume_command: str) -> Iterator[None]:
    """Outside the loop's own handling (start-up, feature cache), SIGTERM ends the command with one
    line and exit code 143, no traceback: what was written so far (cached features, checkpoints) is
    complete and kept."""

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except _Terminated:
        err_console.print(
            f"[yellow]stopped by SIGTERM[/] before training started; what was written is complete. "
            f"Start again with: {resume_command}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_SIGTERM) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(
    make_task: Any,
    output: Path,
    device: str,
    resume: bool,
    quiet: bool,
    max_steps: int | None,
    time_limit: str | None,
    threads: int | None,
    resume_args: list[str],
) -> None:
    """Build the task, train it, and report how the run ended (exit 143 / 130 after SIGTERM / Ctrl-C)."""
    limit = parse_duration(time_limit) if time_limit is not None else None
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"--max-steps {max_steps}: give a positive number of steps")
    if threads is not None:
        import torch

        torch.set_num_threads(max(1, threads))
    from avmdvae.training.loop import RunOptions, train

    resume_command = shlex.join(["avmdvae", "train", *resume_args, "-o", str(output), "--resume"]
                                + (["--device", device] if device != "auto" else []))
    with _sigterm_ends_cleanly(resume_command):
        task: Task = make_task()
        options = RunOptions(
            device=device, resume=resume, reporter=_reporter(quiet), max_steps=max_steps, time_limit=limit
        )
        result = train(task, output, options)
    _finish(result, resume_command)


def _overrides(
    sets: list[str] | None, epochs: int | None, batch_size: int | None, seed: int | None, bf16: bool
) -> list[str]:
    out = list(sets or [])
    for key, value in (("epochs", epochs), ("batch_size", batch_size), ("seed", seed)):
        if value is not None:
            out.append(f"train.{key}={value}")
    if bf16:
        out.append("train.precision=bf16")
    return out


def _config(
    kind: str, modality: str | None, output: Path, config: Path | None, overrides: list[str], resume: bool
) -> dict[str, Any]:
    """On --resume the stored config is the base, so that `--resume` alone continues the same run."""
    from avmdvae.outputs import check_outputs
    from avmdvae.training import checkpoint as ck

    check_outputs({}, folders={"-o": output})
    base = None
    if resume and (output / ck.LAST).is_file():
        base = ck.load_checkpoint(output / ck.LAST)["config"]
    return resolve(kind, modality, config, overrides, base=base)


def _finish(result: RunResult, resume_command: str) -> None:
    from avmdvae.training.checkpoint import LAST
    from avmdvae.training.loop import STOP_MAX_STEPS, STOP_SIGINT, STOP_SIGTERM, STOP_TIME_LIMIT

    last = result.run_dir / LAST
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        if result.stopped is None:
            out, text = console, (f"[green]done[/]: {result.epochs} epochs, {result.step} steps; best validation "
                                  f"loss {result.best_val:.5g}; run in {result.run_dir}")
        elif result.stopped in (STOP_MAX_STEPS, STOP_TIME_LIMIT):
            out, text = console, (f"[yellow]stopped[/] at step {result.step} (--{result.stopped} reached), "
                                  f"validated and saved in {last}; continue with: {resume_command}")
        else:
            out, text = err_console, (f"[yellow]stopped by {result.stopped}[/] after step {result.step}: {last} "
                                      f"holds that step; resume with: {resume_command}")
        out.print(text, highlight=False, soft_wrap=True)
    if result.stopped in (STOP_SIGTERM, STOP_SIGINT):
        raise typer.Exit(EXIT_SIGTERM if result.stopped == STOP_SIGTERM else EXIT_SIGINT)


Corpus = typer.Argument(..., help="Preprocessed corpus folder (avmdvae preprocess).", show_default=False)
Output = typer.Option(..., "-o", "--output", help="Run directory (checkpoints, metrics, config).")


@command("vqvae", typer_app=train_app)
def train_vqvae(
    corpus: Path = Corpus,
    modality: str = typer.Option(..., "--modality", help="audio or visual."),
    output: Path = Output,
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    epochs: int | None = typer.Option(None, "--epochs", help="Same as --set train.epochs=N."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch size."),
    seed: int | None = typer.Option(None, "--seed", help="Same as --set train.seed=N."),
    resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
    bf16: bool = typer.Option(False, "--bf16", help=BF16_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    max_steps: int | None = typer.Option(None, "--max-steps", help=MAX_STEPS_HELP),
    time_limit: str | None = typer.Option(None, "--time-limit", help=TIME_LIMIT_HELP),
    threads: int | None = ThreadsOpt,
) -> None:
    """Stage 1: train the VQ-VAE of one modality on single frames."""
    from avmdvae.training.tasks import VQVAETask

    cfg = _config("vqvae", modality, output, config, _overrides(sets, epochs, batch_size, seed, bf16), resume)
    _run(
        lambda: VQVAETask(corpus, modality, cfg), output, device, resume, quiet, max_steps, time_limit, threads,
        ["vqvae", str(corpus), "--modality", modality],
    )


@command("mdvae", typer_app=train_app)
def train_mdvae(
    corpus: Path = Corpus,
    audio_vqvae: Path = typer.Option(..., "--audio-vqvae", help="Run directory of the audio VQ-VAE."),
    visual_vqvae: Path = typer.Option(..., "--visual-vqvae", help="Run directory of the visual VQ-VAE."),
    output: Path = Output,
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    epochs: int | None = typer.Option(None, "--epochs", help="Same as --set train.epochs=N."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch size."),
    seed: int | None = typer.Option(None, "--seed", help="Same as --set train.seed=N."),
    resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
    bf16: bool = typer.Option(False, "--bf16", help=BF16_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    max_steps: int | None = typer.Option(None, "--max-steps", help=MAX_STEPS_HELP),
    time_limit: str | None = typer.Option(None, "--time-limit", help=TIME_LIMIT_HELP),
    threads: int | None = ThreadsOpt,
) -> None:
    """Stage 2: train the MDVAE on the cached continuous features of both stage-1 VQ-VAEs."""
    from avmdvae.training.tasks import MDVAETask

    cfg = _config("mdvae", None, output, config, _overrides(sets, epochs, batch_size, seed, bf16), resume)
    _run(
        lambda: MDVAETask(corpus, audio_vqvae, visual_vqvae, cfg), output, device, resume, quiet, max_steps,
        time_limit, threads,
        ["mdvae", str(corpus), "--audio-vqvae", str(audio_vqvae), "--visual-vqvae", str(visual_vqvae)],
    )


@command("dsae", typer_app=train_app)
def train_dsae(
    corpus: Path = Corpus,
    modality: str = typer.Option(..., "--modality", help="audio or visual."),
    vqvae: Path = typer.Option(..., "--vqvae", help="Run directory of that modality's VQ-VAE."),
    output: Path = Output,
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    epochs: int | None = typer.Option(None, "--epochs", help="Same as --set train.epochs=N."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch size."),
    seed: int | None = typer.Option(None, "--seed", help="Same as --set train.seed=N."),
    resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
    bf16: bool = typer.Option(False, "--bf16", help=BF16_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    max_steps: int | None = typer.Option(None, "--max-steps", help=MAX_STEPS_HELP),
    time_limit: str | None = typer.Option(None, "--time-limit", help=TIME_LIMIT_HELP),
    threads: int | None = ThreadsOpt,
) -> None:
    """Baseline: train the unimodal VQ-DSAE of one modality on its VQ-VAE's cached features."""
    from avmdvae.training.tasks import DSAETask

    cfg = _config("dsae", modality, output, config, _overrides(sets, epochs, batch_size, seed, bf16), resume)
    _run(
        lambda: DSAETask(corpus, modality, vqvae, cfg), output, device, resume, quiet, max_steps, time_limit,
        threads, ["dsae", str(corpus), "--modality", modality, "--vqvae", str(vqvae)],
    )


# ------------------------------------------------------------------------------------ info RUN
def run_summary(path: str | Path) -> str:
    """What `avmdvae info RUN` prints: model, progress, corpus, stage-1 hashes, metrics, config."""
    from avmdvae.training import checkpoint as ck
    from avmdvae.training.loop import METRICS_FILE

    path = Path(path)
    lines: list[str] = [f"run {path}"]
    state = None
    for name in (ck.LAST, ck.BEST):
        p = path / name
        if p.is_file():
            st = ck.load_checkpoint(p)
            if state is None:
                state, state_path = st, p
            lines.append(
                f"  {name}: epoch {st['epoch']}, step {st['step']}, sha256 {ck.sha256_file(p)[:16]}"
                + (
                    f", validation loss {st['metrics']['val'].get('loss', float('nan')):.5g}"
                    if st["metrics"]["val"]
                    else ""
                )
            )
    assert state is not None
    lines.insert(1, f"  model: {state['kind']}" + (f" ({state['modality']})" if state["modality"] else ""))
    lines.append(f"  corpus: {state['corpus']['path']}")
    lines.append("    params: " + ", ".join(f"{k}={v}" for k, v in state["corpus"]["params"].items()))
    known = state.get("domain") or {}
    if known.get("corpus"):
        lines.append(f"    trained on: {known['corpus']}")
    for m in ("audio", "visual"):
        if m in known:
            ref = known[m]
            psnr = f" (PSNR {ref['psnr_db']:.1f} dB)" if "psnr_db" in ref else ""
            lines.append(
                f"  validation error per frame ({m}): {ref['metric']} median {ref['median']:.4g}{psnr}, "
                f"90th percentile {ref['p90']:.4g}, {ref['frames']} frames"
            )
    for m, ref in state.get("stage1", {}).items():
        lines.append(f"  stage-1 {m}: {ref['checkpoint']} (sha256 {ref['sha256']}){_stage1_status(state_path, ref)}")
    for split in ("train", "val"):
        metrics = state["metrics"].get(split) or {}
        if metrics:
            lines.append(f"  last {split}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    metrics_path = path / METRICS_FILE
    if metrics_path.is_file():
        n = sum(1 for ln in metrics_path.read_text().splitlines() if ln.strip())
        lines.append(f"  metrics log: {metrics_path} ({n} lines)")
    lines.append("  config:")
    lines += ["    " + ln for ln in to_yaml(state["config"]).splitlines()]
    lines.append(f"  versions: {json.dumps(state.get('versions', {}))}")
    return "\n".join(lines)


def _stage1_status(checkpoint: Path, ref: dict[str, Any]) -> str:
    """'' when the stage-1 checkpoint is where it was trained and unchanged; else what is wrong."""
    from avmdvae.training import checkpoint as ck

    try:
        found = ck.stage1_checkpoint(checkpoint, ref)
    except ConfigError:
        return " -- NOT FOUND (nor in a sibling run folder): this run cannot be used until it is back"
    if ck.sha256_file(found) != ref["sha256"]:
        return f" -- CHANGED or damaged since training ({found} has another sha256): use the original run"
    return "" if found == Path(ref["checkpoint"]) else f" (found at {found})"


def print_run_info(path: str | Path) -> None:
    console.print(run_summary(path), highlight=False, markup=False, soft_wrap=True)


@info_handler
def _info_run(path: Path) -> bool:
    """`avmdvae info RUN` (a run directory, or one of its .pt checkpoints)."""
    from avmdvae.training import checkpoint as ck

    if path.is_file() and path.suffix == ".pt" and ck.is_run_dir(path.parent):
        path = path.parent
    if not ck.is_run_dir(path):
        return False
    print_run_info(path)
    return True

"""`avmdvae train vqvae | mdvae | dsae`, and the run-directory branch of `avmdvae info`.

Each command resolves the config (defaults <- --config YAML <- --set / shortcut options), builds the
task adapter and hands it to the one training loop (avmdvae.training.loop.train). Under `torchrun`
the same commands run distributed data parallel.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

from avmdvae.cli.app import command, console, train_app
from avmdvae.cli.preprocess import info_handler
from avmdvae.training import checkpoint as ck
from avmdvae.training.config import resolve, to_yaml
from avmdvae.training.loop import METRICS_FILE, RunOptions, RunResult, train
from avmdvae.training.tasks import DSAETask, MDVAETask, VQVAETask

CONFIG_HELP = "YAML config (see models/*.yaml); defaults are the paper's reference sizes."
SET_HELP = "Override one config key, e.g. --set train.lr=1e-3 --set model.n_codes=256 (repeatable)."
DEVICE_HELP = "auto (cuda, then mps, then cpu), cpu, cuda or mps."
BF16_HELP = "bf16 autocast (CUDA or CPU); same as --set train.precision=bf16."
RESUME_HELP = "Continue the run in -o from its last checkpoint (ends where an uninterrupted run ends)."


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
    base = None
    if resume and (output / ck.LAST).is_file():
        base = ck.load_checkpoint(output / ck.LAST)["config"]
    return resolve(kind, modality, config, overrides, base=base)


def _finish(result: RunResult) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    val = result.last_val
    console.print(
        f"[green]done[/]: {result.epochs} epochs, {result.step} steps; best validation loss "
        f"{result.best_val:.5g}; last {', '.join(f'{k}={v:.4g}' for k, v in val.items())}; "
        f"run in {result.run_dir}",
        highlight=False,
        soft_wrap=True,
    )


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
    epochs: int | None = typer.Option(None, "--epochs"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch size."),
    seed: int | None = typer.Option(None, "--seed"),
    resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
    bf16: bool = typer.Option(False, "--bf16", help=BF16_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Stage 1: train the VQ-VAE of one modality on single frames."""
    cfg = _config("vqvae", modality, output, config, _overrides(sets, epochs, batch_size, seed, bf16), resume)
    task = VQVAETask(corpus, modality, cfg)
    _finish(train(task, output, RunOptions(device=device, resume=resume, progress=not quiet)))


@command("mdvae", typer_app=train_app)
def train_mdvae(
    corpus: Path = Corpus,
    audio_vqvae: Path = typer.Option(..., "--audio-vqvae", help="Run directory of the audio VQ-VAE."),
    visual_vqvae: Path = typer.Option(..., "--visual-vqvae", help="Run directory of the visual VQ-VAE."),
    output: Path = Output,
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    epochs: int | None = typer.Option(None, "--epochs"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch size."),
    seed: int | None = typer.Option(None, "--seed"),
    resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
    bf16: bool = typer.Option(False, "--bf16", help=BF16_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Stage 2: train the MDVAE on the cached continuous features of both stage-1 VQ-VAEs."""
    cfg = _config("mdvae", None, output, config, _overrides(sets, epochs, batch_size, seed, bf16), resume)
    task = MDVAETask(corpus, audio_vqvae, visual_vqvae, cfg)
    _finish(train(task, output, RunOptions(device=device, resume=resume, progress=not quiet)))


@command("dsae", typer_app=train_app)
def train_dsae(
    corpus: Path = Corpus,
    modality: str = typer.Option(..., "--modality", help="audio or visual."),
    vqvae: Path = typer.Option(..., "--vqvae", help="Run directory of that modality's VQ-VAE."),
    output: Path = Output,
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    sets: list[str] | None = typer.Option(None, "--set", help=SET_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    epochs: int | None = typer.Option(None, "--epochs"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Global batch size."),
    seed: int | None = typer.Option(None, "--seed"),
    resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
    bf16: bool = typer.Option(False, "--bf16", help=BF16_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
) -> None:
    """Baseline: train the unimodal VQ-DSAE of one modality on its VQ-VAE's cached features."""
    cfg = _config("dsae", modality, output, config, _overrides(sets, epochs, batch_size, seed, bf16), resume)
    task = DSAETask(corpus, modality, vqvae, cfg)
    _finish(train(task, output, RunOptions(device=device, resume=resume, progress=not quiet)))


# ------------------------------------------------------------------------------------ info RUN
def run_summary(path: str | Path) -> str:
    """What `avmdvae info RUN` prints: model, progress, corpus, stage-1 hashes, metrics, config."""
    path = Path(path)
    lines: list[str] = [f"run {path}"]
    state = None
    for name in (ck.LAST, ck.BEST):
        p = path / name
        if p.is_file():
            st = ck.load_checkpoint(p)
            state = state or st
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
    for m, ref in state.get("stage1", {}).items():
        lines.append(f"  stage-1 {m}: {ref['checkpoint']} (sha256 {ref['sha256']})")
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


def print_run_info(path: str | Path) -> None:
    console.print(run_summary(path), highlight=False, markup=False, soft_wrap=True)


@info_handler
def _info_run(path: Path) -> bool:
    """`avmdvae info RUN` (a run directory, or one of its .pt checkpoints)."""
    if path.is_file() and path.suffix == ".pt" and ck.is_run_dir(path.parent):
        path = path.parent
    if not ck.is_run_dir(path):
        return False
    print_run_info(path)
    return True

"""What a training run tells the person running it: progress, validation results and notes.

The loop (avmdvae.training.loop) calls a `Reporter` on rank 0 only. `Reporter` itself prints nothing
but notes (through `logging`); `PlainReporter` prints complete lines as they happen, flushed, for
output that goes to a file or a pipe (nohup, cluster job logs). The CLI draws a rich display on a
terminal (avmdvae.cli.train). Metric names get plain labels here so that every display says what a
number is: `rec` is the reconstruction error (face MSE in [0, 1] units, or the Itakura-Saito
divergence of spectra), `usage` the fraction of the codebook's codes used in the batch.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from typing import TextIO

log = logging.getLogger("avmdvae.training")

# Metrics kept out of the progress lines (they stay in metrics.jsonl), and the order of the others:
# these first, then any other (stage-2 loss terms), then lr and throughput.
_HIDDEN = frozenset({"grad_norm"})
_FIRST = ("loss", "rec", "psnr_db", "commit", "usage", "perplexity", "restarts", "elbo", "kl_weight")
_LAST = ("lr", "frames_per_s")
_LABELS = {
    "loss": "loss",
    "commit": "commitment",
    "perplexity": "code perplexity",
    "usage": "codebook usage",
    "restarts": "codes restarted",
    "psnr_db": "face PSNR",
    "lr": "lr",
    "frames_per_s": "frames/s",
    "elbo": "ELBO",
    "kl_weight": "KL weight",
}
_REC = {"visual": "rec (face MSE)", "audio": "rec (Itakura-Saito)"}


def label(name: str, kind: str, modality: str | None) -> str:
    """The plain name of a logged metric, e.g. 'rec' of a visual VQ-VAE -> 'rec (face MSE)'."""
    if name == "rec" and kind == "vqvae" and modality in _REC:
        return _REC[modality]
    if name.startswith("kl_") and name != "kl_weight":  # stage 2: KL divergence of one latent (nats)
        return f"KL({name[3:]})"
    if name.startswith("rec_"):  # stage 2: negative log-likelihood of one modality's features
        return f"rec {name[4:]} (-log-lik.)"
    return _LABELS.get(name, name)


def _value(name: str, v: float) -> str:
    if name == "usage":
        return f"{100 * v:.0f}%"
    if name == "psnr_db":
        return f"{v:.2f} dB"
    if name == "frames_per_s":
        return f"{v:.0f}"
    if name == "lr":
        return f"{v:.3g}"
    return f"{v:.4g}"


def format_metrics(metrics: dict[str, float], kind: str, modality: str | None) -> str:
    """'loss 0.0123 | rec (face MSE) 0.0101 | face PSNR 19.96 dB | ...' (loss terms first, lr and
    throughput last)."""
    rest = [k for k in metrics if k not in _HIDDEN and k not in _FIRST and k not in _LAST]
    keys = [k for k in _FIRST if k in metrics] + rest + [k for k in _LAST if k in metrics]
    return " | ".join(f"{label(k, kind, modality)} {_value(k, metrics[k])}" for k in keys)


def clock(seconds: float) -> str:
    """3725.2 -> '1:02:05'."""
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class Snapshot:
    """Where the run is, given to the reporter every `train.log_every` steps and after validation."""

    kind: str
    modality: str | None
    step: int  # global steps done
    end_step: int  # the step the run ends at (last epoch, or --max-steps)
    epoch: int  # the epoch in progress (1-based), or the one just validated
    epochs: int
    metrics: dict[str, float]
    elapsed_s: float  # training time in this process
    eta_s: float | None  # time left to end_step at this process's pace (None before it is known)

    def where(self) -> str:
        pct = 100.0 * self.step / max(1, self.end_step)
        return f"step {self.step}/{self.end_step} ({pct:.0f}%) epoch {self.epoch}/{self.epochs}"

    def eta(self) -> str:
        return "ETA " + ("?" if self.eta_s is None or not math.isfinite(self.eta_s) else clock(self.eta_s))


class Reporter:
    """Silent progress; notes go to the `avmdvae.training` logger. Subclass to display the run."""

    def begin(self, start_step: int, end_step: int, per_epoch: int, epochs: int) -> None:
        """Training starts at `start_step` (0, or where a resumed run left off)."""

    def features(self, name: str, done: int, total: int) -> None:
        """Stage 2: `done` of `total` clips encoded into the stage-1 feature cache."""

    def train(self, snap: Snapshot) -> None:
        """Mean training metrics over the last `train.log_every` steps."""

    def validation(self, snap: Snapshot, best: bool) -> None:
        """Validation metrics after an epoch (or at a stop); `best`: lowest validation loss so far."""

    def note(self, message: str) -> None:
        """Something the person should know (a warning, where the checkpoint is)."""
        log.warning(message)

    def end(self) -> None:
        """Training ended (normally, stopped or failed)."""


class PlainReporter(Reporter):
    """Complete lines, flushed as they happen: for a log file or a pipe."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def _print(self, line: str) -> None:
        out = self.stream or sys.stdout
        out.write(line + "\n")
        out.flush()

    def begin(self, start_step: int, end_step: int, per_epoch: int, epochs: int) -> None:
        where = f" (resuming at step {start_step})" if start_step else ""
        self._print(f"training: {end_step} steps, {epochs} epochs of {per_epoch} steps{where}")

    def features(self, name: str, done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            self._print(f"{name}: {done}/{total} clips")

    def train(self, snap: Snapshot) -> None:
        self._print(f"{snap.where()} | {format_metrics(snap.metrics, snap.kind, snap.modality)} | {snap.eta()}")

    def validation(self, snap: Snapshot, best: bool) -> None:
        mark = " (best so far)" if best else ""
        self._print(
            f"validation at step {snap.step}, epoch {snap.epoch}/{snap.epochs}: "
            f"{format_metrics(snap.metrics, snap.kind, snap.modality)}{mark}"
        )

    def note(self, message: str) -> None:
        print(f"note: {message}", file=sys.stderr, flush=True)


__all__ = ["PlainReporter", "Reporter", "Snapshot", "clock", "format_metrics", "label"]

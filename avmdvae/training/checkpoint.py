"""Run directories and checkpoints.

A run directory (the `-o RUN` of `avmdvae train ...`) holds::

    RUN/last.pt         state at the end of the latest epoch (or mid-epoch, see train.checkpoint_every)
    RUN/best.pt         state at the epoch with the lowest validation loss
    RUN/config.yaml     the resolved config (for reading; the checkpoints carry their own copy)
    RUN/metrics.jsonl   one JSON object per logged train step / validation epoch
    RUN/tb/             TensorBoard events (when tensorboard is installed)

A checkpoint is a dict of tensors and plain containers only (loadable with weights_only=True)::

    format, format_version, kind ("vqvae"|"mdvae"|"dsae"), modality ("audio"|"visual"|None),
    config (nested dict), corpus {"path", "params"}, stage1 {modality: {"run", "checkpoint", "sha256",
    "config"}}, model (state_dict), optimizer, scaler (or None), rng {"torch", "cuda"},
    epoch (epochs completed), step_in_epoch (global batches done in epoch `epoch`), step (global),
    best_val, metrics {"train": {...}, "val": {...}}, versions {"torch", "avmdvae"},
    domain (stage 1: {"corpus": description, modality: validation error per frame}, avmdvae.domain)

All writes are atomic (temporary file + rename), so a kill never leaves a truncated checkpoint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from avmdvae.atomic import atomic_path
from avmdvae.errors import ConfigError
from avmdvae.models import build_model

CHECKPOINT_FORMAT = "avmdvae-checkpoint"
CHECKPOINT_VERSION = 1
LAST, BEST = "last.pt", "best.pt"
# 1 MiB reads: hashing a 100 MB checkpoint takes well under a second.
_HASH_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save to a temporary file next to `path`, then rename."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / LAST).is_file() or (path / BEST).is_file())


def checkpoint_path(run: str | Path, which: str = "best") -> Path:
    """RUN/best.pt (falling back to last.pt) or RUN/last.pt; a file path is returned as is."""
    run = Path(run)
    if run.is_file():
        return run
    if not run.is_dir():
        raise ConfigError(f"run directory {run} not found: pass the -o folder of an `avmdvae train` run")
    order = [BEST, LAST] if which == "best" else [LAST, BEST]
    for name in order:
        if (run / name).is_file():
            return run / name
    raise ConfigError(f"{run} has no checkpoint (best.pt / last.pt): train it first or check the path")


# Paragraphs of torch.load's weights_only error that are advice rather than the reason (the advice is
# to load the file unsafely, which a user should not do with a file they cannot read safely).
_TORCH_ADVICE = ("Weights only load failed", "Check the documentation", "Please file an issue", "In PyTorch 2.6")


def _load_error(e: Exception) -> str:
    """The whole reason torch.load gave, on one line, without torch's advice."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    reasons = [ln.removeprefix("WeightsUnpickler error: ") for ln in lines if not ln.startswith(_TORCH_ADVICE)]
    text = " ".join(reasons or lines)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load(weights_only=True) with format checks; problems are one-line ConfigErrors."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {path} not found: check the run directory") from None
    except Exception as e:  # unpickling errors come in many types
        why = _load_error(e)
        raise ConfigError(
            f"cannot read checkpoint {path} ({why}): it is not an avmdvae checkpoint or is damaged"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(
            f"{path} is not an avmdvae checkpoint: pass the -o folder of an `avmdvae train` run"
        )
    if state.get("format_version", 0) > CHECKPOINT_VERSION:
        raise ConfigError(
            f"{path} was written by a newer avmdvae (format {state['format_version']}): upgrade"
        )
    return state


# What inference needs; everything else (optimizer moments, scaler, RNG) only serves resuming.
INFERENCE_KEYS = ("format", "format_version", "kind", "modality", "config", "corpus", "stage1", "model",
                  "epoch", "step", "best_val", "metrics", "domain", "versions")


def slim_copy(src: str | Path, dst: str | Path, stage1_hashes: dict[str, str] | None = None,
              corpus_description: str | None = None) -> str:
    """Write an inference-only copy of checkpoint `src` to `dst` (about a third of the size: no
    optimizer state) and return its sha256. For a stage-2 checkpoint, `stage1_hashes` maps stage-1
    run names (e.g. "vqvae-audio") to the sha256 of their slimmed copies, which replace the recorded
    ones so that `LoadedRun.stage1_models` accepts the copies. The corpus path is dropped (it is
    machine-specific); its preprocessing parameters are kept. `corpus_description` replaces the
    training corpus' description of a stage-1 domain reference (which names local folders)."""
    state = {k: v for k, v in load_checkpoint(src).items() if k in INFERENCE_KEYS}
    state["corpus"] = {"path": "", "params": state["corpus"]["params"]}
    if corpus_description is not None and isinstance(state.get("domain"), dict):
        state["domain"] = {**state["domain"], "corpus": corpus_description}
    for ref in state.get("stage1", {}).values():
        name = Path(ref["run"]).name
        if stage1_hashes is None or name not in stage1_hashes:
            raise ConfigError(f"slim_copy: slim the stage-1 run {name} before {src}")
        ref["sha256"] = stage1_hashes[name]
        ref["run"], ref["checkpoint"] = name, str(Path(name) / Path(ref["checkpoint"]).name)
    save_checkpoint(dst, state)
    return sha256_file(dst)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Torch RNG states as tensors (the training loop draws randomness only from torch)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


@dataclass
class LoadedRun:
    """A trained model ready for inference (eval mode) and everything known about how it was made."""

    model: torch.nn.Module
    kind: str
    modality: str | None
    config: dict[str, Any]
    corpus: dict[str, Any]  # {"path": str, "params": PreprocessParams dict}
    stage1: dict[str, dict[str, Any]]  # modality -> {"run", "checkpoint", "sha256", "config"}
    checkpoint: Path
    sha256: str
    epoch: int
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)

    def stage1_models(self, device: str | torch.device = "cpu") -> dict[str, torch.nn.Module]:
        """Load the stage-1 VQ-VAEs this stage-2 run was trained on, checking their hashes."""
        out = {}
        for modality, ref in self.stage1.items():
            run = load_run(self._stage1_checkpoint(ref), device=device)
            if run.sha256 != ref["sha256"]:
                raise ConfigError(
                    f"stage-1 checkpoint {ref['checkpoint']} changed since {self.checkpoint} was trained "
                    "(sha256 differs): use the original stage-1 run"
                )
            out[modality] = run.model
        return out


    def _stage1_checkpoint(self, ref: dict[str, Any]) -> Path:
        return stage1_checkpoint(self.checkpoint, ref)


def stage1_checkpoint(checkpoint: Path, ref: dict[str, Any]) -> Path:
    """Where the stage-1 checkpoint `ref` of stage-2 `checkpoint` is now: its recorded path, or, when
    the runs were moved together (e.g. the shipped models/demo/), the sibling run folder of the same
    name. Comparing its sha256 with ref["sha256"] makes sure it is the same file either way."""
    recorded = Path(ref["checkpoint"])
    if recorded.exists():
        return recorded
    sibling = checkpoint.parent.parent / Path(ref["run"]).name / recorded.name
    if sibling.exists():
        return sibling
    raise ConfigError(
        f"stage-1 checkpoint {recorded} of {checkpoint} not found (nor {sibling}): "
        "keep stage-1 and stage-2 run folders side by side"
    )


def load_run(path: str | Path, which: str = "best", device: str | torch.device = "cpu") -> LoadedRun:
    """Load RUN/best.pt (or `which="last"`, or a .pt file) -> model in eval mode + metadata."""
    ckpt = checkpoint_path(path, which)
    state = load_checkpoint(ckpt, map_location="cpu")
    model = build_model(state["kind"], state["modality"], state["config"])
    load_model_state(model, state["model"], ckpt)
    model.to(device).eval()
    return LoadedRun(
        model=model,
        kind=state["kind"],
        modality=state["modality"],
        config=state["config"],
        corpus=state["corpus"],
        stage1=state.get("stage1", {}),
        checkpoint=ckpt,
        sha256=sha256_file(ckpt),
        epoch=state["epoch"],
        step=state["step"],
        metrics=state.get("metrics", {}),
    )


def load_model_state(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], where: Path | str) -> None:
    """load_state_dict with shape mismatches reported as one line."""
    if any(k.startswith("norm.") for k in model.state_dict()) and not any(k.startswith("norm.") for k in state_dict):
        raise ConfigError(
            f"checkpoint {where} is a stage-2 run from before avmdvae standardised its inputs (model core of "
            "December 2026): it cannot be loaded any more; train it again with `avmdvae train mdvae` (or dsae)"
        )
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:] or lines) or "mismatch"
        raise ConfigError(
            f"checkpoint {where} does not fit the model config ({detail}): use the matching config"
        ) from None

"""THE training loop, shared by every model kind (VQ-VAE, MDVAE, DSAE).

A `Task` (avmdvae.training.tasks) supplies what differs between kinds: the model, the train and
validation datasets, how a batch goes to the device, and the loss. Everything else is here, in one
readable function (nanoGPT-style): device and precision, DDP, deterministic data order, LR
schedule, gradient clipping, validation every epoch, atomic best/last checkpoints, exact resume,
metrics (JSONL, TensorBoard when installed), progress through a `Reporter` (avmdvae.training.progress),
a budget (`max_steps`, `time_limit`) and a clean stop on SIGTERM / Ctrl-C (the state after the last
finished step is saved, and the run says so).

Resume contract: data order is a function of (seed, epoch) only; the optimizer, GradScaler, torch
RNG state, global step and position inside the epoch are saved, and validation runs under a forked
RNG. A run killed and resumed with `--resume` therefore ends with exactly the parameters of an
uninterrupted run with the same seed (on the same device and precision).
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import avmdvae
from avmdvae import domain
from avmdvae.atomic import write_text
from avmdvae.errors import ConfigError
from avmdvae.models.seqvae import compile_model
from avmdvae.runtime import keep_freed_memory
from avmdvae.training import checkpoint as ck
from avmdvae.training.config import RESUMABLE_CHANGES, TrainSettings, diff, to_yaml, train_settings
from avmdvae.training.distributed import (
    DistInfo,
    GlobalBatchSampler,
    ShardSampler,
    all_reduce_sum,
    barrier,
    epoch_permutation,
    init_distributed,
    steps_per_epoch,
)
from avmdvae.training.progress import PlainReporter, Reporter, Snapshot

METRICS_FILE = "metrics.jsonl"
# Validation draws its noise (MDVAE sampling, ...) from its own fixed seed, so that it is
# reproducible and leaves the training RNG stream untouched (needed for exact resume).
_VAL_SEED_OFFSET = 7919
# train.kl_warmup_steps = -1 (the default): the KL weight ramps over this share of the run's steps.
KL_WARMUP_FRACTION = 0.2
# Why a run stopped before its last epoch (RunResult.stopped).
STOP_MAX_STEPS, STOP_TIME_LIMIT, STOP_SIGTERM, STOP_SIGINT = "max-steps", "time-limit", "SIGTERM", "SIGINT"
_SIGNAL_STOPS = {signal.SIGTERM: STOP_SIGTERM, signal.SIGINT: STOP_SIGINT}
_STOPS = (STOP_SIGTERM, STOP_SIGINT, STOP_MAX_STEPS, STOP_TIME_LIMIT)  # first one wins


class Task(Protocol):
    """What the loop needs from a model kind. See avmdvae.training.tasks for the three tasks."""

    kind: str
    modality: str | None
    config: dict[str, Any]
    corpus_info: dict[str, Any]  # {"path", "params"} stored in checkpoints
    stage1: dict[str, dict[str, Any]]  # stage-1 references stored in checkpoints ({} for stage 1)

    def build_model(self) -> nn.Module: ...
    def init_model(self, model: nn.Module, device: torch.device) -> None:
        """Data-dependent initialisation before step 0 of a fresh run (same on every rank)."""
        ...

    def train_dataset(self) -> Dataset:
        """len() = number of items; ds[list of indices] -> one collated batch (dict of tensors)."""
        ...

    def val_dataset(self) -> Dataset: ...
    def to_device(self, batch: Any, device: torch.device) -> Any: ...
    def loss(
        self, model: nn.Module, batch: Any, step: int, train: bool
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """-> (scalar loss to minimise, {metric name: scalar tensor or float}); metrics are batch means."""
        ...

    def frames(self, batch: Any) -> int:
        """Frames in this (per-rank) batch, for the frames/s throughput."""
        ...


@dataclass
class RunOptions:
    device: str = "auto"
    resume: bool = False
    progress: bool = True  # without a reporter: print progress lines (PlainReporter) or nothing
    tensorboard: bool = True  # write RUN/tb when tensorboard is installed
    reporter: Reporter | None = None  # where progress goes (rank 0); see avmdvae.training.progress
    max_steps: int | None = None  # stop once the run reaches this global step (validated, saved)
    time_limit: float | None = None  # stop after this many seconds of training (validated, saved)


@dataclass
class RunResult:
    run_dir: Path
    epochs: int
    step: int
    best_val: float
    last_val: dict[str, float] = field(default_factory=dict)
    last_train: dict[str, float] = field(default_factory=dict)
    stopped: str | None = None  # None: all epochs done; else STOP_MAX_STEPS, STOP_TIME_LIMIT, STOP_SIG*


class _Objective(nn.Module):
    """Wraps model + task loss in `forward`, so that DDP (which hooks `forward`) sees the whole loss."""

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.task.loss(self.model, batch, step, True)


def lr_at(step: int, total_steps: int, s: TrainSettings) -> float:
    """Linear warm-up to s.lr over s.warmup_steps, then cosine decay to s.lr * s.min_lr_ratio."""
    if s.warmup_steps > 0 and step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    span = max(1, total_steps - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def autocast_context(device: torch.device, precision: str) -> Any:
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class _Averager:
    """Running means of scalar metrics, weighted by batch size; reduced over ranks on demand."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, metrics: dict[str, Any], n: int) -> None:
        for k, v in metrics.items():
            value = float(v.detach().float().mean()) if torch.is_tensor(v) else float(v)
            self.sums[k] = self.sums.get(k, 0.0) + value * n
        self.count += n

    def means(self, reduce: bool = False, device: torch.device | None = None) -> dict[str, float]:
        keys = sorted(self.sums)
        if reduce:
            # Ranks with an empty validation shard still take part (their sums are zero).
            t = torch.tensor([self.sums[k] for k in keys] + [self.count], dtype=torch.float64)
            if torch.distributed.is_initialized() and torch.distributed.get_backend() == "nccl":
                t = all_reduce_sum(t.to(device)).cpu()
            else:
                t = all_reduce_sum(t)
            values, count = t[:-1].tolist(), t[-1].item()
        else:
            values, count = [self.sums[k] for k in keys], self.count
        return {k: v / max(count, 1) for k, v in zip(keys, values, strict=True)}


class _MetricsLog:
    """metrics.jsonl (appended and flushed per line) + TensorBoard when installed; rank 0 only."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after the checkpoint we resume from (they will be redone)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [
            ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step
        ]
        write_text(self.path, "".join(ln + "\n" for ln in keep))

    def write(self, split: str, step: int, epoch: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"split": split, "step": step, "epoch": epoch, "time": round(time.time(), 3), **metrics}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _loader(ds: Dataset, sampler: Any, workers: int, device: torch.device, seed: int) -> DataLoader:
    # An explicit generator keeps the DataLoader from drawing on the global torch RNG.
    g = torch.Generator()
    g.manual_seed(seed)
    # batch_size=None: the sampler yields lists of indices and the dataset returns whole batches
    # (one gather per batch instead of B item reads + collation).
    return DataLoader(
        ds,
        sampler=sampler,
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        generator=g,
    )


@torch.no_grad()
def evaluate(
    task: Task,
    model: nn.Module,
    ds: Dataset,
    s: TrainSettings,
    dist_info: DistInfo,
    device: torch.device,
    step: int,
) -> dict[str, float]:
    """Mean validation metrics over the whole validation split (sharded over ranks)."""
    model.eval()
    avg = _Averager()
    sampler = ShardSampler(len(ds), s.batch_size, dist_info, s.max_val_batches)  # type: ignore[arg-type]
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(s.seed + _VAL_SEED_OFFSET)
        for batch in _loader(ds, sampler, s.num_workers, device, s.seed):
            if _batch_len(batch) == 0:
                continue
            batch = task.to_device(batch, device)
            with autocast_context(device, s.precision):
                loss, metrics = task.loss(model, batch, step, False)
            avg.add({"loss": loss, **metrics}, task.frames(batch))
    model.train()
    return avg.means(reduce=dist_info.enabled, device=device)


def _batch_len(batch: Any) -> int:
    if isinstance(batch, dict):
        for v in batch.values():
            if torch.is_tensor(v):
                return len(v)
    return len(batch)


def train(task: Task, run_dir: str | Path, options: RunOptions | None = None) -> RunResult:
    """Train `task`'s model into `run_dir` (see checkpoint.py for the layout). Returns a summary."""
    options = options or RunOptions()
    run_dir = Path(run_dir)
    config = task.config
    s = train_settings(config)
    dist_info, device = init_distributed(options.device)
    main = dist_info.is_main
    reporter = options.reporter or (PlainReporter() if options.progress else Reporter())
    if not main:
        reporter = Reporter()
    keep_freed_memory()
    if s.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision fp16 needs CUDA: use bf16 (--bf16) or fp32 on CPU/MPS")

    # ---- resume or fresh start
    resume_state = None
    last_path = run_dir / ck.LAST
    if last_path.exists():
        if not options.resume:
            raise ConfigError(
                f"{run_dir} already holds a run: pass --resume to continue it, or choose another -o"
            )
        resume_state = ck.load_checkpoint(last_path, map_location="cpu")
        _check_resumable(resume_state, task, run_dir)
    elif options.resume:
        reporter.note(f"{run_dir} has no checkpoint yet; starting from scratch")

    prepare = getattr(task, "prepare_features", None)
    if prepare is not None:  # stage 2: stage-1 features of the corpus, computed once and cached
        prepare(device, dist_info, reporter.features)

    # ---- model, optimiser, precision
    torch.manual_seed(s.seed)  # same initial weights on every rank
    model = task.build_model().to(device)
    if resume_state is None:
        task.init_model(model, device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=s.lr,
        betas=tuple(s.betas),  # type: ignore[arg-type]
        weight_decay=s.weight_decay,
        fused=device.type in ("cpu", "cuda"),  # one kernel for all parameters instead of one per op
    )
    scaler = torch.amp.GradScaler(device.type, enabled=s.precision == "fp16")
    # All ranks share one RNG stream: tasks draw noise for the whole global batch and keep their
    # rows, and the quantiser broadcasts its random restarts, so the streams never diverge.
    torch.manual_seed(s.seed + 1)
    epoch, step_in_epoch, step, best_val = 0, 0, 0, math.inf
    if resume_state is not None:
        ck.load_model_state(model, resume_state["model"], last_path)
        optimizer.load_state_dict(resume_state["optimizer"])
        if resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        ck.set_rng_state(resume_state["rng"], device)
        epoch, step_in_epoch = resume_state["epoch"], resume_state["step_in_epoch"]
        step, best_val = resume_state["step"], resume_state["best_val"]

    objective: nn.Module = _Objective(compile_model(model) if s.compile else model, task)
    if dist_info.enabled:
        objective = nn.parallel.DistributedDataParallel(
            objective,
            device_ids=[device.index] if device.type == "cuda" else None,
        )

    train_ds, val_ds = task.train_dataset(), task.val_dataset()
    n_train = len(train_ds)  # type: ignore[arg-type]
    if n_train < s.batch_size:
        raise ConfigError(
            f"the {config['data']['train_split']} split has {n_train} items, fewer than one batch "
            f"({s.batch_size}): lower --batch-size or add data"
        )
    if len(val_ds) == 0:  # type: ignore[arg-type]
        raise ConfigError(
            f"the {config['data']['val_split']} split of the corpus is empty: validation needs "
            "held-out clips "
            "(re-run preprocess with a validation split)"
        )
    per_epoch = steps_per_epoch(n_train, s.batch_size, s.max_steps_per_epoch)
    total_steps = per_epoch * s.epochs
    if options.max_steps is not None and step >= options.max_steps:
        raise ConfigError(
            f"{run_dir} is already at step {step}, past --max-steps {options.max_steps}: give a larger --max-steps"
        )
    end_step = min(total_steps, options.max_steps) if options.max_steps is not None else total_steps
    _warmups(task, s, end_step, resume_state is None, reporter)

    # ---- outputs (rank 0 only)
    log = _MetricsLog(run_dir, main, options.tensorboard)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", to_yaml(config))
        if resume_state is not None:
            log.truncate_after(step)

    def state(val: dict[str, float], train_means: dict[str, float]) -> dict[str, Any]:
        return {
            "format": ck.CHECKPOINT_FORMAT,
            "format_version": ck.CHECKPOINT_VERSION,
            "kind": task.kind,
            "modality": task.modality,
            "config": config,
            "corpus": task.corpus_info,
            "stage1": task.stage1,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "rng": ck.rng_state(device),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "step": step,
            "best_val": best_val,
            "metrics": {"train": train_means, "val": val},
            domain.DOMAIN_KEY: domain_ref,
            "versions": {"torch": str(torch.__version__), "avmdvae": str(avmdvae.__version__)},
        }

    def validate_and_save(train_means: dict[str, float]) -> tuple[dict[str, float], bool]:
        """Validation (with the domain reference of a stage-1 model), then last.pt and maybe best.pt."""
        nonlocal best_val, domain_ref
        val = _with_psnr(task, evaluate(task, model, val_ds, s, dist_info, device, step))
        log.write("val", step, epoch, val)
        improved = val["loss"] < best_val
        if improved:
            best_val = val["loss"]
        if main:
            if task.kind == "vqvae":
                domain_ref = _domain_reference(task, model, val_ds)
            st = state(val, train_means)
            ck.save_checkpoint(last_path, st)
            if improved:
                ck.save_checkpoint(run_dir / ck.BEST, st)
        return val, improved

    def snapshot(metrics: dict[str, float], shown_epoch: int) -> Snapshot:
        elapsed = time.monotonic() - t_start
        done = step - start_step
        eta = elapsed / done * (end_step - step) if done > 0 else None
        return Snapshot(task.kind, task.modality, step, end_step, shown_epoch, s.epochs, metrics, elapsed, eta)

    last_val: dict[str, float] = resume_state["metrics"]["val"] if resume_state else {}
    domain_ref: dict[str, Any] = resume_state.get(domain.DOMAIN_KEY, {}) if resume_state else {}
    train_means: dict[str, float] = {}
    start_step, t_start = step, time.monotonic()
    stopped: str | None = None
    reporter.begin(step, end_step, per_epoch, s.epochs)
    try:
        with _StopRequests(options, dist_info, device) as stop:
            while epoch < s.epochs and stopped is None:
                sampler = GlobalBatchSampler(
                    n_train, s.batch_size, s.seed, epoch, dist_info, s.max_steps_per_epoch, skip=step_in_epoch
                )
                loader = _loader(train_ds, sampler, s.num_workers, device, s.seed * 1_000_003 + epoch)
                epoch_avg, window_avg = _Averager(), _Averager()
                t_window, frames_window = time.perf_counter(), 0
                for batch in loader:
                    lr = lr_at(step, total_steps, s)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    batch = task.to_device(batch, device)
                    with autocast_context(device, s.precision):
                        loss, metrics = objective(batch, step)
                    if not torch.isfinite(loss):
                        raise ConfigError(
                            f"loss became {loss.item()} at step {step}: lower train.lr, raise "
                            "train.warmup_steps or use fp32"
                        )
                    scaler.scale(loss).backward()
                    grad_norm = None
                    if s.grad_clip > 0:
                        scaler.unscale_(optimizer)
                        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    step_in_epoch += 1

                    n = task.frames(batch)
                    frames_window += n * dist_info.world_size
                    extra = {"lr": lr, **({"grad_norm": grad_norm} if grad_norm is not None else {})}
                    epoch_avg.add({"loss": loss, **metrics}, n)
                    window_avg.add({"loss": loss, **metrics, **extra}, n)
                    if step % s.log_every == 0 or step_in_epoch == per_epoch:
                        means = _with_psnr(task, window_avg.means())
                        means["frames_per_s"] = frames_window / max(time.perf_counter() - t_window, 1e-9)
                        log.write("train", step, epoch, means)
                        reporter.train(snapshot(means, epoch + 1))
                        window_avg, t_window, frames_window = _Averager(), time.perf_counter(), 0
                    stopped = stop.reason(step, time.monotonic() - t_start)
                    if stopped is not None:
                        break
                    if s.checkpoint_every > 0 and step % s.checkpoint_every == 0 and step_in_epoch < per_epoch:
                        if main:
                            ck.save_checkpoint(last_path, state(last_val, epoch_avg.means()))

                train_means = _with_psnr(task, epoch_avg.means())
                if step_in_epoch == per_epoch:  # ---- end of epoch: validate, then checkpoint
                    epoch += 1
                    step_in_epoch = 0
                    last_val, improved = validate_and_save(train_means)
                    reporter.validation(snapshot(last_val, epoch), improved)
                elif stopped in (STOP_MAX_STEPS, STOP_TIME_LIMIT):  # a budget: validated and usable
                    last_val, improved = validate_and_save(train_means)
                    reporter.validation(snapshot(last_val, epoch + 1), improved)
                elif stopped is not None and main:  # a signal: save at once (a kill may follow)
                    ck.save_checkpoint(last_path, state(last_val, train_means))
                barrier()
    finally:
        reporter.end()
        log.close()
    return RunResult(run_dir, epoch, step, best_val, last_val, train_means, stopped)


def _with_psnr(task: Task, metrics: dict[str, float]) -> dict[str, float]:
    """Face PSNR (dB) next to the face MSE (`rec`) of a visual VQ-VAE: 10 log10(1 / MSE)."""
    if task.kind == "vqvae" and task.modality == "visual" and metrics.get("rec", 0) > 0:
        return {**metrics, "psnr_db": 10 * math.log10(1 / metrics["rec"])}
    return metrics


def _domain_reference(task: Task, model: nn.Module, val_ds: Dataset) -> dict[str, Any]:
    """Checkpoint "domain" entry of a stage-1 run: its per-frame validation error and its corpus."""
    assert task.modality is not None
    n = len(val_ds)  # type: ignore[arg-type]
    idx = torch.linspace(0, n - 1, min(n, domain.REFERENCE_FRAMES)).round().long().unique().tolist()
    frames = val_ds[idx][task.modality]
    was_training = model.training
    model.eval()
    try:
        errors = domain.frame_errors(model, task.modality, frames)
    finally:
        model.train(was_training)
    corpus = getattr(task, "corpus", None)
    return {
        "corpus": domain.describe_corpus(corpus) if corpus is not None else "",
        task.modality: domain.summarise(errors, task.modality),
    }


def _warmups(task: Task, s: TrainSettings, end_step: int, fresh: bool, reporter: Reporter) -> None:
    """Size an automatic KL warm-up from the run's length; warn of warm-ups longer than the run."""
    train_cfg = task.config["train"]
    if task.kind != "vqvae" and train_cfg["kl_warmup_steps"] < 0 and fresh:
        train_cfg["kl_warmup_steps"] = max(1, round(KL_WARMUP_FRACTION * end_step))
        reporter.note(
            f"train.kl_warmup_steps not set: the KL weight ramps up over the first "
            f"{train_cfg['kl_warmup_steps']} steps, a fifth of this run (stored in the run's config)"
        )
    if s.warmup_steps >= end_step:
        reporter.note(
            f"the learning-rate warm-up (train.warmup_steps={s.warmup_steps}) is as long as the whole run "
            f"({end_step} steps): the learning rate never reaches train.lr={s.lr:g}; "
            f"lower it, e.g. --set train.warmup_steps={max(1, end_step // 10)}, or train longer"
        )
    kl = train_cfg["kl_warmup_steps"]
    if task.kind != "vqvae" and kl > end_step:
        reporter.note(
            f"the KL warm-up (train.kl_warmup_steps={kl}) is longer than the whole run ({end_step} steps): "
            f"the KL term never reaches its full weight; lower it, e.g. --set train.kl_warmup_steps="
            f"{max(1, round(KL_WARMUP_FRACTION * end_step))}, or train longer"
        )


class _StopRequests:
    """Stop requests checked after every step: SIGTERM / SIGINT (the first one asks for a clean stop,
    a second SIGINT interrupts at once), --max-steps and --time-limit. Under DDP the ranks agree (any
    rank's request stops them all after the same step)."""

    def __init__(self, options: RunOptions, dist_info: DistInfo, device: torch.device) -> None:
        self.options, self.dist, self.device = options, dist_info, device
        self.signalled: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signalled is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signalled = _SIGNAL_STOPS[signum]

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for sig in _SIGNAL_STOPS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def reason(self, step: int, elapsed: float) -> str | None:
        o = self.options
        mine = {
            self.signalled,
            STOP_MAX_STEPS if o.max_steps is not None and step >= o.max_steps else None,
            STOP_TIME_LIMIT if o.time_limit is not None and elapsed >= o.time_limit else None,
        }
        flags = torch.tensor([float(r in mine) for r in _STOPS], dtype=torch.float64)
        if self.dist.enabled:  # ranks may see a signal or the clock apart: any rank's request counts
            if torch.distributed.get_backend() == "nccl":
                flags = all_reduce_sum(flags.to(self.device)).cpu()
            else:
                flags = all_reduce_sum(flags)
        return next((r for r, f in zip(_STOPS, flags.tolist(), strict=True) if f > 0), None)


def _check_resumable(state: dict[str, Any], task: Task, run_dir: Path) -> None:
    if state["kind"] != task.kind or state["modality"] != task.modality:
        raise ConfigError(
            f"{run_dir} holds a {state['kind']} {state['modality'] or ''} run, not {task.kind} "
            f"{task.modality or ''}: use the matching command or another -o"
        )
    train_cfg = task.config["train"]
    if train_cfg["kl_warmup_steps"] < 0:  # automatic: keep the length the run was started with
        train_cfg["kl_warmup_steps"] = state["config"]["train"]["kl_warmup_steps"]
    changed = [k for k in diff(state["config"], task.config) if k not in RESUMABLE_CHANGES]
    if changed:
        raise ConfigError(
            f"--resume with a different config ({', '.join(changed[:5])}): resume with the same settings "
            f"(only {', '.join(sorted(RESUMABLE_CHANGES))} may change) or train into another -o"
        )
    if state["corpus"]["params"] != task.corpus_info["params"]:
        raise ConfigError(f"--resume on a corpus with other preprocessing parameters than {run_dir} used")
    if state.get("stage1", {}) and {m: r["sha256"] for m, r in state["stage1"].items()} != {
        m: r["sha256"] for m, r in task.stage1.items()
    }:
        raise ConfigError(f"--resume with other stage-1 checkpoints than {run_dir} was trained on")


__all__ = ["RunOptions", "RunResult", "Task", "epoch_permutation", "evaluate", "lr_at", "train"]

"""Training configuration: a YAML file merged over defaults, then `--set key=value` overrides.

A run's configuration is one nested dict with three sections::

    model:  the model's dims dataclass (avmdvae.models.config), every size configurable
    train:  TrainSettings below (optimiser, schedule, precision, seed, logging)
    data:   DataSettings below (what one training item is)

Every key must exist in the defaults: a typo is a `ConfigError`, never silently ignored. Values
keep the type of their default (an int where a float is expected is promoted; anything else that
does not fit is an error). The resolved dict is stored in every checkpoint and printed by
`avmdvae info RUN`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from avmdvae.constants import MODALITIES
from avmdvae.errors import ConfigError

Kind = Literal["vqvae", "mdvae", "dsae"]
KINDS: tuple[str, ...] = ("vqvae", "mdvae", "dsae")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")


@dataclass
class TrainSettings:
    """Optimisation and bookkeeping. `batch_size` is the GLOBAL batch (split across DDP ranks)."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 3.0e-4
    # Linear warm-up over `warmup_steps`, then cosine decay to lr * min_lr_ratio at the last step.
    warmup_steps: int = 500
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    seed: int = 0
    precision: str = "fp32"  # fp32 | bf16 (CUDA or CPU autocast) | fp16 (CUDA only, with GradScaler)
    compile: bool = False  # torch.compile the model's training step (one graph per forward)
    # Caps (0 = no cap): an "epoch" of single frames over a large corpus is long; these keep it bounded.
    max_steps_per_epoch: int = 0
    max_val_batches: int = 0
    num_workers: int = 0
    log_every: int = 20  # steps between train-metric lines in metrics.jsonl
    checkpoint_every: int = 0  # steps between mid-epoch `last.pt` saves (0 = at epoch ends only)
    # Stage 2 only: ELBO = recon - beta * KL, beta ramped linearly from 0 over kl_warmup_steps;
    # -1: over a fifth of the run's steps (training.loop.KL_WARMUP_FRACTION, stored once known); 0: none.
    # beta: one weight for every KL term, or per latent, e.g. {w: 1.0, zav: 0.5} (missing latents: 1).
    beta: float | dict[str, float] = 1.0
    kl_warmup_steps: int = -1
    # None: the warm-up above. Otherwise the KL weights at step 0 (a number or latent -> number; latents
    # not named start at their beta), moving linearly to `beta` over kl_warmup_steps with no 0 -> 1
    # factor: e.g. {zav: 10, za: 10, zv: 10} makes the dynamical latents dear while w is learnt first.
    beta_start: float | dict[str, float] | None = None


@dataclass
class DataSettings:
    """What one training item is. Stage 1 trains on single frames; stage 2 on windows of T frames
    (T = model.seq_len)."""

    window_hop: int = 15  # frames between the starts of consecutive stage-2 windows of a clip
    train_split: str = "train"
    val_split: str = "validation"


# Keys that may differ between the stored config and the one given on `--resume`: they change how
# long or how verbosely the run goes on, or the runtime, not what is being trained.
RESUMABLE_CHANGES: frozenset[str] = frozenset(
    {
        "train.epochs",
        "train.compile",
        "train.log_every",
        "train.num_workers",
        "train.checkpoint_every",
        "train.max_val_batches",
    }
)


def check_kind(kind: str, modality: str | None) -> None:
    """The model kind and the `--modality` option (vqvae and dsae: audio or visual; mdvae: none)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown model kind {kind!r}: use one of {', '.join(KINDS)}")
    if kind != "mdvae" and modality not in MODALITIES:
        raise ConfigError(f"--modality {modality!r}: use audio or visual")


def dims_type(kind: str, modality: str | None) -> type:
    """The dims dataclass of a model kind (and modality for vqvae/dsae): what its model section holds."""
    from avmdvae.models import config as mc

    check_kind(kind, modality)
    if kind == "vqvae":
        return mc.VisualVQVAEDims if modality == "visual" else mc.AudioVQVAEDims
    return mc.MDVAEDims if kind == "mdvae" else mc.DSAEDims


def model_defaults(kind: str, modality: str | None) -> dict[str, Any]:
    """The model section's defaults: the fields of the model's dims dataclass."""
    cls = dims_type(kind, modality)
    return _plain(asdict(cls.for_modality(modality) if kind == "dsae" else cls()))


def _drop_retired(data: dict[str, Any], retired: Mapping[str, Any]) -> dict[str, Any]:
    """`data` without the removed ablation switches of its model section (`retired`: key -> the value the model
    now always has); a switch set to any other value is refused by `check_retired`."""
    model = data.get("model")
    if not retired or not isinstance(model, dict) or not retired.keys() & model.keys():
        return data
    from avmdvae.models.config import check_retired

    model = dict(model)
    for key in sorted(retired.keys() & model.keys()):
        check_retired(f"model.{key}", model.pop(key), retired[key])
    return {**data, "model": model}


def defaults(kind: str, modality: str | None = None) -> dict[str, Any]:
    """The full default config for a model kind (and modality for vqvae/dsae)."""
    return {
        "model": model_defaults(kind, modality),
        "train": _plain(asdict(TrainSettings())),
        "data": _plain(asdict(DataSettings())),
    }


def _plain(obj: Any) -> Any:
    """Tuples -> lists, recursively, so that YAML, JSON and torch.save(weights_only) all agree."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _coerce(value: Any, default: Any, key: str) -> Any:
    """`value` converted to the type of `default`, or a ConfigError naming `key`."""
    if default is None or value is None:
        return value
    if key == "train.beta" and isinstance(value, dict):  # per-latent KL weights (checked by validate)
        return dict(value)
    if key == "train.beta" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, list):
        if isinstance(value, int) and not isinstance(value, bool) and all(isinstance(d, int) for d in default):
            return [value]  # one layer width for a list of layer widths
        if isinstance(value, (list, tuple)):
            if default and all(isinstance(d, (int, float)) for d in default):
                return [_coerce(v, default[0], f"{key}[{i}]") for i, v in enumerate(value)]
            return list(value)
    elif isinstance(default, dict):
        if isinstance(value, dict):
            return merge(default, value, prefix=f"{key}.")
    raise ConfigError(f"config key {key} must be of type {type(default).__name__}, got {value!r}")


def merge(base: dict[str, Any], updates: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A copy of `base` with `updates` merged in; unknown keys and wrong types are ConfigErrors."""
    out = copy.deepcopy(base)
    for key, value in updates.items():
        name = f"{prefix}{key}"
        if key not in base:
            known = ", ".join(sorted(base))
            raise ConfigError(f"unknown config key {name!r} (known here: {known})")
        out[key] = _coerce(value, base[key], name)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`"train.lr=1e-3"` -> (["train", "lr"], 0.001). The value is parsed as YAML (typed)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"bad override {text!r}: use --set section.key=value, e.g. --set train.lr=1e-3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads "1e-3" (no dot) as a string: accept it as a number when it is one.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(config: dict[str, Any], overrides: list[str],
                    retired: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Apply `section.key=value` strings; each goes through the same checks as the YAML file (`retired`: the
    model's removed switches, as in `resolve`)."""
    for text in overrides:
        path, value = parse_override(text)
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        config = merge(config, _drop_retired(nested, retired or {}))
    return config


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (yaml.safe_load); a missing, unreadable or malformed file is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found: pass an existing YAML file (see models/*.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise ConfigError(f"config file {path} is not UTF-8 text (line {line}): save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping with model/train/data sections")
    return data


def _beta_ok(beta: Any) -> bool:
    values = beta.values() if isinstance(beta, dict) else [beta]
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in values)


def resolve(
    kind: str,
    modality: str | None = None,
    config_path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Defaults (or `base`, e.g. a checkpoint's config) <- YAML file <- `--set` overrides, validated.

    A YAML file may carry top-level `kind:`/`modality:` keys (documentation of what it is for);
    they must then agree with the command.
    """
    retired = dims_type(kind, modality).retired  # removed switches: older configs hold them
    config = copy.deepcopy(base) if base is not None else defaults(kind, modality)
    if config_path is not None:
        data = load_yaml(config_path)
        for key, expected in (("kind", kind), ("modality", modality)):
            if key in data:
                given = data.pop(key)
                if expected is not None and given != expected:
                    raise ConfigError(
                        f"config file {config_path} is for {key} {given!r}, not {expected!r}: "
                        "pass the matching models/*.yaml"
                    )
        config = merge(config, _drop_retired(data, retired))
    config = apply_overrides(config, overrides or [], retired)
    validate(config)
    return config


def validate(config: dict[str, Any]) -> None:
    """Value checks that the type checks above cannot make."""
    t = config["train"]
    checks = [
        (t["epochs"] >= 1, "train.epochs must be >= 1"),
        (t["batch_size"] >= 1, "train.batch_size must be >= 1"),
        (t["lr"] > 0, "train.lr must be > 0"),
        (t["warmup_steps"] >= 0, "train.warmup_steps must be >= 0"),
        (0 <= t["min_lr_ratio"] <= 1, "train.min_lr_ratio must be in [0, 1]"),
        (t["grad_clip"] >= 0, "train.grad_clip must be >= 0 (0 disables)"),
        (t["precision"] in PRECISIONS, f"train.precision must be one of {', '.join(PRECISIONS)}"),
        (len(t["betas"]) == 2, "train.betas must be two numbers, e.g. [0.9, 0.999]"),
        (t["log_every"] >= 1, "train.log_every must be >= 1"),
        (t["kl_warmup_steps"] >= -1, "train.kl_warmup_steps must be >= 0 (or -1: a fifth of the run)"),
        (t["num_workers"] >= 0, "train.num_workers must be >= 0"),
        (t["weight_decay"] >= 0, "train.weight_decay must be >= 0"),
        (t["max_steps_per_epoch"] >= 0, "train.max_steps_per_epoch must be >= 0 (0 = no cap)"),
        (t["max_val_batches"] >= 0, "train.max_val_batches must be >= 0 (0 = no cap)"),
        (t["checkpoint_every"] >= 0, "train.checkpoint_every must be >= 0 (0 = at epoch ends only)"),
        (_beta_ok(t["beta"]), "train.beta must be a number >= 0 or latent -> number >= 0, e.g. {w: 1, zav: 0.5}"),
        (t.get("beta_start") is None or _beta_ok(t["beta_start"]),
         "train.beta_start must be a number >= 0 or latent -> number >= 0, e.g. {zav: 10, za: 10, zv: 10}"),
        (config["data"]["window_hop"] >= 1, "data.window_hop must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{message} (check the config file and --set overrides)")


def train_settings(config: dict[str, Any]) -> TrainSettings:
    return TrainSettings(**config["train"])


def diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configs."""
    keys = sorted(set(a) | set(b))
    out: list[str] = []
    for k in keys:
        name = f"{prefix}{k}"
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
            out += diff(a[k], b[k], prefix=f"{name}.")
        elif a.get(k) != b.get(k):
            out.append(name)
    return out


def to_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)

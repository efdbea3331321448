"""Every example in examples/ runs: the scripts end to end, the configs through one training step."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from avmdvae import media
from avmdvae.models import build_model
from avmdvae.training.config import resolve
from tests.test_docs import parse_help

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
CONFIGS = EXAMPLES / "configs"

# Every script in examples/ with the arguments of its fast check (the output folder is appended).
SCRIPTS = {"api_tour.py": ["--tiny", "--quiet"]}


def run_example(script: str, args: list[str], out: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    # One torch thread: tiny models gain nothing from more, and the test machines are small and shared.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), str(out), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_every_example_script_is_run_by_a_test() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(SCRIPTS)


def check_api_tour(out: Path, stdout: str) -> None:
    summary = json.loads((out / "summary.json").read_text())
    n = summary["clip_a"]["faces"][0]
    assert summary["clip_a"] == {"faces": [n, 64, 64, 3], "power": [n, 513], "audio": [n * 16000 // 30]}
    lat, swapped = summary["latents_a"], summary["latents_swap_w"]
    assert lat == swapped and lat["zav"][:2] == [1, n] and len(lat["w"]) == 2
    assert summary["decoded"] == {"faces": [n, 64, 64, 3], "power": [n, 513]}
    assert summary["w_changed"] > 0  # w really came from the other clip
    for name in ("resynth", "swap_w"):
        path = out / f"{name}.mp4"
        assert Path(summary["outputs"][name]) == path
        info = media.probe(path)
        assert info.has_video and info.has_audio
        assert (info.width, info.height) == (256, 256)
        assert info.n_frames == n and info.fps == pytest.approx(30.0)
        assert info.duration == pytest.approx(n / 30, abs=0.1)
        frames = media.read_frames(path)
        assert frames.shape == (n, 256, 256, 3) and frames.std() > 1  # decoded pictures, not a blank
        audio = media.read_audio(path)
        assert abs(len(audio) - n * 16000 / 30) < 2048 and float(abs(audio).max()) > 1e-3
    for run in ("vq-audio", "vq-visual", "mdvae"):
        assert (out / "runs" / run / "best.pt").is_file()
    assert (out / "corpus" / "corpus.json").is_file()
    assert "4. manipulate" in stdout and "latents_a" in stdout


def test_api_tour_tiny(tmp_path: Path) -> None:
    out = tmp_path / "tour"
    proc = run_example("api_tour.py", SCRIPTS["api_tour.py"], out)
    check_api_tour(out, proc.stdout)


@pytest.mark.slow
def test_api_tour_default_size(tmp_path: Path) -> None:
    out = tmp_path / "tour"
    proc = run_example("api_tour.py", ["--quiet"], out)
    check_api_tour(out, proc.stdout)


# ------------------------------------------------------------------------------------------ configs

CONFIG_FILES = sorted(CONFIGS.glob("*.yaml"))


def load_example(path: Path) -> tuple[str, str | None, dict]:
    data = yaml.safe_load(path.read_text())
    kind, modality = data["kind"], data.get("modality")
    return kind, modality, resolve(kind, modality, path)


def stage1_feature_dims() -> dict[str, int]:
    """feature_dim of the example stage-1 configs: what the example stage-2 configs are trained on."""
    dims = {}
    for path in CONFIG_FILES:
        kind, modality, cfg = load_example(path)
        if kind == "vqvae":
            dims[modality] = build_model(kind, modality, cfg).feature_dim
    return dims


def random_batch(kind: str, modality: str | None, model: torch.nn.Module, feats: dict[str, int]) -> tuple:
    g = torch.Generator().manual_seed(0)
    if kind == "vqvae" and modality == "visual":
        return (torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8, generator=g),)
    if kind == "vqvae":
        return (torch.rand(4, 513, generator=g) + 1e-3,)
    t = model.dims.seq_len
    if kind == "mdvae":
        return torch.randn(2, t, feats["audio"], generator=g), torch.randn(2, t, feats["visual"], generator=g)
    return (torch.randn(2, t, feats[modality], generator=g),)


def test_there_are_example_configs() -> None:
    kinds = {load_example(p)[:2] for p in CONFIG_FILES}
    assert {("vqvae", "audio"), ("vqvae", "visual"), ("mdvae", None)} <= kinds


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_example_config_trains_one_step(path: Path) -> None:
    """resolve() accepts it, the model builds, and one optimiser step gives finite loss and gradients."""
    kind, modality, cfg = load_example(path)
    feats = stage1_feature_dims()
    if kind == "mdvae":
        cfg["model"].update(feat_a=feats["audio"], feat_v=feats["visual"])
    elif kind == "dsae":
        cfg["model"]["feat"] = feats[modality]
    torch.manual_seed(0)
    model = build_model(kind, modality, cfg).train()
    batch = random_batch(kind, modality, model, feats)
    if kind == "vqvae":
        loss = model.loss(batch[0])[0]
    else:
        model.fit_input_stats({m: x.flatten(0, 1) for m, x in zip(model.modalities, batch, strict=True)})
        loss = model(*batch, beta=cfg["train"]["beta"], kl_weight=1.0, noise=None).loss
    assert math.isfinite(float(loss.detach()))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)
    torch.optim.AdamW(model.parameters(), lr=cfg["train"]["lr"]).step()


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)
def test_example_config_usage_line_is_a_real_command(path: Path) -> None:
    """The `avmdvae ...` command in the header comment uses real options and names this file."""
    lines = [ln.lstrip("#").strip() for ln in path.read_text().splitlines() if ln.startswith("#")]
    start = next(i for i, ln in enumerate(lines) if ln.startswith("avmdvae "))
    cmd = lines[start]
    while cmd.endswith("\\"):
        start += 1
        cmd = cmd[:-1] + " " + lines[start]
    tokens = shlex.split(cmd)
    kind, modality, _ = load_example(path)
    assert tokens[1:3] == ["train", kind]
    h = parse_help(("train", kind))
    known = set(h.options) | {o.short for o in h.options.values() if o.short}
    assert all(t in known for t in tokens if t.startswith("-")), cmd
    assert tokens[tokens.index("--config") + 1] == str(path.relative_to(REPO))
    if modality:
        assert tokens[tokens.index("--modality") + 1] == modality

"""The built-in demo end to end at reduced size, with the checkpoints shipped in models/demo/."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from avmdvae import media
from avmdvae.cli import app
from avmdvae.demo import RUNS, SHIPPED


def test_shipped_checkpoints_are_small_and_load_safely() -> None:
    from avmdvae.manipulation import AVModel

    total = sum((SHIPPED / r / "best.pt").stat().st_size for r in RUNS)
    assert total <= 25 << 20  # the shipped checkpoints stay under 25 MB together
    model = AVModel.load(SHIPPED / "mdvae")  # stage-1 runs found as siblings, sha256-checked
    assert model.fps == 30.0 and model.params.face_size == 64


def test_demo_small_writes_every_promised_file(tmp_path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", str(out), "--small", "--quiet", "--workers", "1"])
    assert result.exit_code == 0, result.output
    for name in ("resynthesis", "swap-w", "swap-zav"):
        info = media.probe(out / f"{name}.mp4")
        assert info.has_video and info.has_audio and info.duration > 1.0
        frames = media.read_frames(out / f"{name}.mp4")
        assert frames.shape[0] == round(info.duration * 30) and frames.std() > 1  # a real picture
    sheet = np.asarray(Image.open(out / "overview.png"))
    assert sheet.ndim == 3 and sheet.shape[0] > 300
    report = json.loads((out / "report" / "report.json").read_text())
    assert {"resynth", "disentangle", "swap"} <= set(report)
    systems = report["resynth"]["systems"]
    assert np.isfinite(systems["VQ-MDVAE"]["psnr"]["mean"])
    # swap fidelity against the counterfactual, for every latent (the demo clips are unseen speakers)
    fid = report["swap_fidelity"]
    assert set(fid) == {"w", "zav", "za", "zv", "all"} and all(-1 <= v["mean"] <= 1 for v in fid.values())
    assert report["swap"]["noise_draws"] == 4 and "one_draw" in report["swap"]  # the demo's quicker average
    readme = (out / "README.md").read_text()
    assert "swap-w.mp4" in readme and "Swap score" in readme and "Swap fidelity" in readme


@pytest.mark.parametrize("args", [["--models", "/nonexistent/models"]])
def test_demo_missing_models_is_one_line_error(tmp_path, args) -> None:
    result = CliRunner().invoke(app, ["demo", str(tmp_path / "d"), "--quiet", *args])
    assert result.exit_code == 2
    assert "no demo checkpoint" in result.output and "Traceback" not in result.output

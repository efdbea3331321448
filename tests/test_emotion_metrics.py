"""Emotion probes on unbalanced labels: majority-class baseline, balanced accuracy, and the learning
curve up to the largest k the data allows; the report says all three (issue 17)."""

from __future__ import annotations

import numpy as np

from avmdvae.evaluation import probes
from avmdvae.evaluation.report import write_report

CLASSES = ("neutral", "angry", "happy", "sad", "fear", "disgust", "surprise")


def unbalanced(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """10 speakers x 24 clips: half neutral, the other six emotions 2 clips each; features are noise."""
    rng = np.random.default_rng(seed)
    per_speaker = ["neutral"] * 12 + [c for c in CLASSES[1:] for _ in range(2)]
    y = np.array(per_speaker * 10)
    groups = np.repeat(np.arange(10), len(per_speaker))
    return rng.normal(size=(len(y), 8)), y, groups


def test_unbalanced_labels_get_a_majority_baseline_and_balanced_accuracy():
    x, y, g = unbalanced()
    curve = probes.learning_curve(x, y, g, ks=(1, 2, 5, 10, 20, 50), draws=4, seed=0)
    assert curve["chance"] == 1 / 7
    base = curve["majority_baseline"]
    assert base["mean"] == 0.5 and base["n"] == 4 and curve["majority_class"] == "neutral"
    assert curve["class_counts"] == {"neutral": 120, **{c: 20 for c in CLASSES[1:]}}
    for p in curve["points"]:
        assert 0 <= p["balanced_accuracy"]["mean"] <= 1 and p["balanced_accuracy"]["n"] == 4
    # 7 training speakers x 2 clips = 14 clips of each rare emotion: every k up to 14 the data allows
    assert curve["k_max"] == 14
    assert [p["k"] for p in curve["points"]] == [1, 2, 5, 10, 14, "all"]


def test_the_report_shows_the_baseline_balanced_accuracy_and_every_k(tmp_path):
    x, y, g = unbalanced()
    curve = probes.learning_curve(x, y, g, ks=(1, 2, 5), draws=3, seed=0)
    emotion = {"clips": len(y), "speakers": 10, "draws": 3,
               "targets": {"emotion": {"representations": {"w": curve}}}}
    write_report(tmp_path, {"emotion": emotion})
    md = (tmp_path / "report.md").read_text()
    assert "majority-class baseline 0.500" in md and "always 'neutral'" in md
    assert "balanced accuracy (chance 1/7 = 0.143)" in md
    assert "| representation | k=1 | k=2 | k=5 | k=14 | k=all |" in md
    assert "neutral 120" in md

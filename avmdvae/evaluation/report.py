"""Write an evaluation report: report.json (everything), report.md (tables), PNG plots (matplotlib, Agg).

    write_report(out_dir, results) -> list of written paths

`results` is the dict built by avmdvae.evaluation.tasks (keys "meta", "resynth", "emotion",
"disentangle", "denoise", "swap", "skipped"; any task may be absent; "swap" also writes its means
as the top-level "swap_fidelity"). NaN / inf become null in the JSON.
Plots: emotion_learning_curve.png, factor_matrix.png, swap_scores.png, swap_fidelity.png,
swap_decomposition.png, swap_code_shift.png, denoise_<modality>.png, resynth.png. The files are written
all or none (avmdvae.outputs): a failure while writing any of them leaves no partial report, and an
earlier report in the folder stays as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from avmdvae.atomic import atomic_path, write_json, write_text
from avmdvae.constants import MDVAE_LATENTS
from avmdvae.evaluation import metrics as M
from avmdvae.outputs import all_or_nothing

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def _clean(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays to Python, NaN / inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _ms(s: dict[str, Any] | None, digits: int = 3) -> str:
    """'mean ± std' of a stats dict."""
    if not s or s.get("n", 0) == 0:
        return "n/a"
    return f"{_f(s['mean'], digits)} ± {_f(s['std'], digits)}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _plt().close(fig)
    return path


# ------------------------------------------------------------------------------------------- sections
RESYNTH_AUDIO = (("stoi_griffin_lim", "STOI (GL)"), ("pesq_griffin_lim", "PESQ (GL)"),
                 ("stoi_source_phase", "STOI (src phase)"), ("pesq_source_phase", "PESQ (src phase)"),
                 ("lsd_db", "LSD dB"))
RESYNTH_VISUAL = (("psnr", "PSNR dB"), ("ssim", "SSIM"))


def _md_resynth(r: dict[str, Any]) -> str:
    out = [f"## Resynthesis ({r['clips']} test clips)\n",
           f"Reference audio: {', '.join(r.get('reference_audio', [])) or 'n/a'}; Griffin-Lim "
           f"{r.get('gl_iters')} iterations. Mean ± standard deviation over clips.\n"]
    cols = RESYNTH_AUDIO + RESYNTH_VISUAL
    rows = []
    for system, m in r["systems"].items():
        rows.append([system] + [_ms(m.get(k), 2 if k in ("psnr", "lsd_db") else 3) for k, _ in cols])
    out.append(_table(["system"] + [c for _, c in cols], rows))
    moving = {s: m for s, m in r["systems"].items() if m.get("move_along_face", {}).get("n", 0)}
    if moving:
        out.append("\nMovement: each clip's faces minus their mean over the clip, the reconstruction's projected on "
                   "the true clip's (`metrics.face_movement`): *along* is the share of the true movement rendered "
                   "(1 all, 0 a still face), *off* what moves besides, in units of the true movement; whole crop, "
                   "and the eye and mouth bands (rows " + ", ".join(
                       f"{b} {lo:.2f}-{hi:.2f}" for b, (lo, hi) in M.FACE_BANDS.items() if b != "face")
                   + " of the crop's height); means over clips.\n")

        def mean(m: dict[str, Any], key: str) -> str:
            return _f(m[key]["mean"], 2) if m.get(key, {}).get("n", 0) else "n/a"

        bands = list(M.FACE_BANDS)
        out.append(_table(["system"] + [f"{b}: along / off" for b in bands],
                          [[s] + [f"{mean(m, f'move_along_{b}')} / {mean(m, f'move_off_{b}')}" for b in bands]
                           for s, m in moving.items()]))
    return "\n".join(out)


def _plot_resynth(r: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    metrics = [("stoi_griffin_lim", "STOI (Griffin-Lim)"), ("pesq_griffin_lim", "PESQ (Griffin-Lim)"),
               ("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("move_along_mouth", "mouth movement rendered")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2))
    for ax, (k, label) in zip(axes, metrics, strict=True):
        names = [s for s, m in r["systems"].items() if m.get(k, {}).get("n", 0)]
        means = [r["systems"][s][k]["mean"] for s in names]
        stds = [r["systems"][s][k]["std"] for s in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3, color="C0")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(label)
    return _save(fig, path)


def _md_emotion(e: dict[str, Any]) -> str:
    out = [f"## Emotion recognition with few labels ({e['clips']} clips, {e['speakers']} speakers)\n",
           "Linear probes (logistic regression) trained on k labelled clips per class from some speakers, "
           f"tested on the other speakers; mean ± std over {e['draws']} random draws. k goes up to the largest "
           "number of clips per class the training speakers have in at least half the draws. On unbalanced "
           "labels compare accuracy with the majority-class baseline (always answering the most frequent "
           "class), and balanced accuracy (mean recall over classes) with chance 1 / C.\n"]
    for target, t in e["targets"].items():
        out.append(f"### {target}\n")
        if "skipped" in t:
            out.append(f"Skipped: {t['skipped']}\n")
            continue
        reps = t["representations"]
        if not reps:
            continue
        first = next(iter(reps.values()))
        ks = sorted({p["k"] for curve in reps.values() for p in curve["points"]},
                    key=lambda k: (k == "all", k if k != "all" else 0))
        counts = first.get("class_counts", {})
        if counts:
            out.append("Clips per class: " + ", ".join(f"{c} {n}" for c, n in counts.items()) + ".\n")
        n_classes = len(first["classes"])
        base = first.get("majority_baseline")
        headings = (
            ("accuracy", f"accuracy (majority-class baseline {_ms(base)}, always '{first.get('majority_class')}')"
             if base else "accuracy"),
            ("balanced_accuracy", f"balanced accuracy (chance 1/{n_classes} = {_f(first['chance'])})"),
            ("macro_f1", "macro-F1"),
        )
        for metric, label in headings:
            rows = []
            for name, curve in reps.items():
                by_k = {p["k"]: p for p in curve["points"]}
                rows.append([name] + [_ms(by_k[k].get(metric)) if k in by_k else "n/a" for k in ks])
            out.append(f"{label}:\n")
            out.append(_table(["representation"] + [f"k={k}" for k in ks], rows))
    return "\n".join(out)


def _plot_emotion(e: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    targets = [(t, v) for t, v in e["targets"].items() if "skipped" not in v]
    n = max(1, len(targets))
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 3.8), squeeze=False)
    for ax, (target, t) in zip(axes[0], targets, strict=False):
        chance = None
        for i, (name, curve) in enumerate(t["representations"].items()):
            chance = curve["chance"]
            pts = [p for p in curve["points"] if p["k"] != "all" and "balanced_accuracy" in p]
            if not pts:
                continue
            ks = [p["k"] for p in pts]
            m = np.array([p["balanced_accuracy"]["mean"] for p in pts])
            s = np.array([p["balanced_accuracy"]["std"] for p in pts])
            ax.plot(ks, m, "o-", color=f"C{i}", label=name)
            ax.fill_between(ks, m - s, m + s, color=f"C{i}", alpha=0.15)
        if chance is not None:
            ax.axhline(chance, color="grey", ls=":", lw=1, label=f"chance (1/{round(1 / chance)})")
        ax.set_xscale("log")
        ax.set_xlabel("labelled clips per class (k)")
        ax.set_ylabel("balanced accuracy (speaker-disjoint)")
        ax.set_title(target)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _md_disentangle(d: dict[str, Any]) -> str:
    out = [f"## Disentanglement ({d['clips']} clips with ground truth)\n",
           "Factor matrix: linear-probe informativeness (0 = chance, 1 = perfect; classification: rescaled "
           "balanced accuracy, speaker-disjoint except for speaker identity; per-frame factors: R² clipped "
           "at 0). Owners by design: " + ", ".join(f"{f} → {o}" for f, o in d["owners"].items()) + ".\n"]
    factors = d["factors"]
    rows = [[r] + [_f(d["matrix"][r].get(f)) for f in factors] for r in d["matrix"]]
    out.append(_table(["latent"] + factors, rows))
    sw = d.get("swap", {})
    if "skipped" in sw:
        out.append(f"Swap test skipped: {sw['skipped']}\n")
    else:
        out.append(f"### Swap test ({sw['pairs']} pairs)\n")
        out.append("Transfer fraction s per factor (1 = the output has B's value, 0 = A's). "
                   "Swap score = transfer on the swapped latent's own factors − leakage into the others "
                   "(1 perfect, 0 no-op).\n")
        rows = []
        for k, v in {**sw["latents"], "no swap (control)": sw["control_no_swap"]}.items():
            rows.append([k, _f(v["score"]), _f(v["transfer"]), _f(v["leakage"])]
                        + [_f(v["per_factor"].get(f)) for f in factors])
        out.append(_table(["swapped", "score", "transfer", "leakage"] + factors, rows))
        q = sw["estimator_quality"]
        out.append("Ground-truth estimators on held-out real clips: "
                   + ", ".join(f"{f} {v['metric']} {_ms(v)}" for f, v in q.items()) + ".\n")
    out.append("### Summary per latent\n")
    out.append(_table(["latent", "swap score", "selectivity"],
                      [[k, _f(v["swap_score"]), _f(v["selectivity"])] for k, v in d["summary"].items()]))
    return "\n".join(out)


def _plot_matrix(d: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    rows, factors = list(d["matrix"]), d["factors"]
    a = np.array([[d["matrix"][r].get(f) if d["matrix"][r].get(f) is not None else np.nan for f in factors]
                  for r in rows], np.float64)
    fig, ax = plt.subplots(figsize=(1.1 * len(factors) + 2, 0.6 * len(rows) + 1.5))
    im = ax.imshow(a, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(factors)), factors, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i in range(len(rows)):
        for j in range(len(factors)):
            if np.isfinite(a[i, j]):
                ax.text(j, i, f"{a[i, j]:.2f}", ha="center", va="center", color="w" if a[i, j] < 0.6 else "k",
                        fontsize=8)
            if d["owners"].get(factors[j]) == rows[i]:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    fig.colorbar(im, ax=ax, label="informativeness")
    ax.set_title("latent × factor (red: owner by design)")
    return _save(fig, path)


def _plot_swap(d: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    sw = d["swap"]
    lat = list(sw["latents"])
    factors = d["factors"]
    a = np.array([[sw["latents"][k]["per_factor"].get(f, np.nan) for f in factors] for k in lat], np.float64)
    fig, ax = plt.subplots(figsize=(1.1 * len(factors) + 2, 0.6 * len(lat) + 1.5))
    im = ax.imshow(a, vmin=0, vmax=1, cmap="coolwarm")
    ax.set_xticks(range(len(factors)), factors, rotation=30, ha="right")
    ax.set_yticks(range(len(lat)), [f"{k} (score {_f(sw['latents'][k]['score'], 2)})" for k in lat])
    for i in range(len(lat)):
        for j in range(len(factors)):
            if np.isfinite(a[i, j]):
                ax.text(j, i, f"{a[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="transfer fraction (1 = B's value)")
    ax.set_title("swap test: latent taken from B")
    return _save(fig, path)


def _plot_fidelity(s: dict[str, Any], path: Path) -> Path:
    """Swap fidelity per latent and modality (bars: mean ± std over pairs) with the ceiling (black tick)."""
    plt = _plt()
    from avmdvae.evaluation.swap import SWAP_LATENTS

    latents = [k for k in SWAP_LATENTS if k in s["swap_fidelity"]]
    stats, ceiling = s.get("fidelity_stats", {}), s.get("ceiling", {})
    fig, ax = plt.subplots(figsize=(1.3 * len(latents) + 2, 3.6))
    width = 0.38
    for k, mod in enumerate(("audio", "visual")):
        x = np.arange(len(latents)) + (k - 0.5) * width
        # None (a NaN in the cleaned results) becomes NaN again in a float64 array
        mean = np.array([s["swap_fidelity"][lat].get(mod) for lat in latents], np.float64)
        std = np.array([stats.get(lat, {}).get(mod, {}).get("std") for lat in latents], np.float64)
        has = np.isfinite(mean)  # n/a: a modality the latent should not change
        ax.bar(x[has], mean[has], width, yerr=np.nan_to_num(std[has]), color=f"C{k}", label=mod, capsize=3)
        top = np.array([ceiling.get(lat, {}).get(mod) for lat in latents], np.float64)
        ok = np.isfinite(top)
        ax.plot(x[ok], top[ok], "_", color="k", markersize=18, mew=2,
                label="ceiling (model's resynthesis of the counterfactual)" if k == 0 else None)
        for xi, m in zip(x, mean, strict=True):
            ax.text(xi, -1.12, "n/a" if not np.isfinite(m) else f"{m:.2f}", ha="center", fontsize=7)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(latents)), latents)
    ax.set_ylim(-1.2, 1.1)
    ax.set_ylabel("fidelity (1 = counterfactual, 0 = no-op)")
    draws = f"; audio: mean of {s['noise_draws']} noise draws" if s.get("noise_draws") else ""
    ax.set_title(f"swap fidelity against the generator's counterfactual ({s.get('pairs', '?')} pairs{draws})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _plot_decomposition(s: dict[str, Any], path: Path) -> Path:
    """Each swap (filled) and its ceiling (hollow, joined) in the (along, off) plane of
    `evaluation.swap.decompose`, with the faces' iso-fidelity curves off = 1 - (1 - along)^2 - fidelity."""
    plt = _plt()
    from avmdvae.evaluation.swap import SWAP_LATENTS

    top = s.get("ceiling_decomposition", {})
    dec = {k: s["decomposition"][k] for k in SWAP_LATENTS if k in s.get("decomposition", {})}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    a = np.linspace(0, 1.2, 100)
    for f, style in ((0.0, ":"), (0.6, "--"), (0.8, "-")):
        ax.plot(a, 1 - (1 - a) ** 2 - f, style, color="grey", lw=0.8)
        ax.text(1.2, 1 - 0.04 - f, f"face fidelity {f:g}", fontsize=7, color="grey", ha="right", va="top")
    k = 0
    for latent, per in dec.items():
        for mod, v in per.items():
            x, y = v.get("along"), v.get("off")
            if x is None or y is None:
                continue
            c, marker = f"C{k % 10}", "o" if mod == "visual" else "s"
            ax.plot([x], [y], marker, color=c, label=f"{latent} {mod}")
            t = top.get(latent, {}).get(mod, {})
            if t.get("along") is not None and t.get("off") is not None:
                ax.plot([x, t["along"]], [y, t["off"]], "-", color=c, lw=0.8, alpha=0.6)
                ax.plot([t["along"]], [t["off"]], marker, mfc="none", color=c)
            k += 1
    ax.set_xlim(-0.1, 1.2)
    ax.set_ylim(0, max(1.2, *(v.get("off") or 0 for per in dec.values() for v in per.values())) + 0.05)
    ax.set_xlabel("along: share of the counterfactual's change made (1 = all)")
    ax.set_ylabel("off: other change, in units of it")
    ax.set_title("where each swap's error comes from (filled) and its ceiling (hollow)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _plot_code_shift(s: dict[str, Any], path: Path) -> Path:
    """`swap.code_shift` as a matrix: rows the counterfactual (A with B's L), columns the latents of its code,
    colour *moved* (the share of the way from A's code to B's), text moved / resid; a factorised model shows
    the identity (framed)."""
    plt = _plt()
    code = s["code_shift"]
    rows = [k for k in (*MDVAE_LATENTS, "all") if k in code]  # report.json sorts its keys
    cols = list(MDVAE_LATENTS)
    moved = np.array([[code[r][x].get("moved") for x in cols] for r in rows], np.float64)  # null (None) -> nan
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2.2, 0.6 * len(rows) + 1.6))
    im = ax.imshow(moved, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(cols)), [f"{x}'s code" for x in cols])
    ax.set_yticks(range(len(rows)), [f"c = A with B's {r}" for r in rows])
    for i, r in enumerate(rows):
        for j, x in enumerate(cols):
            if np.isfinite(moved[i, j]):
                ax.text(j, i, f"{moved[i, j]:.2f} / {_f(code[r][x].get('resid'), 2)}", ha="center", va="center",
                        color="w" if moved[i, j] < 0.6 else "k", fontsize=7)
            if r == x or r == "all":
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.2))
    fig.colorbar(im, ax=ax, label="moved: share of the way from A's code to B's")
    ax.set_title("where the counterfactual's change lands in the code (moved / resid; red: by design)", fontsize=9)
    return _save(fig, path)


DENOISE_METRICS = {"audio": (("stoi", "STOI"), ("pesq", "PESQ"), ("lsd_db", "LSD dB")),
                   "visual": (("psnr", "PSNR dB"), ("ssim", "SSIM"), ("move_along_region", "movement along"),
                              ("move_off_region", "movement off"))}
DENOISE_PLOTTED = ("stoi", "pesq", "psnr", "move_along_region")  # two panels per modality


def _md_denoise(dn: dict[str, Any]) -> str:
    out = [f"## Denoising ({dn['clips']} test clips)\n",
           "Metrics of the corrupted modality against the clean input, before (corrupted input) and after "
           f"each system; mean ± std over clips. Audio output: {dn.get('audio_output', '')}.\n"]
    for mod, metrics in DENOISE_METRICS.items():
        conds = [c for c in dn["conditions"] if c["modality"] == mod]
        if not conds:
            continue
        out.append(f"### {mod}\n")
        if mod == "visual":
            out.append("Movement of the corrupted region (the occluded box, or the whole crop for pixel noise), as in "
                       "the resynthesis table: the share of the clean clip's movement there that the output renders "
                       "(along: 1 all of it, 0 still) and what moves besides (off).\n")
        rows = []
        for c in conds:
            for system, m in c["systems"].items():
                rows.append([c["noise"], system] + [_ms(m.get(k), 2 if k in ("psnr", "lsd_db") else 3)
                                                     for k, _ in metrics])
        out.append(_table(["corruption", "system"] + [lbl for _, lbl in metrics], rows))
    return "\n".join(out)


def _plot_denoise(dn: dict[str, Any], modality: str, path: Path) -> Path:
    plt = _plt()
    conds = [c for c in dn["conditions"] if c["modality"] == modality]
    kinds = list(dict.fromkeys(c["kind"] for c in conds))
    metrics = [m for m in DENOISE_METRICS[modality] if m[0] in DENOISE_PLOTTED]
    fig, axes = plt.subplots(len(metrics), len(kinds), figsize=(4.2 * len(kinds), 3.2 * len(metrics)),
                             squeeze=False)
    for j, kind in enumerate(kinds):
        cs = [c for c in conds if c["kind"] == kind]
        numeric = len(cs) > 1 and all(isinstance(c["level"], (int, float)) for c in cs)  # else categories
        if numeric:
            cs = sorted(cs, key=lambda c: c["level"])
        x = [c["level"] for c in cs] if numeric else list(range(len(cs)))
        systems = list(dict.fromkeys(s for c in cs for s in c["systems"]))
        for i, (k, label) in enumerate(metrics):
            ax = axes[i][j]
            for si, s in enumerate(systems):
                m = np.array([c["systems"].get(s, {}).get(k, {}).get("mean", np.nan) for c in cs], np.float64)
                sd = np.array([c["systems"].get(s, {}).get(k, {}).get("std", np.nan) for c in cs], np.float64)
                ref = s == "corrupted input"
                if numeric:  # a curve over levels
                    ax.plot(x, m, "--" if ref else "o-", label=s, color="k" if ref else f"C{si}")
                    ax.fill_between(x, m - sd, m + sd, alpha=0.1)
                else:  # separate conditions: points with their spread, side by side
                    dx = 0.6 * (si - (len(systems) - 1) / 2) / len(systems)
                    ax.errorbar(np.asarray(x) + dx, m, yerr=sd, fmt="_" if ref else "o", label=s,
                                color="k" if ref else f"C{si}", capsize=3)
            if not numeric:
                ax.set_xticks(x, [str(c["level"]) for c in cs])
                ax.set_xlim(-0.5, len(cs) - 0.5)
            ax.set_xlabel({"white": "SNR (dB)", "babble": "SNR (dB)", "gaussian": "sigma"}.get(kind, kind))
            ax.set_ylabel(label)
            if i == 0:
                ax.set_title(f"{modality}: {kind}")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- write
def write_report(out_dir: str | Path, results: dict[str, Any]) -> list[Path]:
    """Write report.json, report.md and the plots of the tasks present; returns the written paths."""
    out = Path(out_dir)
    res = _clean(results)
    plots: list[str] = []
    md = ["# avmdvae evaluation report\n"]
    meta = res.get("meta", {})
    if meta:
        md.append(_table(["", ""], [[k, f"`{v}`"] for k, v in meta.items()]))
    for task, reason in res.get("skipped", {}).items():
        md.append(f"**{task} skipped**: {reason}\n")
    with all_or_nothing() as stage:

        def plot(draw: Callable[..., Path], section: dict[str, Any], name: str, *args: Any) -> None:
            draw(section, *args, stage(out / name))
            plots.append(name)

        if "resynth" in res:
            md.append(_md_resynth(res["resynth"]))
            plot(_plot_resynth, res["resynth"], "resynth.png")
        if "emotion" in res:
            md.append(_md_emotion(res["emotion"]))
            plot(_plot_emotion, res["emotion"], "emotion_learning_curve.png")
        if "disentangle" in res:
            md.append(_md_disentangle(res["disentangle"]))
            plot(_plot_matrix, res["disentangle"], "factor_matrix.png")
            if "latents" in res["disentangle"].get("swap", {}):
                plot(_plot_swap, res["disentangle"], "swap_scores.png")
        if "denoise" in res:
            md.append(_md_denoise(res["denoise"]))
            for mod in ("audio", "visual"):
                if any(c["modality"] == mod for c in res["denoise"]["conditions"]):
                    plot(_plot_denoise, res["denoise"], f"denoise_{mod}.png", mod)
        if "swap" in res:  # swap fidelity against the counterfactual (avmdvae.evaluation.swap)
            from avmdvae.evaluation.swap import markdown as swap_markdown

            md.append(swap_markdown(res["swap"]))
            plot(_plot_fidelity, res["swap"], "swap_fidelity.png")
            if res["swap"].get("decomposition"):
                plot(_plot_decomposition, res["swap"], "swap_decomposition.png")
            if res["swap"].get("code_shift"):
                plot(_plot_code_shift, res["swap"], "swap_code_shift.png")
            res["swap_fidelity"] = res["swap"]["swap_fidelity"]  # swap_fidelity.<latent>.<audio|visual|mean>
        if plots:
            md.append("## Plots\n\n" + "\n".join(f"![{p}]({p})" for p in plots) + "\n")
        res["plots"] = plots
        write_json(stage(out / REPORT_JSON), res)
        write_text(stage(out / REPORT_MD), "\n".join(md))
    return [out / REPORT_JSON, out / REPORT_MD, *(out / p for p in plots)]


__all__ = ["REPORT_JSON", "REPORT_MD", "write_report"]

"""Linear probes: how much of a label or a continuous factor a representation makes linearly available.

    learning_curve(X, y, groups, ks, draws)   few-label classification: k labelled clips per class,
                                              speaker-disjoint train/test, repeated random draws
    probe_classification(X, y, groups)        cross-validated accuracy / macro-F1 / informativeness
    probe_regression(X, Y, groups)            cross-validated R^2 of continuous targets (NaN = missing)

X: (n, D) float features (one row per clip, or per frame); y: (n,) labels; groups: (n,) speaker ids.
Every probe standardises X with statistics of its training rows only. scikit-learn is imported lazily
(extra `metrics`); when missing, ConfigError says how to install it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from avmdvae.errors import ConfigError

KS = (1, 2, 5, 10, 20, 50)  # labelled clips per class on the learning curve (those the data allows)
DRAWS = 10  # random draws (speaker partition + labelled subset) per point of the curve
TEST_FRACTION = 0.3  # share of speakers held out as probe-test speakers in each draw
FOLDS = 3  # cross-validation folds of probe_classification / probe_regression
LOGREG_C = 1.0  # inverse L2 strength of the logistic regression on standardised features
# ridge penalties tried: by generalised cross-validation (RidgeCV) on rows without groups, by inner
# group-disjoint folds with groups (frames of one clip are near copies of each other, so a leave-one-
# row-out choice picks a penalty that fits the training speakers and fails on others)
RIDGE_ALPHAS = tuple(10.0 ** np.arange(-2, 7))


def _sk() -> Any:
    try:
        import sklearn  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("probes need scikit-learn: pip install 'avmdvae[metrics]'.") from None
    import sklearn.linear_model as lm
    import sklearn.metrics as skm
    import sklearn.preprocessing as pp

    return lm, skm, pp


def fit_classifier(x: np.ndarray, y: np.ndarray, c: float = LOGREG_C) -> Any:
    """Standardise + multinomial logistic regression; returns an object with predict / predict_proba."""
    lm, _, pp = _sk()
    from sklearn.pipeline import make_pipeline

    clf = make_pipeline(pp.StandardScaler(), lm.LogisticRegression(C=c, max_iter=2000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on tiny training sets
        clf.fit(np.asarray(x, np.float64), np.asarray(y))
    return clf


def fit_regressor(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None, folds: int = FOLDS,
                  seed: int = 0) -> Any:
    """Standardise + ridge regression; y (n,) or (n, K). The penalty (one of RIDGE_ALPHAS, per target) is
    chosen by generalised cross-validation, or, with `groups` of >= 2 values, by `folds` group-disjoint
    folds."""
    lm, _, pp = _sk()
    from sklearn.pipeline import make_pipeline

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if groups is None or len(np.unique(groups)) < 2:
        reg = make_pipeline(pp.StandardScaler(), lm.RidgeCV(alphas=RIDGE_ALPHAS, alpha_per_target=y.ndim > 1))
    else:
        alpha = grouped_ridge_alpha(x, y, groups, folds, seed)
        reg = make_pipeline(pp.StandardScaler(), lm.Ridge(alpha=alpha if y.ndim > 1 else float(alpha[0])))
    reg.fit(x, y)
    return reg


def grouped_ridge_alpha(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = FOLDS,
                        seed: int = 0) -> np.ndarray:
    """Per target (K,), the RIDGE_ALPHAS penalty with the least squared error over group-disjoint folds
    (x standardised on each fold's training rows). One eigendecomposition per fold serves every
    penalty and target: with X^T X = V diag(lam) V^T (X centred), the ridge prediction for new rows
    is X_new V diag(1 / (lam + alpha)) V^T X^T y."""
    y2 = y[:, None] if y.ndim == 1 else y
    alphas = np.asarray(RIDGE_ALPHAS)
    sse = np.zeros((len(alphas), y2.shape[1]))
    for te in _folds(len(x), np.asarray(groups), None, folds, seed):
        tr = np.setdiff1d(np.arange(len(x)), te)
        mu, sd = x[tr].mean(0), x[tr].std(0)
        sd[sd == 0] = 1.0
        xt, xv = (x[tr] - mu) / sd, (x[te] - mu) / sd
        ym = y2[tr].mean(0)
        lam, v = np.linalg.eigh(xt.T @ xt)
        vtxy = v.T @ (xt.T @ (y2[tr] - ym))  # (p, K)
        xvv = xv @ v  # (n_te, p)
        for i, a in enumerate(alphas):
            pred = xvv @ (vtxy / (np.clip(lam, 0, None) + a)[:, None]) + ym
            sse[i] += np.sum((y2[te] - pred) ** 2, 0)
    return alphas[np.argmin(sse, 0)]


def _scores(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float, float]:
    """(accuracy, macro-F1 over the classes present in y_true, balanced accuracy)."""
    _, skm, _ = _sk()
    labels = np.unique(y_true)
    acc = float(np.mean(y_true == y_pred))
    f1 = float(skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    recalls = [float(np.mean(y_pred[y_true == c] == c)) for c in labels]
    return acc, f1, float(np.mean(recalls))


def speaker_partition(groups: np.ndarray, rng: np.random.Generator,
                      test_fraction: float = TEST_FRACTION) -> np.ndarray:
    """Boolean test mask holding out a random ~test_fraction of the speakers (at least one, never all)."""
    speakers = np.unique(groups)
    if len(speakers) < 2:
        raise ConfigError("speaker-disjoint probes need clips of at least 2 speakers")
    n_test = int(np.clip(round(test_fraction * len(speakers)), 1, len(speakers) - 1))
    test_spk = rng.choice(speakers, n_test, replace=False)
    return np.isin(groups, test_spk)


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def learning_curve(x: np.ndarray, y: Sequence[Any], groups: Sequence[Any], ks: Sequence[int] = KS,
                   draws: int = DRAWS, seed: int = 0, test_fraction: float = TEST_FRACTION,
                   c: float = LOGREG_C) -> dict[str, Any]:
    """Few-label linear probe: accuracy, balanced accuracy and macro-F1 vs k labelled clips per class.

    Each draw holds out a random share of the speakers (probe-test set), then for every k samples
    k clips of each class from the other speakers and fits the probe on those k * C clips. The data
    allows k up to `k_max`, the largest k for which, in at least half of the draws, every class has k
    clips among the training speakers; the curve has every k of `ks` up to k_max, k_max itself, and
    "all" (every clip of the training speakers).

    Labels are often unbalanced (half the clips neutral): the reference for accuracy is then the
    majority-class baseline (always answering the training speakers' most frequent class, scored on
    the test speakers), and balanced accuracy (mean recall over classes, chance 1 / C) is the figure
    that compares across label distributions.
    Returns {"points": [{"k": k|"all", "accuracy": {mean, std, n}, "balanced_accuracy": {...},
    "macro_f1": {...}}], "classes", "class_counts", "chance": 1 / C, "majority_baseline": {mean, std, n},
    "majority_class", "k_max", "draws"}.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray([str(v) for v in y])
    g = np.asarray([str(v) for v in groups])
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise ConfigError(f"a probe needs at least 2 classes, the data has {len(classes)}")
    rng = np.random.default_rng(seed)
    tests = [speaker_partition(g, rng, test_fraction) for _ in range(draws)]
    need = max(1, (draws + 1) // 2)
    smallest = sorted((min(int(np.sum(y[~t] == cl)) for cl in classes) for t in tests), reverse=True)
    k_max = smallest[need - 1]
    grid = sorted({k for k in ks if k <= k_max} | ({k_max} if k_max >= 1 else set()))
    per_k: dict[Any, tuple[list[float], list[float], list[float]]] = {k: ([], [], []) for k in [*grid, "all"]}
    majority: list[float] = []
    for test in tests:
        pool = np.flatnonzero(~test)
        te = np.flatnonzero(test)
        values, n_pool = np.unique(y[pool], return_counts=True)
        majority.append(float(np.mean(y[te] == values[np.argmax(n_pool)])))
        by_class = {cl: pool[y[pool] == cl] for cl in classes}
        for k in [*grid, "all"]:
            if k == "all":
                idx = pool
            else:
                if any(len(v) < k for v in by_class.values()):
                    continue
                idx = np.concatenate([rng.choice(v, k, replace=False) for v in by_class.values()])
            if len(np.unique(y[idx])) < 2:
                continue
            clf = fit_classifier(x[idx], y[idx], c)
            for store, value in zip(per_k[k], _scores(y[te], clf.predict(x[te])), strict=True):
                store.append(value)
    points = []
    for k, (accs, f1s, bals) in per_k.items():
        if len(accs) >= need:
            points.append({"k": k, "accuracy": _mean_std(accs), "balanced_accuracy": _mean_std(bals),
                           "macro_f1": _mean_std(f1s)})
    return {"points": points, "classes": classes.tolist(),
            "class_counts": {str(cl): int(n) for cl, n in zip(classes, counts, strict=True)},
            "chance": 1.0 / len(classes), "majority_baseline": _mean_std(majority),
            "majority_class": str(classes[np.argmax(counts)]), "k_max": int(k_max), "draws": draws}


def _folds(n: int, groups: np.ndarray | None, y: np.ndarray | None, folds: int,
           seed: int) -> list[np.ndarray]:
    """Test-index arrays: grouped (speaker-disjoint) when groups has >= 2 values, else stratified/random."""
    rng = np.random.default_rng(seed)
    if groups is not None and len(np.unique(groups)) >= 2:
        spk = rng.permutation(np.unique(groups))
        k = min(folds, len(spk))
        return [np.flatnonzero(np.isin(groups, part)) for part in np.array_split(spk, k)]
    order = rng.permutation(n)
    if y is not None:  # stratified: deal each class round-robin over the folds
        order = np.concatenate([order[y[order] == c] for c in np.unique(y)])
    k = min(folds, n)
    return [order[i::k] for i in range(k)]


@dataclass
class ClassProbe:
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    chance: float
    informativeness: float  # (balanced accuracy - chance) / (1 - chance), clipped to [0, 1]

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def probe_classification(x: np.ndarray, y: Sequence[Any], groups: Sequence[Any] | None = None,
                         folds: int = FOLDS, seed: int = 0, c: float = LOGREG_C) -> ClassProbe:
    """Cross-validated linear classification probe (speaker-disjoint folds when `groups` is given).

    Predictions of all folds are pooled, then scored. Classes absent from a fold's training rows are
    simply never predicted in that fold. Informativeness rescales balanced accuracy so that chance
    (1 / number of classes) is 0 and perfect is 1.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray([str(v) for v in y])
    g = None if groups is None else np.asarray([str(v) for v in groups])
    classes = np.unique(y)
    if len(classes) < 2:
        raise ConfigError(f"a probe needs at least 2 classes, the data has {len(classes)}")
    pred = np.empty_like(y)
    for te in _folds(len(y), g, y, folds, seed):
        tr = np.setdiff1d(np.arange(len(y)), te)
        if len(np.unique(y[tr])) < 2:
            pred[te] = y[tr][0] if len(tr) else classes[0]
            continue
        pred[te] = fit_classifier(x[tr], y[tr], c).predict(x[te])
    acc, f1, bal = _scores(y, pred)
    chance = 1.0 / len(classes)
    info = float(np.clip((bal - chance) / (1 - chance), 0.0, 1.0))
    return ClassProbe(acc, bal, f1, chance, info)


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """1 - SSE / SST over the finite entries of y_true (one column); nan when y_true is constant."""
    m = np.isfinite(y_true)
    yt, yp = y_true[m], y_pred[m]
    sst = float(np.sum((yt - yt.mean()) ** 2))
    if sst <= 0 or len(yt) < 2:
        return float("nan")
    return 1.0 - float(np.sum((yt - yp) ** 2)) / sst


def probe_regression(x: np.ndarray, y: np.ndarray, groups: Sequence[Any] | None = None,
                     folds: int = FOLDS, seed: int = 0) -> dict[str, Any]:
    """Cross-validated ridge probe of continuous targets y (n,) or (n, K); NaN entries are missing.

    Returns {"r2": [per target], "r2_mean": mean over targets, "informativeness": mean over targets of
    clip(r2, 0, 1)} (a target no better than its mean counts 0, without cancelling what the others show).
    R^2 is computed on the pooled out-of-fold predictions (speaker-disjoint folds with `groups`).
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    y2 = y[:, None] if y.ndim == 1 else y
    g = None if groups is None else np.asarray([str(v) for v in groups])
    pred = np.full_like(y2, np.nan)
    present = np.isfinite(y2)
    # targets missing on the same rows are fitted together (one decomposition of x per fold)
    for mask in np.unique(present, axis=1).T:
        cols = np.flatnonzero((present == mask[:, None]).all(0))
        rows = np.flatnonzero(mask)
        for te in _folds(len(rows), None if g is None else g[rows], None, folds, seed):
            tr = np.setdiff1d(np.arange(len(rows)), te)
            if len(tr) < 2:
                continue
            inner = None if g is None else g[rows[tr]]  # the penalty chosen on other training speakers
            reg = fit_regressor(x[rows[tr]], y2[np.ix_(rows[tr], cols)], inner, folds, seed)
            pred[np.ix_(rows[te], cols)] = reg.predict(x[rows[te]]).reshape(len(te), len(cols))
    r2 = [r2_score(y2[:, j], np.nan_to_num(pred[:, j], nan=float(np.nanmean(y2[:, j]))))
          for j in range(y2.shape[1])]
    finite = [v for v in r2 if np.isfinite(v)]
    mean = float(np.mean(finite)) if finite else float("nan")
    info = float(np.mean(np.clip(finite, 0, 1))) if finite else float("nan")
    return {"r2": r2, "r2_mean": mean, "informativeness": info}


__all__ = ["ClassProbe", "KS", "fit_classifier", "fit_regressor", "grouped_ridge_alpha", "learning_curve",
           "probe_classification", "probe_regression", "r2_score", "speaker_partition"]

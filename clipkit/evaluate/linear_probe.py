"""Linear probe as in the CLIP paper (§3.2, appendix A.3): L-BFGS logistic regression with a swept L2 strength.

Protocol (appendix A.3): scikit-learn's L-BFGS logistic regression, at most 1,000 iterations; the
L2 strength lambda is chosen on a validation split from a log grid over [1e-6, 1e6] with 96 steps,
searched coarse to fine (every 16th point, then binary refinement around the best); the final
model is refit on train + validation with the chosen lambda and scored on test.

lambda -> C: scikit-learn minimises  C * sum_i CE(x_i, y_i) + 1/2 ||W||^2,  i.e. C is the inverse of
the L2 strength of  sum_i CE + lambda/2 ||W||^2. We use C = 1 / lambda, scikit-learn's own reading
of C ("inverse of regularization strength") and the one in the linear-probe example of OpenAI's
CLIP README (C=0.316). lambda is therefore not divided by the number of samples.

Features: the L2-normalised output of `encode_image` (the joint embedding), as CLIP_benchmark uses;
the paper probes ViTs before the projection, which differs by one linear map. CLIP_benchmark's
own linear probe trains a torch linear layer with AdamW and sweeps weight decay over [1e-6, 1e2]
instead; its numbers are therefore close to, not equal to, these.

Speed (50k x 512 on two CPU cores): the sweep walks from strong to weak regularisation and warm-
starts every fit from the solution at the nearest stronger lambda already fitted (the regularisation
path, as scikit-learn's LogisticRegressionCV does), which cuts the L-BFGS iterations several fold;
fits run in float64 (scikit-learn keeps its weights in float64: float32 features would be cast on
every product, off the BLAS path, several times slower). See bench/README.md for measured times.

Convergence: current scikit-learn (1.9 here) minimises the loss *averaged* over samples, and L-BFGS
stops when the largest gradient entry is below `tol` (1e-4) on that scale; older releases (the
paper's) summed it.
Pass tol=1e-4 / n for the old, much stricter criterion (and many more iterations). A warm-started
fit may stop after 0 iterations when its start already meets the criterion. A fit that reaches
`max_iter` first has not converged: every result counts those fits (`not_converged`, of `n_fits`)
instead of printing scikit-learn's ConvergenceWarning, so a lambda chosen from unfinished fits shows.
"""
from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from clipkit.evaluate.features import extract_image_features
from clipkit.evaluate.zeroshot import classification_metrics

log = logging.getLogger("clipkit.evaluate")
MAX_ITER = 1000                           # appendix A.3: "a maximum of 1,000 iterations"
LAMBDAS = np.logspace(-6, 6, 97)          # appendix A.3: 1e-6 ... 1e6, 96 log steps (97 points)
COARSE = 16                               # coarse grid: every 16th point = 1e-6, 1e-4, ..., 1e6
SPANS = (8, 4, 2, 1)                      # binary refinement around the best point
KSHOTS = (1, 2, 4, 8, 16)                 # §3.1.5, Figs. 6-7: few-shot probes vs zero-shot
SMALL_PROBLEM = 5e7                       # samples x dim x classes below which BLAS runs one thread


class _Fitter:
    """Fits logistic regression at grid points of LAMBDAS, warm-starting each from the nearest fit
    with a larger lambda (a cold start from zero when there is none)."""

    def __init__(self, X, y, max_iter: int = MAX_ITER, tol: float = 1e-4):
        # float64: scikit-learn keeps its coefficients in float64, and float32 X @ float64 W misses BLAS
        self.X, self.y, self.max_iter, self.tol = np.asarray(X, np.float64), np.asarray(y), max_iter, tol
        self.models: dict[int, LogisticRegression] = {}
        self.not_converged = 0

    def fit(self, i: int, init: LogisticRegression | None = None) -> LogisticRegression:
        if i in self.models:
            return self.models[i]
        stronger = [j for j in self.models if j > i]
        if init is None and stronger:  # the nearest stronger lambda: the regularisation path, as in
            init = self.models[min(stronger)]  # scikit-learn's LogisticRegressionCV (weights only grow)
        clf = LogisticRegression(C=1.0 / LAMBDAS[i], solver="lbfgs", max_iter=self.max_iter, tol=self.tol,
                                 warm_start=init is not None)
        if init is not None:  # scikit-learn starts from coef_/intercept_ when warm_start is set
            clf.coef_, clf.intercept_ = init.coef_.copy(), init.intercept_.copy()
        self.not_converged += _fit_counted(clf, self.X, self.y, self.max_iter)
        self.models[i] = clf
        return clf


def _fit_counted(clf: LogisticRegression, X, y, max_iter: int) -> int:
    """Fit `clf` in place; 1 if L-BFGS stopped at `max_iter` (did not converge), else 0.

    scikit-learn warns (ConvergenceWarning) once per such fit; a sweep of ~15 fits would print the
    same line many times, so the warning is silenced here and the fits are counted instead, and the
    count travels with the result (`not_converged`) for the probes and notebooks to show."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    return int(np.max(clf.n_iter_) >= max_iter)


def _blas_threads(X, y):
    """One BLAS thread for small problems: their products take microseconds, and OpenBLAS threads
    spin-waiting for a core on a busy 2-core machine made a 2k x 512 probe 25x slower."""
    small = np.shape(X)[0] * np.shape(X)[1] * len(np.unique(y)) < SMALL_PROBLEM
    return threadpool_limits(1 if small else None, user_api="blas")


def _accuracy(clf: LogisticRegression, X, y) -> float:
    return float((clf.predict(np.asarray(X, np.float64)) == np.asarray(y)).mean())


def sweep_lambda(train_X, train_y, val_X, val_y, max_iter: int = MAX_ITER, tol: float = 1e-4) -> dict:
    """Appendix A.3's search: coarse grid, then spans 8, 4, 2, 1 around the best validation accuracy.

    Returns {"index", "lambda", "val_acc1", "tried": {lambda: val acc}, "model", "n_fits",
    "not_converged"}. Ties go to the larger lambda (the simpler model), so the result does not
    depend on the order points were tried in.
    """
    with _blas_threads(train_X, train_y):
        return _sweep(_Fitter(train_X, train_y, max_iter=max_iter, tol=tol), val_X, val_y)


def _sweep(fitter: _Fitter, val_X, val_y) -> dict:
    acc: dict[int, float] = {}

    def score(i):
        if i not in acc:
            acc[i] = _accuracy(fitter.fit(i), val_X, val_y)
        return acc[i]

    best = lambda idxs: max(idxs, key=lambda i: (score(i), i))  # noqa: E731  (ties: larger lambda)
    # strong regularisation first: those fits are near zero and fast, and warm-start the next
    peak = best(list(range(len(LAMBDAS) - 1, -1, -COARSE)))
    for span in SPANS:
        peak = best([max(peak - span, 0), peak, min(peak + span, len(LAMBDAS) - 1)])
    return {"index": peak, "lambda": float(LAMBDAS[peak]), "val_acc1": acc[peak],
            "tried": {float(LAMBDAS[i]): a for i, a in sorted(acc.items())}, "model": fitter.models[peak],
            "n_fits": len(fitter.models), "not_converged": fitter.not_converged}


def split_validation(y, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): a class-stratified random split with `fraction` held out,
    at least one sample of each class with two or more samples going to validation."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        if len(idx) >= 2:
            val.extend(idx[:max(1, int(round(fraction * len(idx))))])
    val = np.sort(np.array(val, dtype=int))
    return np.setdiff1d(np.arange(len(y)), val), val


def fit_linear_probe(train_X, train_y, seed: int = 0, max_iter: int = MAX_ITER) -> tuple[LogisticRegression, float]:
    """Appendix A.3 on one train split: lambda swept on a stratified 20% of train, then refit on all of
    train (the probes' and cross-dataset analyses' form). Returns (classifier, lambda).

    Convergence travels on the classifier: `clf.n_fits_` is the number of L-BFGS fits (sweep + refit)
    and `clf.not_converged_` how many of them stopped at `max_iter` without converging."""
    X, y = np.asarray(train_X, np.float64), np.asarray(train_y)
    tr, va = split_validation(y, 0.2, seed)
    sweep = sweep_lambda(X[tr], y[tr], X[va], y[va], max_iter=max_iter)
    clf = LogisticRegression(C=1.0 / sweep["lambda"], solver="lbfgs", max_iter=max_iter)
    with threadpool_limits(1, user_api="blas"):  # small problems: one BLAS thread (see _blas_threads)
        refit_failed = _fit_counted(clf, X, y, max_iter)
    clf.n_fits_, clf.not_converged_ = sweep["n_fits"] + 1, sweep["not_converged"] + refit_failed
    return clf, sweep["lambda"]


def predict(clf: LogisticRegression, X) -> np.ndarray:
    """Class ids predicted by a fitted probe for (N, d) features."""
    with threadpool_limits(1, user_api="blas"):
        return clf.predict(np.asarray(X, np.float64))

def linear_probe(train_X, train_y, test_X, test_y, val_X=None, val_y=None, val_fraction: float = 0.2,
                 seed: int = 0, refit_on_val: bool = True, max_iter: int = MAX_ITER, tol: float = 1e-4) -> dict:
    """Sweep lambda on validation, refit on train + val, score on test. Returns CLIP_benchmark's keys
    (lp_acc1, lp_acc5, lp_mean_per_class_recall) plus lambda, C and sweep details.

    Without a validation split, `val_fraction` of train (stratified, seeded) is held out for the
    sweep; "train + val" is then the whole train set again.
    """
    t0 = time.perf_counter()
    train_X, train_y = np.asarray(train_X, np.float64), np.asarray(train_y)
    if val_X is None:
        tr, va = split_validation(train_y, val_fraction, seed)
        fit_X, fit_y, val_X, val_y = train_X[tr], train_y[tr], train_X[va], train_y[va]
    else:
        fit_X, fit_y = train_X, train_y
        val_X, val_y = np.asarray(val_X, np.float64), np.asarray(val_y)
    sweep = sweep_lambda(fit_X, fit_y, val_X, val_y, max_iter=max_iter, tol=tol)
    if refit_on_val:
        final_X, final_y = np.concatenate([fit_X, val_X]), np.concatenate([fit_y, val_y])
    else:
        final_X, final_y = fit_X, fit_y
    final = _Fitter(final_X, final_y, max_iter=max_iter, tol=tol)
    n_classes = len(np.unique(np.concatenate([train_y, np.asarray(test_y)])))
    test_X = np.asarray(test_X, np.float64)
    with _blas_threads(final_X, final_y):
        clf = final.fit(sweep["index"], init=sweep["model"])
        # predict_proba's columns follow clf.classes_ (the labels seen in training); place them by label id
        scores = np.zeros((len(test_X), int(max(clf.classes_.max(), np.max(test_y))) + 1))
        scores[:, clf.classes_] = clf.predict_proba(test_X)
    m = classification_metrics(scores, test_y, n_classes=n_classes)
    return {"lp_acc1": m["acc1"], "lp_acc5": m["acc5"], "lp_mean_per_class_recall": m["mean_per_class_recall"],
            "lambda": sweep["lambda"], "C": 1.0 / sweep["lambda"], "val_acc1": sweep["val_acc1"],
            "n_fits": sweep["n_fits"] + 1, "not_converged": sweep["not_converged"] + final.not_converged,
            "n_train": len(final_y), "seconds": round(time.perf_counter() - t0, 3), "tried": sweep["tried"]}


def kshot_indices(y, k: int, seed: int = 0) -> np.ndarray:
    """Indices of k random samples of every class (sorted); raises if a class has fewer than k."""
    y = np.asarray(y)
    rng = np.random.default_rng([seed, k])
    out = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < k:
            raise ValueError(f"class {c} has {len(idx)} training samples, fewer than k={k}")
        out.extend(rng.choice(idx, size=k, replace=False))
    return np.sort(np.array(out, dtype=int))


def kshot_probes(train_X, train_y, test_X, test_y, ks=KSHOTS, seeds=(0, 1, 2), val_X=None, val_y=None,
                 val_fraction: float = 0.2, max_iter: int = MAX_ITER) -> pd.DataFrame:
    """k-shot linear probes: the paper's "zero-shot matches a k-shot probe" comparison (§3.1.5, Figs. 6-7).

    For each k and seed: k random training samples per class; lambda swept on the validation split
    (given, else a stratified `val_fraction` of the training samples outside the k-shot set, as
    labelled data for model selection only); the final fit uses the k-shot samples alone.
    One row per (k, seed) with lp_acc1, lp_acc5, lp_mean_per_class_recall, lambda and the fits that
    did not converge (not_converged, of n_fits).
    """
    train_X, train_y = np.asarray(train_X, np.float64), np.asarray(train_y)
    rows = []
    for k in ks:
        for seed in seeds:
            shot = kshot_indices(train_y, k, seed)
            if val_X is None:
                rest = np.setdiff1d(np.arange(len(train_y)), shot)
                _, va = split_validation(train_y[rest], val_fraction, seed)
                vX, vy = train_X[rest[va]], train_y[rest[va]]
            else:
                vX, vy = val_X, val_y
            r = linear_probe(train_X[shot], train_y[shot], test_X, test_y, vX, vy, refit_on_val=False,
                             max_iter=max_iter)
            rows.append({"k": k, "seed": seed, **{key: r[key] for key in (
                "lp_acc1", "lp_acc5", "lp_mean_per_class_recall", "lambda", "val_acc1", "n_fits", "not_converged",
                "seconds")}})
    return pd.DataFrame(rows)


def evaluate_linear_probe(model, train_dataset, test_dataset, val_dataset=None, batch_size: int = 256,
                          num_workers: int = 0, cache=True, progress: bool = True, **probe_kwargs) -> dict:
    """Linear-probe metrics of `model`: image features of each split (cached), then `linear_probe`."""
    def get(ds):
        return extract_image_features(model, ds, batch_size=batch_size, num_workers=num_workers, cache=cache,
                                      progress=progress)

    tr, te = get(train_dataset), get(test_dataset)
    va = get(val_dataset) if val_dataset is not None else None
    return linear_probe(tr.features.numpy(), tr.targets.numpy(), te.features.numpy(), te.targets.numpy(),
                        va.features.numpy() if va else None, va.targets.numpy() if va else None, **probe_kwargs)

"""Linear probe: the appendix A.3 search finds the peak, lambda maps to C = 1/lambda, k-shot sampling, end to end."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import clipkit.evaluate.linear_probe as lp


def blobs(n_per_class=20, classes=3, dim=8, sep=3.0, seed=0):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(classes, dim)) * sep
    y = np.repeat(np.arange(classes), n_per_class)
    x = mu[y] + rng.normal(size=(len(y), dim))
    return x.astype(np.float32), y


def test_grid_is_the_papers():
    assert len(lp.LAMBDAS) == 97 and lp.LAMBDAS[0] == pytest.approx(1e-6) and lp.LAMBDAS[-1] == pytest.approx(1e6)
    np.testing.assert_allclose(np.diff(np.log10(lp.LAMBDAS)), 12 / 96)
    np.testing.assert_allclose(lp.LAMBDAS[::lp.COARSE], 10.0 ** np.arange(-6, 7, 2))


@pytest.mark.parametrize("peak", [0, 5, 37, 50, 61, 96])
def test_coarse_then_binary_search_finds_the_peak_of_a_unimodal_curve(monkeypatch, peak):
    """Validation accuracy that falls off on both sides of one grid point: the search must land on it."""
    monkeypatch.setattr(lp._Fitter, "fit", lambda self, i, init=None: self.models.setdefault(i, i))
    monkeypatch.setattr(lp, "_accuracy", lambda clf, X, y: 1.0 - abs(clf - peak) / 200)
    x, y = blobs()
    r = lp.sweep_lambda(x, y, x, y)
    assert r["index"] == peak and r["lambda"] == pytest.approx(lp.LAMBDAS[peak])
    assert r["n_fits"] <= 7 + 2 * len(lp.SPANS)  # coarse grid + two new points per refinement step


def test_ties_go_to_the_larger_lambda(monkeypatch):
    monkeypatch.setattr(lp._Fitter, "fit", lambda self, i, init=None: self.models.setdefault(i, i))
    monkeypatch.setattr(lp, "_accuracy", lambda clf, X, y: 0.5)
    x, y = blobs()
    assert lp.sweep_lambda(x, y, x, y)["index"] == 96


def test_fit_is_scikit_learn_with_c_equal_one_over_lambda():
    x, y = blobs(classes=4)
    i = 48  # lambda = 1
    ours = lp._Fitter(x, y).fit(i)
    ref = LogisticRegression(C=1.0 / lp.LAMBDAS[i], solver="lbfgs", max_iter=1000).fit(x.astype(np.float64), y)
    assert ours.C == pytest.approx(1.0) and ours.solver == "lbfgs" and ours.max_iter == 1000
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-6)


def test_warm_start_reaches_the_same_solution():
    x, y = blobs(classes=3)
    fitter = lp._Fitter(x, y, tol=1e-8)
    fitter.fit(64)                 # lambda = 100: strong
    warm = fitter.fit(56)          # lambda ~ 10, started from the lambda = 100 solution
    cold = LogisticRegression(C=1.0 / lp.LAMBDAS[56], max_iter=1000, tol=1e-8).fit(x, y)
    np.testing.assert_allclose(warm.coef_, cold.coef_, atol=1e-4)


def test_probe_separates_separable_classes_and_reports_clip_benchmark_keys():
    xtr, ytr = blobs(n_per_class=15, classes=3, seed=0)
    xte, yte = blobs(n_per_class=10, classes=3, seed=0)
    r = lp.linear_probe(xtr, ytr, xte, yte)
    assert r["lp_acc1"] == 1.0 and np.isnan(r["lp_acc5"]) and r["lp_mean_per_class_recall"] == 1.0
    assert r["C"] == pytest.approx(1 / r["lambda"]) and lp.LAMBDAS[0] <= r["lambda"] <= lp.LAMBDAS[-1]
    assert r["n_train"] == 45  # the final fit uses train + the held-out validation part


def test_probe_uses_a_given_validation_split():
    xtr, ytr = blobs(n_per_class=8, classes=5, seed=1)
    xva, yva = blobs(n_per_class=4, classes=5, seed=1)
    r = lp.linear_probe(xtr, ytr, xva, yva, val_X=xva, val_y=yva)
    assert r["n_train"] == 60 and 0 <= r["lp_acc5"] <= 1


def test_split_validation_is_stratified_and_disjoint():
    y = np.array([0] * 10 + [1] * 5 + [2])
    tr, va = lp.split_validation(y, 0.2, seed=0)
    assert set(tr) | set(va) == set(range(16)) and not set(tr) & set(va)
    assert sorted(np.bincount(y[va], minlength=3)) == [0, 1, 2]  # 2 of class 0, 1 of class 1, none of the singleton


def test_kshot_indices_pick_k_per_class():
    y = np.array([0] * 5 + [1] * 3 + [2] * 4)
    idx = lp.kshot_indices(y, 2, seed=0)
    assert np.bincount(y[idx]).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="fewer than k=4"):
        lp.kshot_indices(y, 4)


def test_kshot_probes_table():
    xtr, ytr = blobs(n_per_class=12, classes=3, seed=2)
    xte, yte = blobs(n_per_class=5, classes=3, seed=2)
    table = lp.kshot_probes(xtr, ytr, xte, yte, ks=(1, 4), seeds=(0, 1))
    assert list(table["k"]) == [1, 1, 4, 4] and table["lp_acc1"].between(0, 1).all()
    assert table.loc[table["k"] == 4, "lp_acc1"].mean() == 1.0


def test_evaluate_linear_probe_end_to_end(nano, tmp_path):
    from clipkit.data.classification import SyntheticClassification
    model, preprocess, _ = nano
    train = SyntheticClassification("colour", n=32, split="train", transform=preprocess)
    test = SyntheticClassification("colour", n=16, split="test", transform=preprocess)
    r = lp.evaluate_linear_probe(model, train, test, cache=tmp_path, progress=False)
    assert 0 <= r["lp_acc1"] <= 1 and r["n_train"] == 32


def test_sweep_counts_fits_that_did_not_converge():
    """Random labels in 64 dims: the weakly regularised fits cannot converge in 3 L-BFGS steps; well
    separated blobs with the paper's 1,000 converge at every lambda. No ConvergenceWarning escapes."""
    import warnings
    rng = np.random.default_rng(0)
    x_hard, y_hard = rng.normal(size=(120, 64)), rng.integers(0, 4, 120)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # a leaked ConvergenceWarning fails the test
        hard = lp.linear_probe(x_hard, y_hard, x_hard, y_hard, max_iter=3)
        clf, _ = lp.fit_linear_probe(x_hard, y_hard, max_iter=3)
    assert 0 < hard["not_converged"] <= hard["n_fits"]
    assert 0 < clf.not_converged_ <= clf.n_fits_
    x, y = blobs(n_per_class=15, classes=3, seed=0)
    easy = lp.linear_probe(x, y, x, y)
    clf, _ = lp.fit_linear_probe(x, y)
    assert easy["not_converged"] == 0 and easy["n_fits"] > 1
    assert clf.not_converged_ == 0 and clf.n_fits_ > 1
    table = lp.kshot_probes(x, y, x, y, ks=(2,), seeds=(0,))
    assert table["not_converged"].tolist() == [0]

"""ember.sklearn: scikit-learn's conformance checks, the meta-estimators, and parity with
MLPClassifier on digits (accuracy only: timing lives in bench/bench_sklearn.py)."""
from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from conftest import subprocess_env  # noqa: E402
from ember.datasets import load_digits  # noqa: E402
from ember.sklearn import EmberClassifier, EmberRegressor  # noqa: E402

# Most fits here stop at max_iter on purpose (small budgets); MLPClassifier warns then, and so do
# ember's estimators (test_convergence_warning_when_max_iter_ends_the_run).
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# Small networks, a higher learning rate and small batches: the checks fit many tiny data sets
# (20-300 samples) and require e.g. accuracy > 0.83 or R² > 0.5 after one fit.
FAST = dict(hidden_layer_sizes=(16,), learning_rate_init=1e-2, batch_size=32, max_iter=100)

# scikit-learn's checks that ember's estimators are known to fail, with the reason.
# At most 3 per estimator (the acceptance rule).
EXPECTED_FAILED_CHECKS: dict[str, dict[str, str]] = {
    "EmberClassifier": {},
    "EmberRegressor": {},
}


def _expected_failed_checks(estimator):
    return EXPECTED_FAILED_CHECKS[type(estimator).__name__]


@parametrize_with_checks([EmberClassifier(**FAST), EmberRegressor(**FAST)],
                         expected_failed_checks=_expected_failed_checks)
def test_sklearn_conformance(estimator, check):
    check(estimator)


def test_import_ember_does_not_need_sklearn():
    code = textwrap.dedent("""
        import sys
        sys.modules["sklearn"] = None      # any `import sklearn...` now raises ImportError
        import ember
        assert "sklearn" not in [m.split(".")[0] for m in sys.modules if sys.modules[m]]
        try:
            import ember.sklearn
        except ImportError as exc:
            print("ok:", exc)
        else:
            raise SystemExit("ember.sklearn imported without scikit-learn")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=subprocess_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok:")


# -- data ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_split():
    x, y = load_digits()
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def _blobs(n=240, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(classes, 5))
    y = rng.integers(0, classes, n)
    x = centers[y] + rng.normal(size=(n, 5))
    return x, y


# -- accuracy parity with MLPClassifier (no timing: see bench/bench_sklearn.py) -----------------
def test_digits_accuracy_matches_mlpclassifier(digits_split):
    xtr, xte, ytr, yte = digits_split
    common = dict(hidden_layer_sizes=(128,), batch_size=64, learning_rate_init=1e-3,
                  alpha=1e-4, max_iter=30, tol=0.0, n_iter_no_change=1000, random_state=0)
    ember_acc = EmberClassifier(**common).fit(xtr, ytr).score(xte, yte)
    sk_acc = MLPClassifier(solver="adam", **common).fit(xtr, ytr).score(xte, yte)
    assert ember_acc >= 0.95 and sk_acc >= 0.95, (ember_acc, sk_acc)
    assert abs(ember_acc - sk_acc) <= 0.02, (ember_acc, sk_acc)


# -- meta-estimators -------------------------------------------------------------------------
def test_initialisation_and_regression_convergence_match_mlpregressor():
    # scikit-learn's Glorot-uniform initialisation (biases too), and so its convergence: after 60
    # epochs on a smooth 20-feature regression the training MSE is within 1.5x of MLPRegressor's
    # (He initialisation, ember's MLP default, ended 5x higher).
    from sklearn.datasets import make_regression
    from sklearn.neural_network import MLPRegressor
    x, y = make_regression(n_samples=1000, n_features=20, noise=0.1, random_state=0)
    y = (y - y.mean()) / y.std()
    common = dict(hidden_layer_sizes=(100,), batch_size=200, max_iter=60, tol=0.0,
                  n_iter_no_change=61, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        w0 = EmberRegressor(**dict(common, max_iter=1, learning_rate_init=1e-12)).fit(x, y)
        first = w0.model_.layers[0]
        bound = np.sqrt(6.0 / (20 + 100))
        for p in (first.weight.data, first.bias.data):
            assert np.abs(p).max() <= bound and np.abs(p).max() > 0.9 * bound
        ours = EmberRegressor(**common).fit(x, y)
        theirs = MLPRegressor(**common).fit(x, y)
    mse_ours, mse_theirs = ours.loss_curve_[-1], 2 * theirs.loss_curve_[-1]  # theirs: half MSE
    assert mse_ours < 1.5 * mse_theirs, (mse_ours, mse_theirs)


def test_pipeline_with_standard_scaler(digits_split):
    xtr, xte, ytr, yte = digits_split
    pipe = make_pipeline(StandardScaler(),
                         EmberClassifier((64,), max_iter=20, batch_size=64, random_state=0))
    pipe.fit(xtr * 16.0, ytr)  # unscaled pixels: the scaler's job
    assert pipe.score(xte * 16.0, yte) > 0.93
    assert pipe.predict_proba(xte[:5] * 16.0).shape == (5, 10)


def test_grid_search_over_hidden_layer_sizes():
    x, y = _blobs()
    grid = GridSearchCV(EmberClassifier(max_iter=30, learning_rate_init=1e-2, random_state=0),
                        {"hidden_layer_sizes": [(4,), (32,), (16, 16)]}, cv=3)
    grid.fit(x, y)
    assert grid.best_params_["hidden_layer_sizes"] in [(4,), (32,), (16, 16)]
    assert len(grid.cv_results_["mean_test_score"]) == 3
    assert grid.best_score_ > 0.9
    assert grid.best_estimator_.model_.sizes == [5, *grid.best_params_["hidden_layer_sizes"], 3]


def test_cross_val_score_classifier_and_regressor():
    x, y = _blobs()
    scores = cross_val_score(EmberClassifier((16,), max_iter=30, learning_rate_init=1e-2,
                                             random_state=0), x, y, cv=4)
    assert scores.shape == (4,) and scores.min() > 0.9
    target = x @ np.array([1.0, -2.0, 0.5, 0.0, 1.5])
    r2 = cross_val_score(EmberRegressor((32,), max_iter=100, learning_rate_init=1e-2,
                                        batch_size=32, random_state=0), x, target, cv=3)
    assert r2.min() > 0.9


# -- labels, targets, partial_fit --------------------------------------------------------------
def test_string_labels():
    x, y = _blobs(classes=3)
    names = np.array(["cat", "dog", "emu"])[y]
    clf = EmberClassifier((16,), max_iter=50, learning_rate_init=1e-2, random_state=0)
    clf.fit(x, names)
    assert list(clf.classes_) == ["cat", "dog", "emu"]
    pred = clf.predict(x)
    assert pred.dtype == names.dtype and set(pred) <= {"cat", "dog", "emu"}
    assert clf.score(x, names) > 0.9
    proba = clf.predict_proba(x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], pred)


def test_multilabel_target_is_a_clear_error():
    x, y = _blobs()
    with pytest.raises(ValueError, match="multilabel"):
        EmberClassifier().fit(x, np.stack([y == 0, y == 1], axis=1).astype(int))


def test_single_class_is_a_clear_error():
    x, _ = _blobs()
    with pytest.raises(ValueError, match="at least 2 classes"):
        EmberClassifier().fit(x, np.zeros(len(x), dtype=int))


def test_partial_fit_classifier():
    x, y = _blobs()
    clf = EmberClassifier((16,), learning_rate_init=1e-2, random_state=0)
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(x, y)
    clf.partial_fit(x[:50], y[:50], classes=[0, 1, 2])
    first = clf.score(x, y)
    for _ in range(30):
        clf.partial_fit(x, y)
    assert clf.n_iter_ == 31 and len(clf.loss_curve_) == 31
    assert clf.score(x, y) > max(first, 0.9)
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    with pytest.raises(ValueError, match="labels not in classes_"):
        clf.partial_fit(x[:3], np.array([0, 1, 7]))
    with pytest.raises(ValueError, match="differs"):
        clf.partial_fit(x, y, classes=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="features"):
        clf.partial_fit(x[:, :4], y)


def test_partial_fit_regressor_and_output_shapes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    y2 = x @ rng.normal(size=(4, 3))
    reg = EmberRegressor((32,), learning_rate_init=1e-2, random_state=0)
    for _ in range(40):
        reg.partial_fit(x, y2)
    assert reg.n_outputs_ == 3 and reg.predict(x).shape == (300, 3)
    assert reg.score(x, y2) > 0.9
    one_d = EmberRegressor((8,), max_iter=5, random_state=0).fit(x, y2[:, 0])
    column = EmberRegressor((8,), max_iter=5, random_state=0).fit(x, y2[:, :1])
    assert one_d.predict(x).shape == (300,)
    assert column.predict(x).shape == (300, 1)
    np.testing.assert_array_equal(one_d.predict(x), column.predict(x)[:, 0])


def test_early_stopping_keeps_validation_scores():
    x, y = _blobs(n=400)
    clf = EmberClassifier((16,), learning_rate_init=1e-2, early_stopping=True,
                          n_iter_no_change=3, max_iter=500, random_state=0).fit(x, y)
    assert clf.n_iter_ < 500
    assert len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert clf.best_loss_ is None


def test_convergence_warning_when_max_iter_ends_the_run():
    x, y = _blobs()
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        EmberClassifier((8,), max_iter=2, random_state=0).fit(x, y)


# -- determinism, pickling -------------------------------------------------------------------
def test_gradient_diagnosis_only_when_verbose(capsys):
    # Ten sigmoid layers: the first layers' gradients vanish (the Trainer would warn). Like
    # MLPClassifier, the estimator stays quiet (and skips the norms) unless verbose.
    from ember.callbacks import GradientWarning
    x, y = load_digits()
    x, y = x[:300], y[:300]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        EmberClassifier((64,) * 10, activation="logistic", max_iter=2, random_state=0).fit(x, y)
        quiet = [w for w in caught if issubclass(w.category, GradientWarning)]
        caught.clear()
        EmberClassifier((64,) * 10, activation="logistic", max_iter=2, random_state=0,
                        verbose=True).fit(x, y)
        loud = [w for w in caught if issubclass(w.category, GradientWarning)]
    capsys.readouterr()
    assert quiet == []
    assert loud and "vanishing gradients in layer 0" in str(loud[0].message)


def test_random_state_int_is_reproducible_none_is_not():
    x, y = _blobs()
    kw = dict(hidden_layer_sizes=(16,), max_iter=3)
    a = EmberClassifier(random_state=7, **kw).fit(x, y).predict_proba(x)
    b = EmberClassifier(random_state=7, **kw).fit(x, y).predict_proba(x)
    c = EmberClassifier(random_state=None, **kw).fit(x, y).predict_proba(x)
    d = EmberClassifier(random_state=None, **kw).fit(x, y).predict_proba(x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(c, d)


@pytest.mark.parametrize("cls", [EmberClassifier, EmberRegressor])
def test_pickle_round_trip_gives_identical_predictions(cls):
    x, y = _blobs()
    est = cls((16,), max_iter=5, random_state=0)
    est.fit(x, y)
    clone_ = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(est.predict(x), clone_.predict(x))
    if cls is EmberClassifier:
        np.testing.assert_array_equal(est.predict_proba(x), clone_.predict_proba(x))
    # training goes on from the same weights and optimizer moments
    est.partial_fit(x, y)
    clone_.partial_fit(x, y)
    np.testing.assert_array_equal(est.predict(x), clone_.predict(x))


def test_unfitted_predict_raises_not_fitted():
    with pytest.raises(NotFittedError):
        EmberClassifier().predict(np.zeros((2, 3)))


# -- parameter validation happens in fit and names the parameter ------------------------------
@pytest.mark.parametrize("param, value", [
    ("hidden_layer_sizes", (16, 0)), ("hidden_layer_sizes", "big"), ("activation", "swish"),
    ("optimizer", "lbfgs"), ("alpha", -1.0), ("batch_size", 0), ("batch_size", "all"),
    ("learning_rate_init", 0.0), ("max_iter", 0), ("max_iter", 2.5), ("tol", -1e-3),
    ("momentum", 1.5), ("validation_fraction", 1.0), ("n_iter_no_change", 0),
    ("dropout", 1.0), ("device", "tpu"), ("shuffle", "yes"), ("early_stopping", None),
])
@pytest.mark.parametrize("cls", [EmberClassifier, EmberRegressor])
def test_bad_parameter_raises_value_error_at_fit(cls, param, value):
    est = cls(**{param: value})  # __init__ stores it untouched
    assert est.get_params()[param] is value
    x, y = _blobs(n=30)
    with pytest.raises(ValueError, match=param):
        est.fit(x, y)


def test_clone_keeps_parameters():
    est = EmberClassifier((8, 4), activation="tanh", dropout=0.1, random_state=3)
    assert clone(est).get_params() == est.get_params()


def test_a_failed_refit_leaves_the_previous_fit_in_place():
    """fit on new data that turns out bad after n_features_in_ was reset (one class) raises and
    leaves the estimator fitted to its previous data, predicting exactly as before."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 4)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    clf = EmberClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit(X, y)
    before = clf.predict_proba(X)
    with pytest.raises(ValueError, match="class"):
        clf.fit(X[:, :3], np.zeros(60, int))
    assert clf.n_features_in_ == 4
    np.testing.assert_array_equal(clf.predict_proba(X), before)
    with pytest.raises(ValueError, match="features"):
        clf.predict(X[:, :3])


def test_too_small_validation_fraction_is_named():
    x, y = _blobs()
    with pytest.raises(ValueError, match=r"EmberClassifier: early_stopping with "
                                         r"validation_fraction=0.001: .*empty split"):
        EmberClassifier(early_stopping=True, validation_fraction=0.001, max_iter=2).fit(x, y)

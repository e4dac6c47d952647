"""scikit-learn estimators: :class:`EmberClassifier` and :class:`EmberRegressor`.

MLPs trained by ember's fused kernels behind scikit-learn's estimator API, so they drop into
``Pipeline``, ``GridSearchCV`` and ``cross_val_score`` where ``MLPClassifier`` / ``MLPRegressor``
go. They pass scikit-learn's own conformance checks (``parametrize_with_checks``; see
``tests/test_sklearn.py`` for the few expected failures and why).

Importing this module imports scikit-learn (``pip install ember[sklearn]``); ``import ember``
alone does not.

Differences from ``MLPClassifier`` / ``MLPRegressor`` worth knowing:

- Computation is float32 (ember's kernels), whatever the input dtype.
- ``optimizer`` is ``"adam"`` or ``"sgd"`` (with ``momentum``); there is no L-BFGS and no
  learning-rate schedule. ``max_iter`` counts epochs, as for MLPClassifier's stochastic solvers.
- ``alpha`` is the same L2 penalty as scikit-learn's: each step adds ``alpha / batch_size * w``
  to the gradient of every parameter (scikit-learn leaves the biases out; with ``alpha`` small
  the difference is negligible). ``loss_curve_`` holds the data loss only (scikit-learn adds the
  penalty term).
- The regressor minimises the mean squared error (scikit-learn: half of it); with Adam the
  factor of 2 does not change the trajectory. A target of shape (n, 1) gives predictions of
  shape (n, 1), a 1-D target 1-D predictions.
- Weights and biases are initialised as scikit-learn initialises them (Glorot uniform, from
  ``random_state``), not with ember's MLP default (He for ReLU).
- Binary classification uses a two-way softmax (``out_activation_ == "softmax"``) rather than a
  logistic unit; multilabel targets are not supported (``ValueError``).
- Sparse input is not supported (``TypeError``); scale inputs yourself (``StandardScaler``).

Example:
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from ember.sklearn import EmberClassifier
    >>> from ember.datasets import load_digits
    >>> x, y = load_digits()
    >>> clf = make_pipeline(StandardScaler(), EmberClassifier((256, 256), random_state=0))
    >>> clf.fit(x, y).score(x, y) > 0.95    # 200 epochs at most (max_iter)
    True
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d

from ember import _validate, ops
from ember.backend import is_cuda_array, to_host
from ember.callbacks import Callback, EarlyStopping
from ember.data import train_val_split
from ember.nn import MLP, Linear
from ember.train import Trainer

try:
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # scikit-learn < 1.6 has the method instead of the function
    def _validate_data(estimator, X="no_validation", y="no_validation", **kwargs):
        return estimator._validate_data(X, y, **kwargs)

__all__ = ["EmberClassifier", "EmberRegressor"]

#: Hidden activations: ember's names (:data:`ember.ops.ACTIVATIONS`), plus scikit-learn's
#: "logistic" for "sigmoid".
_ACTIVATIONS = {**{name: name for name in ops.ACTIVATIONS}, "logistic": "sigmoid"}
_OPTIMIZERS = ("adam", "sgd")
_PREDICT_BATCH = 4096


class _ValidationScore(Callback):
    """Scores the held-out split after each epoch (accuracy or R², like ``score``) into
    ``logs["val_score"]`` and the estimator's ``validation_scores_``; runs before EarlyStopping."""

    def __init__(self, estimator, x_val, y_val):
        self.estimator, self.x_val, self.y_val = estimator, x_val, y_val

    def on_epoch_end(self, epoch, logs):
        score = self.estimator._score_encoded(self.x_val, self.y_val)
        self.estimator.validation_scores_.append(score)
        logs["val_score"] = score


def _on_gpu(model) -> bool:
    # Not ``model.device``: that reads a NumPy subclass (a memmap, as joblib unpickles into)
    # as a GPU array.
    return any(is_cuda_array(p.data) for p in model.parameters())


def _init_like_sklearn(model, activation: str, seed: int) -> None:
    """Weights and biases drawn as MLPClassifier / MLPRegressor draw theirs (Glorot uniform:
    U(-b, b), b = sqrt(f / (fan_in + fan_out)), f = 2 for the logistic activation and 6
    otherwise, biases included), from ``seed``. ember's MLP default (He for ReLU) trains the
    same networks more slowly here: a 20-100-1 regression reached 5x the MSE after 100 epochs."""
    rng = np.random.default_rng([seed, 1])
    factor = 2.0 if activation in ("logistic", "sigmoid") else 6.0
    for layer in model.layers:
        if isinstance(layer, Linear):
            bound = np.sqrt(factor / (layer.in_features + layer.out_features))
            layer.weight.data[...] = rng.uniform(-bound, bound, layer.weight.shape)
            if layer.bias is not None:
                layer.bias.data[...] = rng.uniform(-bound, bound, layer.bias.shape)


class _BaseEmberMLP(BaseEstimator):
    """Shared parameters, validation, training and pickling of the two estimators."""

    _task = ""  # "classification" or "regression"

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, optimizer="adam",
                 alpha=1e-4, batch_size="auto", learning_rate_init=1e-3, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, momentum=0.9,
                 early_stopping=False, validation_fraction=0.1, n_iter_no_change=10,
                 dropout=0.0, device="cpu"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.optimizer = optimizer
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.momentum = momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.dropout = dropout
        self.device = device

    # -- parameters ----------------------------------------------------------------------
    def _check_params(self) -> None:
        """Raise ValueError naming the first invalid parameter (scikit-learn validates in fit)."""
        name = type(self).__name__

        def bad(param, want):
            raise ValueError(f"{name}: {param} must be {want}, got {getattr(self, param)!r}")

        sizes = self.hidden_layer_sizes
        if _validate.is_int(sizes):
            sizes = (sizes,)
        try:
            sizes = tuple(sizes)
        except TypeError:
            bad("hidden_layer_sizes", "a positive integer or a sequence of them")
        if not all(_validate.is_int(s) and s >= 1 for s in sizes):
            bad("hidden_layer_sizes", "a positive integer or a sequence of them")
        _validate.one_of(name, "activation", self.activation, sorted(_ACTIVATIONS))
        _validate.one_of(name, "optimizer", self.optimizer, _OPTIMIZERS)
        _validate.nonnegative_real(name, "alpha", self.alpha)
        if not (self.batch_size == "auto" or (_validate.is_int(self.batch_size) and self.batch_size >= 1)):
            bad("batch_size", "'auto' or a positive integer")
        _validate.positive_real(name, "learning_rate_init", self.learning_rate_init)
        _validate.int_at_least(name, "max_iter", self.max_iter, 1, what=" (epochs)")
        _validate.flag(name, "shuffle", self.shuffle)
        _validate.nonnegative_real(name, "tol", self.tol)
        _validate.real_in(name, "momentum", self.momentum, 0.0, 1.0, closed_high=True)
        _validate.flag(name, "early_stopping", self.early_stopping)
        _validate.real_in(name, "validation_fraction", self.validation_fraction, 0.0, 1.0,
                          open_low=True)
        _validate.positive_int(name, "n_iter_no_change", self.n_iter_no_change)
        _validate.real_in(name, "dropout", self.dropout, 0.0, 1.0)
        _validate.one_of(name, "device", self.device, ("auto", "cpu", "cuda"))
        self._hidden = sizes

    def _fit_class_weight(self, incremental: bool):
        """The ``class_weight`` of :meth:`ember.Trainer.fit` (the classifier's; None here)."""
        return None

    def _batch_size_for(self, n: int) -> int:
        return min(200 if self.batch_size == "auto" else int(self.batch_size), n)

    # -- training ------------------------------------------------------------------------
    def _new_trainer(self, n_features: int, n_outputs: int) -> Trainer:
        model = MLP([n_features, *self._hidden, n_outputs],
                    activation=_ACTIVATIONS[self.activation], dropout=float(self.dropout),
                    seed=self._seed)
        _init_like_sklearn(model, self.activation, self._seed)
        extra = {"momentum": float(self.momentum)} if self.optimizer == "sgd" else {}
        trainer = Trainer(model, loss="cross_entropy" if self._task == "classification" else "mse",
                          optimizer=self.optimizer, lr=float(self.learning_rate_init),
                          metrics=(), device=self.device, **extra)
        # MLPClassifier does not diagnose gradients; unless verbose, neither do these (quiet grid
        # searches, and no per-epoch norm computations).
        trainer.gradient_monitor.active = bool(self.verbose)
        return trainer

    def _get_trainer(self) -> Trainer:
        """The trainer (rebuilt after unpickling, with the optimizer's saved moments)."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            trainer = self._new_trainer(self.n_features_in_, self.n_outputs_)
            trainer.model.load_state_dict(self.model_.state_dict())
            self.model_ = trainer.model
            state = self.__dict__.pop("_optimizer_state", None)
            if state is not None:
                trainer.optimizer.load_state_dict(state)
            self._trainer = trainer
        return trainer

    def _fit(self, X, y, incremental: bool, classes=None):
        self._check_params()
        first = not incremental or not hasattr(self, "model_")
        X, y = self._validate_xy(X, y, reset=first, classes=classes)
        if first:
            self._seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
            self._trainer = self._new_trainer(X.shape[1], self.n_outputs_)
            self.model_ = self._trainer.model
            self.loss_curve_ = []
            self.n_iter_ = 0
            self.best_loss_ = np.inf
        trainer = self._get_trainer()
        batch_size = self._batch_size_for(X.shape[0])
        # scikit-learn's L2 term: (alpha / 2 batch) ||w||^2 per batch, i.e. + alpha/batch * w.
        trainer.optimizer.weight_decay = float(self.alpha) / batch_size
        trainer.optimizer.lr = float(self.learning_rate_init)

        early_stopping = bool(self.early_stopping) and not incremental
        callbacks = []
        self.validation_scores_ = [] if early_stopping else None
        self.best_validation_score_ = None
        if early_stopping:
            try:
                X, y, x_val, y_val = train_val_split(
                    X, y, float(self.validation_fraction), seed=self._seed,
                    stratify=self._task == "classification")
            except ValueError as exc:  # too small a fraction (or too few samples) to hold out
                raise ValueError(f"{type(self).__name__}: early_stopping with "
                                 f"validation_fraction={self.validation_fraction!r}: "
                                 f"{exc}") from None
            callbacks.append(_ValidationScore(self, x_val, y_val))
        stopper = None
        if not incremental:
            stopper = EarlyStopping(monitor="val_score" if early_stopping else "loss",
                                    mode="max" if early_stopping else "min",
                                    patience=int(self.n_iter_no_change), min_delta=float(self.tol),
                                    restore_best_weights=early_stopping)
            callbacks.append(stopper)
        trainer.user_callbacks = callbacks
        try:
            # A new seed per call, so that successive partial_fit epochs see new orders.
            history = trainer.fit(X, y, epochs=1 if incremental else int(self.max_iter),
                                  batch_size=batch_size, seed=self._seed + self.n_iter_,
                                  shuffle=bool(self.shuffle), verbose=int(bool(self.verbose)),
                                  class_weight=self._fit_class_weight(incremental))
        finally:
            trainer.user_callbacks = []
        losses = [float(v) for v in history["loss"]]
        self.loss_curve_.extend(losses)
        self.n_iter_ += len(losses)
        if early_stopping:
            self.best_validation_score_ = float(max(self.validation_scores_))
            self.best_loss_ = None
        else:
            best = np.inf if self.best_loss_ is None else self.best_loss_
            self.best_loss_ = float(min([best, *losses]))
        if stopper is not None and stopper.stopped_epoch is None and \
                len(losses) == self.max_iter and trainer.stop_reason is None:
            warnings.warn(f"{type(self).__name__}: max_iter={self.max_iter} epochs reached and "
                          f"the optimization hasn't converged yet.", ConvergenceWarning)
        return self

    def fit(self, X, y):
        """Train a new network on ``(X, y)`` for up to ``max_iter`` epochs.

        Stops early when the training loss (or, with ``early_stopping``, the validation score)
        has not improved by ``tol`` for ``n_iter_no_change`` epochs; warns
        (``ConvergenceWarning``) when ``max_iter`` ends the run instead.

        Returns:
            self.

        Raises:
            ValueError: an invalid parameter (named) or invalid data. A fit that raises
            (bad data found after ``n_features_in_`` was reset, an interrupted run) leaves
            the estimator as it was: still fitted to its previous data, if any.
        """
        before = dict(self.__dict__)  # a new fit builds a new model: the old one is untouched
        try:
            return self._fit(X, y, incremental=False)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    # -- inference -----------------------------------------------------------------------
    def _forward(self, X):
        """The network's outputs on validated float32 ``X`` as a float32 NumPy array (eval
        mode; the model's mode is restored, so this also serves between training epochs)."""
        model = self.model_
        was_training = model.training
        model.eval()
        try:
            if _on_gpu(model):
                import cupy
                outs = [model.forward(cupy.asarray(X[i:i + _PREDICT_BATCH])).get()
                        for i in range(0, len(X), _PREDICT_BATCH)]
            else:
                outs = [model.forward(X[i:i + _PREDICT_BATCH])
                        for i in range(0, len(X), _PREDICT_BATCH)]
        finally:
            model.train(was_training)
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def _validate_x(self, X):
        check_is_fitted(self)
        X = _validate_data(self, X, reset=False, dtype=np.float32, order="C")
        return X

    # -- pickling ------------------------------------------------------------------------
    def __getstate__(self):
        state = super().__getstate__()
        state = dict(state)
        trainer = state.pop("_trainer", None)
        if trainer is not None:
            opt = trainer.optimizer.state_dict()
            opt["state"] = {n: {k: to_host(a) for k, a in st.items()}
                            for n, st in opt["state"].items()}
            state["_optimizer_state"] = opt
        model = state.get("model_")
        if model is not None:
            if _on_gpu(model):
                model = state["model_"] = copy.deepcopy(model).to("cpu")
            model.clear_buffers()  # training scratch (last batch, activations): not state
        return state


class EmberClassifier(ClassifierMixin, _BaseEmberMLP):
    """A multilayer perceptron classifier trained by ember (drop-in for ``MLPClassifier``).

    Minimises softmax cross-entropy with Adam (or SGD with momentum) on mini-batches.

    Args:
        hidden_layer_sizes: width of each hidden layer, e.g. ``(256, 256)``.
        activation: hidden activation: ``"relu"``, ``"tanh"``, ``"logistic"`` (= ``"sigmoid"``),
            ``"identity"``, or ember's ``"leaky_relu"``, ``"gelu"``, ``"gelu_tanh"``, ``"silu"``.
        optimizer: ``"adam"`` or ``"sgd"``.
        alpha: L2 penalty, scaled as in scikit-learn (``alpha / batch_size * w`` per step).
        batch_size: samples per step; ``"auto"`` = ``min(200, n_samples)``; larger values are
            clipped to ``n_samples``.
        learning_rate_init: the (constant) learning rate.
        max_iter: maximum number of epochs.
        shuffle: reshuffle the samples every epoch.
        random_state: ``None`` (a fresh seed each fit), an int (reproducible, bit for bit), or a
            ``numpy.random.RandomState``; seeds the weights, data order, dropout and the split.
        tol, n_iter_no_change: stop when the loss (or validation score) has not improved by
            ``tol`` for ``n_iter_no_change`` epochs in a row.
        verbose: print per-epoch progress and ember's training report.
        momentum: SGD momentum.
        early_stopping: hold out ``validation_fraction`` (stratified) and stop on its accuracy,
            keeping the best epoch's weights.
        validation_fraction: fraction held out when ``early_stopping``.
        dropout: dropout probability after each hidden activation.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        class_weight: None (every sample counts the same), ``"balanced"`` (weights
            ``n_samples / (n_classes * np.bincount(y))`` of the training data, after the
            ``early_stopping`` split; not for ``partial_fit``) or a dict ``{label: weight}``
            (labels not named weigh 1), as in scikit-learn's classifiers: each sample's loss is
            weighted by its class (see :meth:`ember.Trainer.fit`).

    Attributes:
        classes_: the class labels (any sortable labels: ints, strings...).
        n_features_in_, feature_names_in_ (DataFrame input only): the input's description.
        model_: the trained :class:`ember.nn.MLP` (``model_.state_dict()`` for the weights).
        loss_curve_: training loss per epoch. n_iter_: epochs run.
        best_loss_: lowest training loss (None with ``early_stopping``).
        validation_scores_, best_validation_score_: held-out accuracy per epoch and its best
            (None without ``early_stopping``).
        n_outputs_, n_layers_, out_activation_: as in ``MLPClassifier`` (``"softmax"``).

    Example:
        >>> from ember.sklearn import EmberClassifier
        >>> from ember.datasets import load_digits
        >>> x, y = load_digits()
        >>> clf = EmberClassifier((64,), early_stopping=True, random_state=0).fit(x, y)
        >>> clf.score(x, y) > 0.9, clf.n_iter_ < clf.max_iter  # stopped on validation accuracy
        (True, True)
    """

    _task = "classification"

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, optimizer="adam",
                 alpha=1e-4, batch_size="auto", learning_rate_init=1e-3, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, momentum=0.9,
                 early_stopping=False, validation_fraction=0.1, n_iter_no_change=10,
                 dropout=0.0, device="cpu", class_weight=None):
        super().__init__(hidden_layer_sizes, activation, optimizer=optimizer, alpha=alpha,
                         batch_size=batch_size, learning_rate_init=learning_rate_init,
                         max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
                         verbose=verbose, momentum=momentum, early_stopping=early_stopping,
                         validation_fraction=validation_fraction,
                         n_iter_no_change=n_iter_no_change, dropout=dropout, device=device)
        self.class_weight = class_weight

    def _fit_class_weight(self, incremental: bool):
        """``class_weight`` as :meth:`ember.Trainer.fit` takes it: labels -> class indices
        (ValueError naming it for a bad value or a label not in ``classes_``)."""
        cw, name = self.class_weight, type(self).__name__
        if cw is None:
            return None
        if isinstance(cw, str) and cw == "balanced":
            if incremental:
                raise ValueError(f"{name}: class_weight='balanced' is not supported by "
                                 "partial_fit (it needs the frequencies of all the data); pass "
                                 "a dict, e.g. from sklearn.utils.class_weight."
                                 "compute_class_weight('balanced', classes=classes, y=y)")
            return cw
        if not isinstance(cw, dict):
            raise ValueError(f"{name}: class_weight must be None, 'balanced' or a dict "
                             f"{{label: weight}}, got {cw!r}")
        out = {}
        for label, w in cw.items():
            where = [i for i, c in enumerate(self.classes_) if c == label]
            if not where:
                raise ValueError(f"{name}: class_weight names the label {label!r}, which is "
                                 f"not in classes_ {self.classes_!r}")
            out[where[0]] = w  # (the weights are checked by Trainer.fit)
        return out

    def _validate_xy(self, X, y, reset, classes=None):
        X, y = _validate_data(self, X, y, reset=reset, dtype=np.float32, order="C",
                              multi_output=True)
        if y.ndim == 2 and y.shape[1] > 1:
            raise ValueError(f"{type(self).__name__} supports binary and multiclass targets, "
                             f"not multilabel or multi-output ones (y has shape {y.shape})")
        y = column_or_1d(y, warn=True)  # (n, 1): DataConversionWarning, as scikit-learn's own
        check_classification_targets(y)
        if reset:
            labels = unique_labels(y) if classes is None else unique_labels(classes)
            if len(labels) < 2:
                raise ValueError(f"{type(self).__name__} needs at least 2 classes to train, "
                                 f"got 1 class ({labels[0]!r})")
            self.classes_ = labels
            self.n_outputs_ = len(labels)
            self.n_layers_ = len(self._hidden) + 2
            self.out_activation_ = "softmax"
        elif classes is not None and not np.array_equal(unique_labels(classes), self.classes_):
            raise ValueError(f"partial_fit: classes={classes!r} differs from the classes of "
                             f"the first call, {self.classes_!r}")
        idx = np.searchsorted(self.classes_, y)
        idx = np.clip(idx, 0, len(self.classes_) - 1)
        unknown = self.classes_[idx] != y
        if np.any(unknown):
            raise ValueError(f"y holds labels not in classes_ {self.classes_!r}: "
                             f"{np.unique(y[unknown])!r}")
        return X, idx.astype(np.int64)

    def partial_fit(self, X, y, classes=None):
        """One epoch over ``(X, y)``, continuing from the current weights and optimizer state.

        Args:
            classes: every class label; required on the first call (which starts a network),
                optional afterwards.

        Returns:
            self.
        """
        if not hasattr(self, "model_"):
            if classes is None:
                raise ValueError("partial_fit: pass classes= (all the labels) on the first call")
        return self._fit(X, y, incremental=True, classes=classes)

    def _score_encoded(self, X, y_idx) -> float:
        return float(accuracy_score(y_idx, np.argmax(self._forward(X), axis=1)))

    def predict(self, X):
        """Class labels (from ``classes_``) of the samples in ``X``."""
        z = self._forward(self._validate_x(X))
        return self.classes_[np.argmax(z, axis=1)]

    def predict_proba(self, X):
        """Class probabilities (softmax of the network's outputs), columns ordered as
        ``classes_``; float64, rows sum to 1."""
        z = self._forward(self._validate_x(X)).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        return z

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba` (computed stably from the outputs)."""
        z = self._forward(self._validate_x(X)).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
        return z


class EmberRegressor(RegressorMixin, _BaseEmberMLP):
    """A multilayer perceptron regressor trained by ember (drop-in for ``MLPRegressor``).

    Minimises the mean squared error; ``y`` may be 1-D or 2-D (several outputs). The parameters
    are those of :class:`EmberClassifier`; with ``early_stopping`` the validation score is R².

    Attributes:
        n_features_in_, feature_names_in_, model_, loss_curve_, n_iter_, best_loss_,
        validation_scores_, best_validation_score_, n_layers_: as for the classifier.
        n_outputs_: number of targets. out_activation_: ``"identity"``.

    Example:
        >>> import numpy as np
        >>> from ember.sklearn import EmberRegressor
        >>> x = np.random.default_rng(0).normal(size=(500, 3)); y = x @ [1.0, -2.0, 0.5]
        >>> EmberRegressor((32,), max_iter=1000, random_state=0).fit(x, y).score(x, y) > 0.99
        True
    """

    _task = "regression"

    def _validate_xy(self, X, y, reset, classes=None):
        X, y = _validate_data(self, X, y, reset=reset, dtype=np.float32, order="C",
                              multi_output=True, y_numeric=True)
        n_outputs = 1 if y.ndim == 1 else y.shape[1]
        if reset:
            self.n_outputs_ = n_outputs
            self._y_ndim = y.ndim
            self.n_layers_ = len(self._hidden) + 2
            self.out_activation_ = "identity"
        elif n_outputs != self.n_outputs_:
            raise ValueError(f"y has {n_outputs} outputs, the model was fitted with "
                             f"{self.n_outputs_}")
        return X, np.asarray(y, dtype=np.float32)

    def partial_fit(self, X, y):
        """One epoch over ``(X, y)``, continuing from the current weights and optimizer state
        (the first call starts a network). Returns self."""
        return self._fit(X, y, incremental=True)

    def _score_encoded(self, X, y) -> float:
        return float(r2_score(y.reshape(len(y), -1), self._forward(X)))

    def predict(self, X):
        """Predicted targets: shape (n,) when fitted on a 1-D ``y``, else (n, n_outputs)."""
        out = self._forward(self._validate_x(X)).astype(np.float64)  # scikit-learn's dtype
        return out[:, 0] if self._y_ndim == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.regressor_tags.poor_score = False
        return tags

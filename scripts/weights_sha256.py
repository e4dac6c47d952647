"""SHA-256 of the weights (and optimizer state) after fixed, seeded fits on the digits data.

A refactor that must not change what users get runs this before and after and compares the
lines: each covers one way a fit can go (the fused CPU step, layer by layer, a custom Module,
dropout, gradient accumulation, a schedule, early stopping with restored weights, a resumed run,
a scikit-learn estimator, the CLI's run).

    python scripts/weights_sha256.py            # prints "<case> <sha256>" lines
    EMBER_NUM_THREADS is pinned to 1 here so the bits do not depend on the machine's cores.
"""
import hashlib
import os
import sys
import tempfile

os.environ.setdefault("EMBER_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import ember  # noqa: E402
from ember import nn  # noqa: E402
from ember.nn import MLP  # noqa: E402


def digest(*state_dicts) -> str:
    h = hashlib.sha256()
    for sd in state_dicts:
        for k in sorted(sd):
            v = sd[k]
            h.update(k.encode())
            h.update(np.ascontiguousarray(v).tobytes() if isinstance(v, np.ndarray)
                     else repr(v).encode())
    return h.hexdigest()


def flatten(prefix, value, into) -> dict:
    """Nested dicts/lists of arrays and numbers -> {"a.b.0": leaf}."""
    if isinstance(value, dict):
        for k in value:
            flatten(f"{prefix}.{k}", value[k], into)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            flatten(f"{prefix}.{i}", v, into)
    elif value is None or isinstance(value, (np.ndarray, int, float, str, bool, np.generic)):
        into[prefix] = value
    return into


def fit_digest(trainer) -> str:
    opt = flatten("opt", trainer.optimizer.state_dict(), {})
    hist = {f"hist.{k}": np.asarray(trainer.history[k], np.float64)
            for k in trainer.history.keys() if k != "time"}  # wall-clock seconds vary
    return digest(trainer.model.state_dict(), opt, hist)


class Net(nn.Module):
    def __init__(self):
        self.fc1, self.act, self.drop = nn.Linear(64, 48), nn.Tanh(), nn.Dropout(0.2)
        self.fc2 = nn.Linear(48, 10)

    def forward(self, x):
        return self.fc2(self.drop(self.act(self.fc1(x))))

    def backward(self, g):
        return self.fc1.backward(self.act.backward(self.drop.backward(self.fc2.backward(g))))


def main() -> None:
    x, y = ember.datasets.load_digits()
    x = (x / 16.0).astype(np.float32)
    out = []

    def case(name, trainer, **fit):
        np.random.seed(0)
        trainer.fit(x, y, verbose=0, **fit)
        out.append(f"{name} {fit_digest(trainer)}")

    def mlp(**kw):
        np.random.seed(0)
        return MLP([64, 64, 32, 10], seed=0, **kw)

    case("fused-adam", ember.Trainer(mlp(), optimizer="adam", lr=1e-3),
         epochs=3, batch_size=32, validation_split=0.2)
    t = ember.Trainer(mlp(), optimizer="adam", lr=1e-3)
    t._fused = False
    case("layer-by-layer-adam", t, epochs=3, batch_size=32, validation_split=0.2)
    case("sgd-momentum-dropout", ember.Trainer(mlp(dropout=0.1), optimizer="sgd", lr=0.05,
                                               momentum=0.9, weight_decay=1e-4),
         epochs=3, batch_size=17, validation_split=0.1)
    case("adamw-clip-schedule", ember.Trainer(mlp(activation="gelu"), optimizer="adamw", lr=3e-3,
                                              max_grad_norm=1.0,
                                              lr_schedule=ember.schedules.CosineWithWarmup(
                                                  total_steps=150, warmup_steps=20)),
         epochs=3, batch_size=40)
    case("accumulate-3", ember.Trainer(mlp(), optimizer="adam", lr=1e-3),
         epochs=2, batch_size=16, accumulate_steps=3)
    np.random.seed(0)
    net = Net()
    case("custom-module", ember.Trainer(net, optimizer="adam", lr=2e-3), epochs=3, batch_size=32)
    es = ember.callbacks.EarlyStopping(patience=1, restore_best_weights=True, min_delta=0.05)
    case("early-stop-restore", ember.Trainer(mlp(), optimizer="adam", lr=1e-2, callbacks=[es]),
         epochs=8, batch_size=64, validation_split=0.25)
    np.random.seed(0)
    t = ember.Trainer(MLP([64, 32, 1], seed=0), loss="mse", optimizer="sgd", lr=1e-2)
    t.fit(x, (y / 9.0).astype(np.float32), epochs=2, batch_size=32, verbose=0)
    out.append(f"mse-regression {fit_digest(t)}")
    with tempfile.TemporaryDirectory() as d:
        ref = ember.Trainer(mlp(dropout=0.1), optimizer="adam", lr=1e-3)
        np.random.seed(0)
        ref.fit(x, y, epochs=2, batch_size=50, checkpoint_dir=os.path.join(d, "a"), verbose=0)
        part = ember.Trainer(mlp(dropout=0.1), optimizer="adam", lr=1e-3)
        part.fit(x, y, epochs=1, batch_size=50, checkpoint_dir=os.path.join(d, "b"), verbose=0)
        res = ember.Trainer(mlp(dropout=0.1), optimizer="adam", lr=1e-3)
        res.fit(x, y, epochs=2, batch_size=50, checkpoint_dir=os.path.join(d, "b"),
                resume="latest", verbose=0)
        out.append(f"resume-uninterrupted {fit_digest(ref)}")
        out.append(f"resume-resumed {fit_digest(res)}")
    try:
        from ember.sklearn import EmberClassifier, EmberRegressor
    except ImportError:
        out.append("sklearn (scikit-learn not installed)")
    else:
        clf = EmberClassifier(hidden_layer_sizes=(32,), max_iter=5, random_state=0).fit(x, y)
        out.append(f"sklearn-classifier {digest(clf.model_.state_dict())}")
        reg = EmberRegressor(hidden_layer_sizes=(16,), max_iter=5, random_state=0).fit(
            x, y.astype(np.float64))
        out.append(f"sklearn-regressor {digest(reg.model_.state_dict())}")
    with tempfile.TemporaryDirectory() as d:
        from ember.cli import main as cli_main
        import contextlib
        import io
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            cli_main(["train", "--epochs", "2", "--out", os.path.join(d, "run"), "--quiet"])
        m = ember.load_model(os.path.join(d, "run"), preprocessing=False)
        out.append(f"cli-train {digest(m.state_dict())}")
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())

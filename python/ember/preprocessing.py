"""Preprocessing as layers: feature standardization and output rescaling, and :class:`RunModel`,
the model a run written by ``ember train`` loads as.

``ember train`` standardizes each feature by the training split's mean and standard deviation
(and, for regression, the target too) and trains the network on those standardized values; the
statistics are kept in the run's ``config.json``. :func:`ember.load_model` and
:func:`ember.load_trainer` of such a run return a :class:`RunModel`: the trained network between a
:class:`Standardize` of its inputs and a :class:`Rescale` of its outputs, built from
``config.json``, so that it takes the raw features and gives what ``ember predict`` prints.

:class:`Standardize` and :class:`Rescale` are ordinary :class:`ember.nn.Module` layers without
trainable parameters (``forward``, ``backward``, ``config``), usable on their own.

Example:
    >>> import numpy as np
    >>> from ember.preprocessing import Standardize, Rescale
    >>> s = Standardize(mean=[10.0, -2.0], std=[2.0, 0.5])
    >>> s.forward(np.array([[12.0, -2.0]], np.float32))
    array([[1., 0.]], dtype=float32)
    >>> Rescale(scale=[100.0], offset=[5.0]).forward(np.array([[0.5]], np.float32))
    array([[55.]], dtype=float32)
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ember import nn
from ember.backend import array_module, to_host
from ember.nn import Module, Sequential

__all__ = ["Standardize", "Rescale", "RunModel", "from_config"]


def _vector(where: str, name: str, values, positive: bool = False) -> np.ndarray:
    """``values`` as a 1-D float64 array of finite numbers (> 0 when ``positive``), or a
    TypeError/ValueError naming ``where`` and ``name``."""
    if isinstance(values, (str, bytes)) or values is None:
        raise TypeError(f"{where}: {name} must be a sequence of numbers, got "
                        f"{type(values).__name__}")
    try:
        a = np.asarray(to_host(values))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{where}: {name} must be a sequence of numbers ({exc})") from None
    if a.dtype.kind not in "biuf" or a.dtype.kind == "b":
        raise TypeError(f"{where}: {name} must hold real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{where}: {name} must be a non-empty 1-D sequence (one value per "
                         f"column), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        i = int(np.flatnonzero(~np.isfinite(a))[0])
        raise ValueError(f"{where}: {name}[{i}] is {a[i]} (must be finite)")
    if positive and not np.all(a > 0):
        i = int(np.flatnonzero(a <= 0)[0])
        raise ValueError(f"{where}: {name}[{i}] is {a[i]} (must be > 0)")
    return a


def _check_input(where: str, x, width: int):
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{where}: x must be a NumPy or CuPy array, got {type(x).__name__}")
    if len(shape) != 2 or shape[1] != width:
        raise ValueError(f"{where}: x must be 2-D with {width} columns, got shape {tuple(shape)}")
    if x.dtype.kind not in "biuf":
        raise TypeError(f"{where}: x must hold real numbers, got dtype {x.dtype}")


class _Affine(Module):
    """``y = x * scale + shift`` per column, no trainable parameters (float32 in and out)."""

    def __init__(self, where: str, size: int):
        self._where = where
        self._size = size
        self._device_consts: dict = {}

    def _consts(self, x):
        xp = array_module(x)
        if xp is np:
            return self._host
        c = self._device_consts.get(xp.__name__)
        if c is None:
            c = self._device_consts[xp.__name__] = tuple(xp.asarray(a) for a in self._host)
        return c

    @property
    def num_features(self) -> int:
        return self._size

    def clear_buffers(self) -> None:
        self._device_consts = {}


class Standardize(_Affine):
    """``(x - mean) / std`` per feature (column), as ``ember train`` standardizes features.

    Computed in float32 as ``(float32(x) - float32(mean)) / float32(std)``, the same arithmetic
    as the command line, so a :class:`RunModel` gives ``ember predict``'s numbers. ``backward``
    returns ``grad / std``. No trainable parameters.

    Raises:
        TypeError / ValueError: ``mean`` or ``std`` is not a 1-D sequence of finite numbers,
            ``std`` holds a value <= 0, or their lengths differ.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        m = _vector("Standardize", "mean", mean)
        s = _vector("Standardize", "std", std, positive=True)
        if m.shape != s.shape:
            raise ValueError(f"Standardize: mean has {m.size} values but std has {s.size}")
        super().__init__("Standardize", m.size)
        self.mean, self.std = m, s
        self._host = (m.astype(np.float32), s.astype(np.float32))

    def forward(self, x):
        _check_input("Standardize", x, self._size)
        xp = array_module(x)
        mean, std = self._consts(x)
        return xp.ascontiguousarray((xp.asarray(x, dtype=xp.float32) - mean) / std,
                                    dtype=xp.float32)

    def backward(self, grad_out):
        _, std = self._consts(grad_out)
        xp = array_module(grad_out)
        return xp.ascontiguousarray(grad_out / std, dtype=xp.float32)

    def inverse(self, x):
        """``x * std + mean`` (float64): standardized values back in the features' units."""
        xp = array_module(x)
        return xp.asarray(x, dtype=xp.float64) * xp.asarray(self.std) + xp.asarray(self.mean)

    def config(self) -> dict:
        return {"type": "Standardize", "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_config(cls, config: dict) -> "Standardize":
        return _transform_from(config, cls, ("mean", "std"), "from_config")

    def extra_repr(self) -> str:
        return f"{self._size} features"


class Rescale(_Affine):
    """``x * scale + offset`` per output column: the network's standardized outputs back in
    the target's units (``scale`` = the target's std, ``offset`` its mean), as
    ``ember predict`` does. Computed in float64 and rounded to float32. ``backward`` returns
    ``grad * scale``. No trainable parameters.

    Raises:
        TypeError / ValueError: ``scale`` or ``offset`` is not a 1-D sequence of finite
            numbers, ``scale`` holds a value <= 0, or their lengths differ.
    """

    def __init__(self, scale: Sequence[float], offset: Sequence[float]):
        s = _vector("Rescale", "scale", scale, positive=True)
        o = _vector("Rescale", "offset", offset)
        if s.shape != o.shape:
            raise ValueError(f"Rescale: scale has {s.size} values but offset has {o.size}")
        super().__init__("Rescale", s.size)
        self.scale, self.offset = s, o
        self._host = (s, o, s.astype(np.float32))

    def forward(self, x):
        _check_input("Rescale", x, self._size)
        xp = array_module(x)
        scale, offset, _ = self._consts(x)
        return (xp.asarray(x, dtype=xp.float64) * scale + offset).astype(xp.float32)

    def backward(self, grad_out):
        _, _, scale32 = self._consts(grad_out)
        xp = array_module(grad_out)
        return xp.ascontiguousarray(grad_out * scale32, dtype=xp.float32)

    def config(self) -> dict:
        return {"type": "Rescale", "scale": self.scale.tolist(), "offset": self.offset.tolist()}

    @classmethod
    def from_config(cls, config: dict) -> "Rescale":
        return _transform_from(config, cls, ("scale", "offset"), "from_config")

    def extra_repr(self) -> str:
        return f"{self._size} outputs"


def _first_linear_widths(layers) -> tuple[Optional[int], Optional[int]]:
    ins = outs = None
    for layer in layers:
        w = dict(layer.named_parameters()).get("weight")
        if w is not None and len(w.shape) == 2:
            if ins is None:
                ins = w.shape[1]
            outs = w.shape[0]
    return ins, outs


class RunModel(Sequential):
    """A trained network with the preprocessing it was trained behind: ``standardize`` on its
    input, ``rescale`` on its output (either may be None), and the class labels.

    This is what :func:`ember.load_model` returns for a run written by ``ember train``: it takes
    the raw features (the columns of the CSV file) and ``predict`` gives what ``ember predict``
    prints — for regression the values in the target's units; for classification the logits,
    whose argmax indexes :attr:`classes` (:meth:`predict_labels` gives the labels themselves,
    ``Trainer.predict_proba`` the ``prob_<label>`` columns).

    The layers and parameters are the network's own (the same objects, the same PyTorch names:
    ``state_dict()`` is the checkpoint's), so training a RunModel (fine-tuning through
    ``Trainer``) trains ``network``; the loss then sees raw-unit outputs (regression: the MSE in
    the target's units, not of the standardized target). :attr:`network` is the bare network,
    which expects standardized features.

    Args:
        network: an :class:`ember.nn.Sequential` (e.g. an MLP).
        standardize: a :class:`Standardize` with one value per input feature, or None.
        rescale: a :class:`Rescale` with one value per output, or None.
        classes: the class label of each output (classification), or None.
    """

    def __init__(self, network: Sequential, standardize: Optional[Standardize] = None,
                 rescale: Optional[Rescale] = None, classes: Optional[Sequence] = None):
        if not isinstance(network, Sequential):
            raise TypeError(f"RunModel: network must be an ember.nn.Sequential, got "
                            f"{type(network).__name__}")
        if standardize is not None and not isinstance(standardize, Standardize):
            raise TypeError(f"RunModel: standardize must be a Standardize or None, got "
                            f"{type(standardize).__name__}")
        if rescale is not None and not isinstance(rescale, Rescale):
            raise TypeError(f"RunModel: rescale must be a Rescale or None, got "
                            f"{type(rescale).__name__}")
        ins, outs = _first_linear_widths(network.layers)
        if standardize is not None and ins is not None and standardize.num_features != ins:
            raise ValueError(f"RunModel: standardize has {standardize.num_features} features, "
                             f"the network takes {ins} inputs")
        if rescale is not None and outs is not None and rescale.num_features != outs:
            raise ValueError(f"RunModel: rescale has {rescale.num_features} outputs, the "
                             f"network gives {outs}")
        if classes is not None:
            if isinstance(classes, (str, bytes)):
                raise TypeError("RunModel: classes must be a list of labels, got a string")
            classes = [c.item() if hasattr(c, "item") else c for c in classes]
            if outs is not None and len(classes) != outs:
                raise ValueError(f"RunModel: {len(classes)} classes for a network with {outs} "
                                 "outputs")
            if rescale is not None:
                raise ValueError("RunModel: classes (classification) and rescale (regression) "
                                 "exclude each other")
        super().__init__(*network.layers)
        self.network = network
        self.standardize = standardize
        self.rescale = rescale
        self.classes = classes

    def forward(self, x):
        if self.standardize is not None:
            x = self.standardize.forward(x)
        out = Sequential.forward(self, x)
        if self.rescale is not None:
            out = self.rescale.forward(out)
        return out

    def backward(self, grad_out, need_input_grad: Optional[bool] = None):
        """As :meth:`Sequential.backward`, through the rescale and the standardization."""
        g = grad_out
        if self.rescale is not None:
            g = self.rescale.backward(g)
        g = Sequential.backward(self, g, need_input_grad=need_input_grad)
        if g is not None and self.standardize is not None:
            g = self.standardize.backward(g)
        return g

    def predict_labels(self, x, batch_size: int = 4096) -> np.ndarray:
        """The class label (from :attr:`classes`) of each row of the raw features ``x``, as
        ``ember predict``'s ``prediction`` column.

        Raises:
            ValueError: the model is not a classifier (it has no classes).
        """
        if self.classes is None:
            raise ValueError("predict_labels: this RunModel has no classes (a regression "
                             "model: predict gives the values)")
        out = self.predict(x, batch_size=batch_size)
        idx = out.argmax(axis=1)
        idx = to_host(idx)
        return np.asarray(self.classes)[idx]

    def clear_buffers(self) -> None:
        super().clear_buffers()
        for t in (self.standardize, self.rescale):
            if t is not None:
                t.clear_buffers()

    def config(self) -> dict:
        return {"type": "RunModel", "network": self.network.config(),
                "standardize": None if self.standardize is None else self.standardize.config(),
                "rescale": None if self.rescale is None else self.rescale.config(),
                "classes": self.classes}

    @classmethod
    def from_config(cls, config: dict) -> "RunModel":
        return from_config(config)

    def extra_repr(self) -> str:
        parts = [repr(self.network)]
        if self.standardize is not None:
            parts.append(f"standardize={self.standardize.num_features} features")
        if self.rescale is not None:
            parts.append(f"rescale={self.rescale.num_features} outputs")
        if self.classes is not None:
            shown = ", ".join(map(repr, self.classes[:5])) + (", ..." if len(self.classes) > 5
                                                               else "")
            parts.append(f"classes=[{shown}]")
        return ", ".join(parts)


def _transform_from(cfg, cls, keys, where: str):
    if cfg is None:
        return None
    if not isinstance(cfg, dict) or cfg.get("type") != cls.__name__:
        raise ValueError(f"{where}: expected a {cls.__name__} config or null, got {cfg!r:.80}")
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise ValueError(f"{where}: a {cls.__name__} config needs {', '.join(map(repr, missing))}")
    return cls(*(cfg[k] for k in keys))


def from_config(config: dict, network_from_config=None) -> Module:
    """Rebuild a :class:`Standardize`, :class:`Rescale` or :class:`RunModel` from its
    ``config()`` (weights are not included). ``network_from_config`` builds a RunModel's network
    (default: :func:`ember.nn.from_config`).

    Raises:
        ValueError: not one of those configs, or a bad value in it.
    """
    if not isinstance(config, dict):
        raise ValueError(f"preprocessing.from_config: expected a dict, got "
                         f"{type(config).__name__}")
    kind = config.get("type")
    try:
        if kind == "Standardize":
            return _transform_from(config, Standardize, ("mean", "std"), "from_config")
        if kind == "Rescale":
            return _transform_from(config, Rescale, ("scale", "offset"), "from_config")
        if kind == "RunModel":
            if network_from_config is None:
                network_from_config = nn.from_config
            if "network" not in config:
                raise ValueError("from_config: a RunModel config needs the key 'network'")
            network = network_from_config(config["network"])
            classes = config.get("classes")
            if classes is not None and not isinstance(classes, (list, tuple)):
                raise ValueError(f"from_config: a RunModel's classes must be a list, got "
                                 f"{classes!r:.80}")
            return RunModel(network,
                            _transform_from(config.get("standardize"), Standardize,
                                            ("mean", "std"), "from_config: standardize"),
                            _transform_from(config.get("rescale"), Rescale,
                                            ("scale", "offset"), "from_config: rescale"),
                            classes)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    raise ValueError(f"preprocessing.from_config: unknown type {kind!r} (expected Standardize, "
                     "Rescale or RunModel)")


# Where this ember's nn has a registry of custom layer types, register these, so that
# nn.from_config (and so checkpoints and fits of models that hold them) knows them too.
# ember.load_model rebuilds a RunModel without it (see checkpoint._model_from).
_register = getattr(nn, "register_module", None)
if _register is not None:
    for _cls in (Standardize, Rescale, RunModel):
        try:
            _register(_cls)
        except (TypeError, ValueError):  # the name is a user's class: leave theirs
            pass

"""Export to ONNX: an ember model as a standard graph that serving runtimes (onnxruntime, ...)
load.

:func:`to_onnx` writes an :class:`ember.nn.Sequential` (an :class:`ember.nn.MLP`, say) or the
:class:`ember.preprocessing.RunModel` that :func:`ember.load_model` gives for an ``ember train``
run as an ``.onnx`` file: ``Gemm`` nodes with ``transB=1`` (the weights as ember stores them,
(out, in)), the activations as ONNX operators, a run's feature standardization before them and
its target rescaling after. The input ``x`` is float32 (batch, features) with a dynamic batch
axis; the output is ``logits`` (the values, for a regressor), and ``probabilities`` (softmax)
when asked. Needs the optional ``onnx`` package (``pip install "ember[onnx]"``, which also brings
onnxruntime to run the file).

Example:
    >>> import numpy as np
    >>> import onnxruntime as ort
    >>> from ember.nn import MLP
    >>> from ember.export import to_onnx
    >>> model = MLP([4, 16, 3], activation="gelu", seed=0)
    >>> path = to_onnx(model, "mlp.onnx", probabilities=True)
    >>> sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    >>> x = np.ones((2, 4), np.float32)
    >>> logits, proba = sess.run(["logits", "probabilities"], {"x": x})
    >>> logits.shape, bool(np.abs(logits - model.predict(x)).max() < 1e-5)
    ((2, 3), True)
"""
from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Optional

import numpy as np

from ember import _io, _validate, nn
from ember import preprocessing as pre
from ember._version import __version__
from ember.backend import to_host

__all__ = ["to_onnx", "MIN_OPSET", "MAX_OPSET", "DEFAULT_OPSET", "SUPPORTED_LAYERS"]

#: The ONNX opsets :func:`to_onnx` writes (the ``Gelu`` operator exists from opset 20; below,
#: GELU is written as its formula). Opset 21 needs onnx >= 1.16 to write and onnxruntime >= 1.18
#: to run.
MIN_OPSET, MAX_OPSET = 13, 21
DEFAULT_OPSET = 17
#: The layer classes :func:`to_onnx` knows (exactly these classes, not subclasses: a subclass may
#: compute something else). Dropout and Identity are left out of the graph (inference).
SUPPORTED_LAYERS = (nn.Linear, nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU,
                    nn.Identity, nn.Dropout, pre.Standardize, pre.Rescale, nn.Sequential,
                    nn.MLP, pre.RunModel)
_INSTALL = 'pip install "ember[onnx]"'


def _import_onnx():
    """The onnx package, or ImportError saying how to install it."""
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"to_onnx needs the onnx package ({exc}); install it with "
                          f"{_INSTALL}") from None
    return onnx


class _Graph:
    """The nodes and initializers of the graph being built; each value gets a fresh name."""

    def __init__(self, onnx, opset: int):
        self.onnx, self.helper, self.opset = onnx, onnx.helper, opset
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, stem: str, value, dtype=np.float32) -> str:
        """An initializer holding ``value`` (as ``dtype``); returns its name."""
        name = self.name(stem)
        arr = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        self.initializers.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def node(self, op: str, inputs: list, stem: Optional[str] = None, **attrs) -> str:
        """Add one node with one output; returns the output's name."""
        out = self.name(stem or op.lower())
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out


# ------------------------------------------------------------------------------------------
# activations


def _gelu(g: _Graph, x: str, approximate: str) -> str:
    """GELU: the ``Gelu`` operator from opset 20, else its formula (erf; or the tanh form as
    ``x * sigmoid(2u)``, ``u = sqrt(2/pi) (x + 0.044715 x^3)``, which is 0.5 x (1 + tanh u)
    without cancelling for x << 0, as ember computes it)."""
    if g.opset >= 20:
        return g.node("Gelu", [x], approximate=approximate)
    if approximate == "none":
        e = g.node("Erf", [g.node("Mul", [x, g.const("inv_sqrt2", 1.0 / math.sqrt(2.0))])])
        half_x = g.node("Mul", [x, g.const("half", 0.5)])
        return g.node("Mul", [half_x, g.node("Add", [e, g.const("one", 1.0)])], "gelu")
    x2 = g.node("Mul", [x, x])
    inner = g.node("Add", [g.node("Mul", [x2, g.const("c", 0.044715)]), g.const("one", 1.0)])
    u2 = g.node("Mul", [g.node("Mul", [x, inner]),
                        g.const("two_k", 2.0 * math.sqrt(2.0 / math.pi))])
    return g.node("Mul", [x, g.node("Sigmoid", [u2])], "gelu_tanh")


def _activation(g: _Graph, x: str, name: str, slope: float) -> str:
    """The activation ``name`` (one of :data:`ember.ops.ACTIVATIONS`) of ``x``."""
    if name == "identity":
        return x
    if name == "relu":
        return g.node("Relu", [x])
    if name == "leaky_relu":
        return g.node("LeakyRelu", [x], alpha=float(slope))
    if name in ("gelu", "gelu_tanh"):
        return _gelu(g, x, "none" if name == "gelu" else "tanh")
    if name == "tanh":
        return g.node("Tanh", [x])
    if name == "sigmoid":
        return g.node("Sigmoid", [x])
    if name == "silu":
        return g.node("Mul", [x, g.node("Sigmoid", [x])], "silu")
    raise ValueError(f"to_onnx: unknown activation {name!r}")


# ------------------------------------------------------------------------------------------
# layers


def _host32(a) -> np.ndarray:
    return np.ascontiguousarray(to_host(a), dtype=np.float32)


def _linear(g: _Graph, x: str, layer: nn.Linear) -> str:
    """``x @ W.T + b`` as one Gemm (transB=1: W as stored, (out, in)); then the activation
    fused into the layer, if any (Sequential sets it; the layer after it is then skipped)."""
    inputs = [x, g.const("weight", _host32(layer.weight.data))]
    if layer.bias is not None:
        inputs.append(g.const("bias", _host32(layer.bias.data)))
    y = g.node("Gemm", inputs, "linear", transB=1)
    return _activation(g, y, layer.activation, layer.negative_slope)


def _standardize(g: _Graph, x: str, s: pre.Standardize) -> str:
    """``(x - mean) / std`` in float32, the arithmetic of Standardize.forward (and of
    ``ember predict``), so the same bits."""
    return g.node("Div", [g.node("Sub", [x, g.const("mean", s.mean)]), g.const("std", s.std)],
                  "standardized")


def _rescale(g: _Graph, x: str, r: pre.Rescale) -> str:
    """``x * scale + offset`` in float64 rounded to float32, as Rescale.forward computes it."""
    TensorProto = g.onnx.TensorProto
    x64 = g.node("Cast", [x], to=TensorProto.DOUBLE)
    y = g.node("Add", [g.node("Mul", [x64, g.const("scale", r.scale, np.float64)]),
                       g.const("offset", r.offset, np.float64)])
    return g.node("Cast", [y], "rescaled", to=TensorProto.FLOAT)


_ACTIVATION_TYPES = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU)


def _layers(g: _Graph, x: str, layers, where: str) -> str:
    """Every layer of a Sequential's ``layers`` applied to ``x``, as Sequential.forward runs
    them (in eval mode). ``where`` prefixes the layer index in errors ("layer 2", "layer 1.0").

    Raises:
        TypeError: a layer this exporter does not know (named by index and class).
    """
    fused = False  # the previous Linear applied this activation layer already
    for i, layer in enumerate(layers):
        kind = type(layer)
        label = f"{where}{i}"
        if kind in _ACTIVATION_TYPES:
            if not fused:
                x = _activation(g, x, layer.name, layer.negative_slope)
            fused = False
            continue
        fused = False
        if kind is nn.Linear:
            x = _linear(g, x, layer)
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            fused = (layer.activation != "identity" and type(nxt) in _ACTIVATION_TYPES and
                     nxt.name == layer.activation)
        elif kind in (nn.Dropout, nn.Identity):
            pass  # inference: dropout is off, identity does nothing
        elif kind is pre.Standardize:
            x = _standardize(g, x, layer)
        elif kind is pre.Rescale:
            x = _rescale(g, x, layer)
        elif kind in (nn.Sequential, nn.MLP, pre.RunModel):
            x = _model(g, x, layer, f"{label}.")
        else:
            raise TypeError(f"to_onnx: cannot export {label} ({kind.__name__}) of the model: "
                            f"ONNX export knows ember's {_known()} layers (exactly those "
                            "classes, not subclasses)")
    return x


def _known() -> str:
    return ", ".join(c.__name__ for c in SUPPORTED_LAYERS if c not in
                     (nn.Sequential, nn.MLP, pre.RunModel))


def _model(g: _Graph, x: str, model, where: str) -> str:
    """A Sequential, MLP or RunModel (its standardization, layers, rescaling) applied to x."""
    if isinstance(model, pre.RunModel):
        if model.standardize is not None:
            x = _standardize(g, x, model.standardize)
        x = _layers(g, x, model.layers, where)
        return x if model.rescale is None else _rescale(g, x, model.rescale)
    return _layers(g, x, model.layers, where)


# ------------------------------------------------------------------------------------------
# arguments


def _check_model(model) -> None:
    """TypeError unless ``model`` is a Sequential / MLP / RunModel running ember's own forward."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"to_onnx: model must be an ember.nn.Sequential (e.g. an MLP) or the "
                        f"RunModel ember.load_model gives, got {type(model).__name__}")
    own = pre.RunModel.forward if isinstance(model, pre.RunModel) else nn.Sequential.forward
    if type(model).forward is not own:
        raise TypeError(f"to_onnx: cannot export a {type(model).__name__}: it defines its own "
                        "forward, which the exporter cannot read (export an "
                        "ember.nn.Sequential of ember's layers)")


def _check_opset(opset, onnx) -> int:
    """``opset`` as an int in [MIN_OPSET, MAX_OPSET] that the installed onnx can write."""
    if not _validate.is_int(opset) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"to_onnx: opset must be an integer from {MIN_OPSET} to {MAX_OPSET}, "
                         f"got {opset!r}")
    have = onnx.defs.onnx_opset_version()
    if opset > have:
        raise ValueError(f"to_onnx: opset {opset} is newer than the installed onnx "
                         f"{onnx.__version__} writes (up to {have}); upgrade onnx or pass "
                         f"opset={have}")
    return int(opset)


def _widths(model) -> tuple[Optional[int], Optional[int]]:
    """(input width, output width) of ``model``: from its first and last layers that fix one
    (Linear, Standardize, Rescale), None where none does."""
    ins = outs = None
    for layer in _flat(model):
        if isinstance(layer, nn.Linear):
            ins = layer.in_features if ins is None else ins
            outs = layer.out_features
        elif isinstance(layer, (pre.Standardize, pre.Rescale)):
            ins = layer.num_features if ins is None else ins
            outs = layer.num_features
    return ins, outs


def _flat(model) -> list:
    """The leaf layers of a (nested) Sequential or RunModel, in order."""
    out: list = []
    if isinstance(model, pre.RunModel) and model.standardize is not None:
        out.append(model.standardize)
    for layer in model.layers:
        out += _flat(layer) if isinstance(layer, nn.Sequential) else [layer]
    if isinstance(model, pre.RunModel) and model.rescale is not None:
        out.append(model.rescale)
    return out


def _check_standardize(standardize, model, width: Optional[int]):
    """``standardize`` (a (mean, std) pair, a Standardize, or None) as a Standardize or None.

    Raises:
        TypeError: not a pair of sequences of numbers nor a Standardize.
        ValueError: bad values (not finite, std <= 0), lengths that differ from each other or
            from the model's input width, or a RunModel that has its own standardization.
    """
    if standardize is None:
        return None
    if isinstance(model, pre.RunModel) and model.standardize is not None:
        raise ValueError("to_onnx: the RunModel has its own standardization "
                         "(model.standardize), which the export includes; standardize must be "
                         "None (or export model.network with standardize=(mean, std))")
    if not isinstance(standardize, pre.Standardize):
        if isinstance(standardize, (str, bytes)) or not hasattr(standardize, "__len__") or \
                len(standardize) != 2:
            raise TypeError(f"to_onnx: standardize must be a (mean, std) pair or an "
                            f"ember.preprocessing.Standardize, got {type(standardize).__name__}")
        try:
            standardize = pre.Standardize(*standardize)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"to_onnx: standardize: {exc}") from None
    if width is not None and standardize.num_features != width:
        raise ValueError(f"to_onnx: standardize has {standardize.num_features} values per "
                         f"vector, but the model takes {width} input features")
    return standardize


def _check_probabilities(probabilities, model) -> bool:
    probabilities = _validate.flag("to_onnx", "probabilities", probabilities)
    if probabilities and isinstance(model, pre.RunModel) and model.classes is None:
        raise ValueError("to_onnx: probabilities=True needs a classifier, but this RunModel is "
                         "a regression model (it has no classes); its output is the values "
                         "('logits')")
    return probabilities


# ------------------------------------------------------------------------------------------
# the file


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: a temporary file beside it, fsynced,
    renamed into place."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        _io.write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _io.fsync_dir(path.parent)


def _check_path(path) -> Path:
    path = _io.as_path(path, "to_onnx: path")
    if path.is_dir():
        raise IsADirectoryError(f"to_onnx: path {str(path)!r} is a directory; give a file path "
                                "such as model.onnx")
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"to_onnx: path {str(path)!r}: the directory {str(parent)!r} "
                                "does not exist")
    return path


def _build(onnx, model, opset: int, probabilities: bool, standardize, widths):
    """The ModelProto of ``model``."""
    helper, TensorProto = onnx.helper, onnx.TensorProto
    g = _Graph(onnx, opset)
    ins, outs = widths
    if ins is None and standardize is not None:  # no layer fixes the width: the scaling does
        ins = outs = standardize.num_features
    x = "x"
    if standardize is not None:
        x = _standardize(g, x, standardize)
    y = _model(g, x, model, "layer ")
    g.nodes.append(helper.make_node("Identity", [y], ["logits"], name="logits"))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                             ["batch", outs if outs is not None else "outputs"])]
    if probabilities:
        g.nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1,
                                        name="probabilities"))
        outputs.append(helper.make_tensor_value_info(
            "probabilities", TensorProto.FLOAT, ["batch", outs if outs is not None else "outputs"]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                            ["batch", ins if ins is not None else "features"])]
    graph = helper.make_graph(g.nodes, "ember", inputs, outputs, g.initializers)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="ember",
                              producer_version=__version__,
                              doc_string=f"{type(model).__name__} exported by ember {__version__}")
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    classes = getattr(model, "classes", None)
    if classes is not None:
        helper.set_model_props(proto, {"classes": json.dumps(classes, default=str)})
    return proto


def to_onnx(model, path, *, opset: int = DEFAULT_OPSET, probabilities: bool = False,
            standardize=None) -> Path:
    """Write ``model`` to ``path`` as an ONNX file; returns the path.

    ``model`` is an :class:`ember.nn.Sequential` of ember's layers (an :class:`ember.nn.MLP`,
    say), or the :class:`ember.preprocessing.RunModel` :func:`ember.load_model` gives for an
    ``ember train`` run, whose feature standardization (and, for regression, target rescaling)
    the graph includes: the file then takes the raw feature rows ``ember predict`` reads. The
    model may be on the CPU or the GPU; it is exported as in eval mode (dropout left out).

    The graph: input ``x`` (float32, shape (batch, features), the batch axis dynamic), output
    ``logits`` (the model's output: a regressor's values), and with ``probabilities=True`` also
    ``probabilities``, the softmax of the logits over axis 1 (for classifiers). Each Linear is a
    ``Gemm`` with ``transB=1``; ReLU, LeakyReLU, Tanh and Sigmoid their operators; SiLU
    ``x * Sigmoid(x)``; GELU the ``Gelu`` operator from opset 20, its formula below.
    ``standardize=(mean, std)`` (one value per input feature) prepends ``(x - mean) / std``, as
    :class:`ember.preprocessing.Standardize` computes it. A classifier RunModel's class labels
    are kept in the file's metadata (``"classes"``, JSON). ``onnx.checker`` checks the model
    before it is written; the file is written beside ``path`` and renamed into place.

    Raises:
        ImportError: the onnx package is missing (``pip install "ember[onnx]"``).
        TypeError: ``model`` is not a Sequential/MLP/RunModel, or holds a layer that cannot be
            exported (the error names its index and class); ``path`` is not a str or PathLike;
            ``standardize`` is not a (mean, std) pair.
        ValueError: ``opset`` is not an integer from 13 to 21 (or is newer than the installed
            onnx writes); ``standardize`` has bad values or not one per input feature, or is
            given for a RunModel that has its own; ``probabilities=True`` for a regression
            RunModel; ``probabilities`` is not a bool.
        FileNotFoundError / IsADirectoryError: ``path``'s directory does not exist, or ``path``
            is a directory.
    """
    onnx = _import_onnx()
    _check_model(model)
    path = _check_path(path)
    opset = _check_opset(opset, onnx)
    probabilities = _check_probabilities(probabilities, model)
    widths = _widths(model)
    standardize = _check_standardize(standardize, model, widths[0])
    proto = _build(onnx, model, opset, probabilities, standardize, widths)
    onnx.checker.check_model(proto, full_check=True)
    _write_atomic(path, proto.SerializeToString())
    return path

"""Loss functions. ``forward(pred, target)`` returns the scalar loss and, in the same pass over
the data, computes the gradient that ``backward()`` then returns.

Example:
    >>> import numpy as np
    >>> from ember.losses import CrossEntropy
    >>> loss = CrossEntropy()
    >>> value = loss.forward(np.zeros((4, 3), np.float32), np.array([0, 1, 2, 0]))
    >>> round(value, 4)   # log(3)
    1.0986
"""
from __future__ import annotations

import numpy as np

from ember import _validate, ops
from ember.backend import is_cuda_array, to_host

__all__ = ["Loss", "CrossEntropy", "MSE", "LOSSES", "get_loss"]

_REDUCTIONS = ("mean", "sum")


class Loss:
    """Base class. ``task`` is ``"classification"`` or ``"regression"``."""

    task = "regression"
    #: The loss kernel a whole-step plan runs in place of forward/backward (``"cross_entropy"``
    #: or ``"mse"``; see :meth:`ember.nn.Sequential.fused_ok`), or None. Read off the loss's own
    #: class: a subclass (which may change forward) goes layer by layer unless it sets it too.
    fused_loss = None

    def __init__(self):
        self._grad = None
        self._grad_buf = None

    def forward(self, pred, target) -> float:
        raise NotImplementedError

    def __call__(self, pred, target) -> float:
        return self.forward(pred, target)

    def backward(self):
        """Gradient of the last ``forward``'s loss wrt ``pred``."""
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._grad

    def set_grad(self, grad) -> None:
        """Make ``grad`` what :meth:`backward` returns: the gradient of a forward computed
        elsewhere (:class:`ember.nn.FusedPlan` computes loss and gradient in its kernel)."""
        self._grad = grad

    def forward_device(self, pred, target):
        """:meth:`forward` on CUDA arrays without synchronising: the loss as a float64 device
        array of shape (1,) (for the CUDA-graph training step)."""
        raise NotImplementedError(f"{type(self).__name__} has no device-side forward")

    def arrays_in_use(self) -> list:
        """The arrays a training step through this loss reads or writes besides the model's:
        its gradient (and the buffer it is written to) and its class weights, if any."""
        arrays = [self._grad, self._grad_buf, getattr(self, "weight", None)]
        return [a for a in arrays if a is not None]

    def _grad_out(self, pred):
        buf = self._grad_buf
        if buf is None or buf.shape != pred.shape or type(buf) is not type(pred):
            buf = self._grad_buf = (np.empty_like(pred) if type(pred) is np.ndarray
                                    else __import__("cupy").empty_like(pred))
        return buf

    def config(self) -> dict:
        return {"type": type(self).__name__}


class CrossEntropy(Loss):
    """Softmax cross-entropy on logits with integer labels (``torch.nn.CrossEntropyLoss``).

    Args:
        label_smoothing: in [0, 1].
        weight: optional per-class weights (length = number of classes).
        reduction: ``"mean"`` or ``"sum"``.
    """

    task = "classification"
    fused_loss = "cross_entropy"

    def __init__(self, label_smoothing: float = 0.0, weight=None, reduction: str = "mean"):
        super().__init__()
        label_smoothing = _validate.real_in("CrossEntropy", "label_smoothing", label_smoothing,
                                            0.0, 1.0, closed_high=True)
        _validate.one_of("CrossEntropy", "reduction", reduction, _REDUCTIONS)
        self.label_smoothing = label_smoothing
        self.weight = None if weight is None else self._checked_weight(weight)
        self.reduction = reduction

    @staticmethod
    def _checked_weight(weight) -> np.ndarray:
        """``weight`` as a 1-D float32 NumPy array of finite values >= 0, or an error naming it
        (its length is checked against the logits when the loss is first used)."""
        if is_cuda_array(weight) and hasattr(weight, "get"):  # cupy
            weight = weight.get()
        try:
            w0 = np.asarray(weight)
        except (TypeError, ValueError):
            raise TypeError(f"CrossEntropy: weight must be a 1-D array of per-class weights, "
                            f"got {type(weight).__name__}") from None
        if w0.dtype.kind not in "biuf":
            raise TypeError(f"CrossEntropy: weight must hold numbers, got dtype {w0.dtype}")
        if w0.ndim != 1 or w0.size == 0:
            raise ValueError(f"CrossEntropy: weight must be 1-D with one entry per class, got "
                             f"shape {w0.shape}")
        with np.errstate(over="ignore", invalid="ignore"):  # too large: inf, reported below
            w = np.ascontiguousarray(w0, dtype=np.float32)
        bad = ~(np.isfinite(w) & (w >= 0))
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"CrossEntropy: weight must be finite and >= 0, got weight[{i}] = "
                             f"{w0[i].item()}")
        return w

    def check_classes(self, n_classes: int) -> None:
        """ValueError naming ``weight`` when it does not have one entry per class."""
        weight = self.weight
        if weight is not None and weight.shape[0] != n_classes:
            raise ValueError(f"CrossEntropy: weight has {weight.shape[0]} entries (one per "
                             f"class) but the logits have {n_classes} classes")

    def _device_weight(self, pred):
        weight = self.weight
        if weight is not None and type(pred) is not np.ndarray and type(weight) is np.ndarray:
            import cupy
            weight = self.weight = cupy.asarray(weight)
        return weight

    def forward(self, pred, target, compute_grad: bool = True) -> float:
        weight = self._device_weight(pred)
        try:
            loss, self._grad = ops.softmax_cross_entropy(
                pred, target, weight=weight, label_smoothing=self.label_smoothing,
                reduction=self.reduction, compute_grad=compute_grad,
                grad=self._grad_out(pred) if compute_grad else None)
        except ValueError:
            # diagnosed only after the kernel refused (no check on the hot path)
            if getattr(pred, "ndim", 0) == 2:
                self.check_classes(pred.shape[1])
            raise
        return loss

    def forward_device(self, pred, target):
        """:meth:`forward` on CuPy arrays without synchronising: the loss comes back as a
        float64 device array of shape (1,) holding the value :meth:`forward` returns (NaN for a
        label out of range). For the CUDA-graph training step."""
        if getattr(pred, "ndim", 0) == 2:
            self.check_classes(pred.shape[1])
        cuda = ops.kernels(pred, "CrossEntropy.forward_device", "pred")
        loss, self._grad = cuda.softmax_cross_entropy(
            pred, target, self._device_weight(pred), self.label_smoothing, self.reduction, 1.0,
            True, self._grad_out(pred), None, device_loss="float64")
        return loss

    def config(self) -> dict:
        w = None if self.weight is None else [float(v) for v in np.asarray(
            to_host(self.weight))]
        return {"type": "CrossEntropy", "label_smoothing": self.label_smoothing, "weight": w,
                "reduction": self.reduction}


class MSE(Loss):
    """Mean squared error (``torch.nn.MSELoss``); a 1-D target matches an (n, 1) prediction."""

    fused_loss = "mse"

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = _validate.one_of("MSE", "reduction", reduction, _REDUCTIONS)

    def forward(self, pred, target, compute_grad: bool = True) -> float:
        if target.ndim == 1 and pred.ndim == 2 and pred.shape[1] == 1:
            target = target.reshape(-1, 1)
        loss, self._grad = ops.mse(pred, target, reduction=self.reduction,
                                   compute_grad=compute_grad,
                                   grad=self._grad_out(pred) if compute_grad else None)
        return loss

    def forward_device(self, pred, target):
        """:meth:`forward` on CuPy arrays without synchronising (see
        :meth:`CrossEntropy.forward_device`)."""
        if target.ndim == 1 and pred.ndim == 2 and pred.shape[1] == 1:
            target = target.reshape(-1, 1)
        cuda = ops.kernels(pred, "MSE.forward_device", "pred")
        loss, self._grad = cuda.mse(pred, target, self.reduction, 1.0, True,
                                    self._grad_out(pred), device_loss="float64")
        return loss

    def config(self) -> dict:
        return {"type": "MSE", "reduction": self.reduction}


#: Loss names (``Trainer(loss=...)``, :func:`get_loss`; any case) -> class.
LOSSES = {"cross_entropy": CrossEntropy, "crossentropy": CrossEntropy, "ce": CrossEntropy,
          "mse": MSE}
#: Loss classes by the ``"type"`` of their :meth:`Loss.config`.
_CONFIG_TYPES = {cls.__name__: cls for cls in LOSSES.values()}


def get_loss(loss) -> Loss:
    """A Loss from an instance, a name (one of :data:`LOSSES`) or a config dict."""
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, dict):
        cfg = dict(loss)
        kind = cfg.pop("type", None)
        cls = _CONFIG_TYPES.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ValueError(f"unknown loss config {loss!r}")
        return cls(**cfg)
    if isinstance(loss, str) and loss.lower() in LOSSES:
        return LOSSES[loss.lower()]()
    raise ValueError(f"loss must be an ember.losses.Loss or one of {sorted(LOSSES)}, "
                     f"got {loss!r}")

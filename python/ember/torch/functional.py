"""ember's fused kernels as PyTorch autograd functions: ``linear`` (GEMM + bias + activation in one
kernel, its backward in one more) and ``cross_entropy`` (softmax, loss and gradient in one pass).

CPU float32 tensors only: each tensor is handed to ember's kernels as a NumPy view of its memory
(``t.detach().numpy()``, no copy) and each result comes back the same way (``torch.from_numpy``).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ember import ops

__all__ = ["ACTIVATIONS", "linear", "mlp", "cross_entropy", "cpu_float32", "as_array"]

#: The activations :func:`linear` fuses (ember's names; ``"gelu"`` is the exact erf form, torch's
#: ``nn.GELU()``, ``"gelu_tanh"`` is ``nn.GELU(approximate="tanh")``).
ACTIVATIONS = ops.ACTIVATIONS

# The unchecked CPU kernels (their C++ checks every array before any work).
_K = ops.cpu_kernels


def cpu_float32(t: torch.Tensor, fn: str, name: str) -> torch.Tensor:
    """``t`` detached and C-contiguous (a copy only when it is not contiguous), checked to be a
    float32 CPU tensor: a CUDA tensor or another dtype is refused with an error naming ``fn``."""
    if t.device.type != "cpu":
        raise NotImplementedError(
            f"{fn}: {name} is on {t.device}; ember.torch runs CPU tensors only (the GPU path is "
            f"not written yet): keep the model on the CPU or use torch's own layers there")
    if t.dtype != torch.float32:
        raise TypeError(f"{fn}: {name} must be float32, got {t.dtype} (ember's kernels are "
                        f"float32; call .float() on the model and its inputs)")
    return t.detach().contiguous()


def as_array(t: torch.Tensor, fn: str, name: str) -> np.ndarray:
    """A C-contiguous float32 NumPy view of the CPU tensor ``t`` (see :func:`cpu_float32`)."""
    return cpu_float32(t, fn, name).numpy()


def _from_output_ok(activation: str, slope: float) -> bool:
    """Whether act'(z) can be read off y = act(z) (as ember.nn.Linear does): then backward needs
    only the output, and forward writes no pre-activation."""
    return activation == "relu" or (activation == "leaky_relu" and slope >= 0.0)


class LinearFunction(torch.autograd.Function):
    """``act(x @ weight.T + bias)`` in one ember GEMM with a fused epilogue; backward is one
    ``linear_backward`` call giving the input, weight and bias gradients together."""

    @staticmethod
    def forward(ctx, x, weight, bias, activation, slope):
        fn = "ember.torch.linear"
        xt, wt = cpu_float32(x, fn, "input"), cpu_float32(weight, fn, "weight")
        ba = None if bias is None else as_array(bias, fn, "bias")
        xa, wa = xt.numpy(), wt.numpy()
        need = any(ctx.needs_input_grad[:3])
        save_z = need and activation != "identity" and not _from_output_ok(activation, slope)
        r = _K.gemm(xa, wa, ba, None, None, False, True, activation, slope, 1.0, 0.0, save_z,
                    "fp32")
        if save_z:
            y, z = torch.from_numpy(r[0]), torch.from_numpy(r[1])
        else:
            y = torch.from_numpy(r)
            z = y if activation != "identity" else None
        ctx.activation, ctx.slope, ctx.has_bias = activation, slope, bias is not None
        if need:
            # the tensors themselves (not copies): torch then catches an in-place change of an
            # input or of the output before backward
            ctx.save_for_backward(x if xt.data_ptr() == x.data_ptr() else xt, weight, z)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, w, z = ctx.saved_tensors
        g = as_array(grad_out, "ember.torch.linear (backward)", "grad_output")
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gi, gw, gb = _K.linear_backward(
            g, x.detach().numpy(), w.detach().numpy(), None if z is None else z.detach().numpy(),
            ctx.activation,
            ctx.slope, need_x, ctx.has_bias and need_b, False, None, None, None, None, "fp32")
        return (torch.from_numpy(gi) if need_x else None,
                torch.from_numpy(gw) if need_w else None,
                torch.from_numpy(gb) if gb is not None else None, None, None)


def linear(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           activation: str = "identity", negative_slope: float = 0.01) -> torch.Tensor:
    """``act(F.linear(input, weight, bias))`` on ember's fused kernels, differentiable.

    ``input`` is (*, in_features) float32 on the CPU; ``weight`` (out, in) as in torch.
    ``activation`` is one of :data:`ACTIVATIONS`.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"ember.torch.linear: activation must be one of {ACTIVATIONS}, got "
                         f"{activation!r}")
    lead = input.shape[:-1]
    x = input if input.dim() == 2 else input.reshape(-1, input.shape[-1])
    if x.shape[0] == 0:  # ember's kernels refuse empty arrays; torch's answer is empty too
        return input.new_empty((*lead, weight.shape[0]))
    y = LinearFunction.apply(x, weight, bias, activation, float(negative_slope))
    return y if input.dim() == 2 else y.reshape(*lead, weight.shape[0])


class MlpFunction(torch.autograd.Function):
    """A stack of fused Linear layers as one autograd node: forward is each layer's GEMM with
    its epilogue, backward each layer's ``linear_backward``, last first -- the kernels of
    :class:`LinearFunction` layer after layer, without an autograd node, a context and the
    argument checks per layer. ``layers`` is a tuple of ``(activation, slope, has_bias)``;
    ``params`` the layers' weights and biases in order (the biases of layers that have one)."""

    @staticmethod
    def forward(ctx, x, layers, views, *params):
        fn = "ember.torch.Sequential"
        h = cpu_float32(x, fn, "input")
        need_any = any(ctx.needs_input_grad)
        ws, arrays, biases, at = [], [], [], 0
        for _, _, has_bias in layers:
            ws.append(params[at])
            arrays.append(views[at])
            biases.append(views[at + 1] if has_bias else None)
            at += 2 if has_bias else 1
        inputs, preacts = [], []
        cur = h.numpy()
        for (act, slope, _), wa, ba in zip(layers, arrays, biases):
            save_z = need_any and act != "identity" and not _from_output_ok(act, slope)
            r = _K.gemm(cur, wa, ba, None, None, False, True, act, slope, 1.0, 0.0, save_z,
                        "fp32")
            inputs.append(cur)
            y, z = (r[0], r[1]) if save_z else (r, r if act != "identity" else None)
            preacts.append(z)
            cur = y
        out = torch.from_numpy(cur)
        if need_any:
            ctx.layers, ctx.arrays, ctx.inputs, ctx.preacts = layers, arrays, inputs, preacts
            # the input and weights themselves: torch catches an in-place change before backward
            ctx.save_for_backward(x if h.data_ptr() == x.data_ptr() else h, *ws)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        ctx.saved_tensors  # (raises if the input or a weight was changed in place since)
        g = as_array(grad_out, "ember.torch.Sequential (backward)", "grad_output")
        needs = ctx.needs_input_grad
        grads, at = [], 3
        flags = []
        for _, _, has_bias in ctx.layers:
            flags.append((needs[at], has_bias and needs[at + 1] if has_bias else False))
            at += 2 if has_bias else 1
        for i in range(len(ctx.layers) - 1, -1, -1):
            act, slope, has_bias = ctx.layers[i]
            need_gi = i > 0 or needs[0]
            gi, gw, gb = _K.linear_backward(
                g, ctx.inputs[i], ctx.arrays[i], ctx.preacts[i], act, slope, need_gi,
                has_bias and flags[i][1], False, None, None, None, None, "fp32")
            part = [torch.from_numpy(gw) if flags[i][0] else None]
            if has_bias:
                part.append(torch.from_numpy(gb) if gb is not None else None)
            grads[:0] = part
            g = gi
        return (torch.from_numpy(g) if needs[0] else None, None, None, *grads)


def mlp(input: torch.Tensor, layers: tuple, params, views=None) -> torch.Tensor:
    """A stack of fused Linear layers (``layers``: ``(activation, slope, has_bias)`` per layer;
    ``params``: their weights and biases in order; ``views``: NumPy views of them, made here
    when not given) as one differentiable call: what a converted ``nn.Sequential`` of ember
    Linear layers runs (see :class:`MlpFunction`)."""
    if views is None:
        views = [as_array(p, "ember.torch.Sequential", "weight") for p in params]
    lead = input.shape[:-1]
    x = input if input.dim() == 2 else input.reshape(-1, input.shape[-1])
    out_features = params[-2 if layers[-1][2] else -1].shape[0]
    if x.shape[0] == 0:  # ember's kernels refuse empty arrays; torch's answer is empty too
        return input.new_empty((*lead, out_features))
    y = MlpFunction.apply(x, layers, views, *params)
    return y if input.dim() == 2 else y.reshape(*lead, out_features)


class CrossEntropyFunction(torch.autograd.Function):
    """Softmax cross-entropy: loss and d(loss)/d(logits) in one ember pass; backward scales the
    saved gradient by the incoming one."""

    @staticmethod
    def forward(ctx, logits, target, weight, label_smoothing, reduction):
        fn = "ember.torch.cross_entropy"
        la = as_array(logits, fn, "input")
        wa = None if weight is None else as_array(weight, fn, "weight")
        labels = target.detach().numpy()  # ops widens integer labels to int64
        need = ctx.needs_input_grad[0]
        ctx.reduction = reduction
        if reduction == "none":
            rows = np.empty(la.shape[0], np.float32)
            _, grad = ops.softmax_cross_entropy(la, labels, weight=wa,
                                                label_smoothing=label_smoothing, reduction="sum",
                                                compute_grad=need, row_loss=rows)
            out = torch.from_numpy(rows)
        else:
            loss, grad = ops.softmax_cross_entropy(la, labels, weight=wa,
                                                   label_smoothing=label_smoothing,
                                                   reduction=reduction, compute_grad=need)
            out = torch.from_numpy(np.array(loss, np.float32))  # (~3 us less than torch.tensor)
        if need:
            ctx.save_for_backward(torch.from_numpy(grad))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        if ctx.reduction == "none":
            grad = grad * grad_out.to(grad.dtype).reshape(-1, 1)
        elif grad_out.item() != 1.0:
            grad = grad * grad_out.to(grad.dtype)
        return grad, None, None, None, None


def cross_entropy(input: torch.Tensor, target: torch.Tensor,
                  weight: Optional[torch.Tensor] = None, label_smoothing: float = 0.0,
                  reduction: str = "mean") -> torch.Tensor:
    """``torch.nn.functional.cross_entropy(input, target, weight, reduction=reduction,
    label_smoothing=label_smoothing)`` on ember's one-pass softmax cross-entropy.

    ``input`` is (batch, classes) float32 on the CPU, ``target`` (batch,) integer class indices
    (no probabilities, no ``ignore_index``). ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"``.
    """
    fn = "ember.torch.cross_entropy"
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{fn}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if input.dim() != 2:
        raise ValueError(f"{fn}: input must be 2-D (batch, classes), got shape "
                         f"{tuple(input.shape)}")
    if target.dtype.is_floating_point or target.dim() != 1:
        raise ValueError(f"{fn}: target must be 1-D integer class indices (probability targets "
                         f"are not supported), got {target.dtype} of shape {tuple(target.shape)}")
    if target.device.type != "cpu":
        as_array(target, fn, "target")  # the CPU-only error
    return CrossEntropyFunction.apply(input, target, weight, float(label_smoothing), reduction)

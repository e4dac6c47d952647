"""ember's fused kernels as PyTorch autograd functions: ``linear`` (GEMM + bias + activation in one
kernel, its backward in one more) and ``cross_entropy`` (softmax, loss and gradient in one pass).

Float32 tensors. On the CPU each tensor is handed to ember's kernels as a NumPy view of its memory
(``t.detach().numpy()``, no copy) and each result comes back the same way (``torch.from_numpy``).
On the GPU (ember built with CUDA, and CuPy installed) the tensors go to ember's CUDA kernels
through ``ember.ops`` (DLPack, no copy), on ``torch.cuda.current_stream()``, and results come back
as CUDA tensors. (The GPU path is written and compiled; it has not run on a GPU yet.)
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ember import backend, ops

__all__ = ["ACTIVATIONS", "linear", "mlp", "cross_entropy", "float32_tensor", "as_array",
           "kernels_for"]

#: The activations :func:`linear` fuses (ember's names; ``"gelu"`` is the exact erf form, torch's
#: ``nn.GELU()``, ``"gelu_tanh"`` is ``nn.GELU(approximate="tanh")``).
ACTIVATIONS = ops.ACTIVATIONS

# The unchecked CPU kernels (their C++ checks every array before any work).
_K = ops.cpu_kernels


def float32_tensor(t: torch.Tensor, fn: str, name: str) -> torch.Tensor:
    """``t`` detached and C-contiguous (a copy only when it is not contiguous), checked to be a
    float32 tensor on the CPU or on a GPU ember's CUDA kernels can use: another dtype or
    device is refused with an error naming ``fn`` and ``name``."""
    if t.device.type != "cpu":
        if t.device.type != "cuda":
            raise NotImplementedError(f"{fn}: {name} is on {t.device}; ember.torch runs CPU and "
                                      f"CUDA tensors")
        if not backend.cuda_built():
            raise ValueError(f"{fn}: {name} is a CUDA tensor but {backend.NOT_BUILT_WITH_CUDA}; "
                             f"or keep the model on the CPU")
    if t.dtype != torch.float32:
        raise TypeError(f"{fn}: {name} must be float32, got {t.dtype} (ember's kernels are "
                        f"float32; call .float() on the model and its inputs)")
    return t.detach().contiguous()


def as_array(t: torch.Tensor, fn: str, name: str):
    """What the kernels take for the tensor ``t`` (see :func:`float32_tensor`): a C-contiguous
    float32 NumPy view of a CPU tensor; a CUDA tensor itself, detached and contiguous (ember.ops
    views it through DLPack)."""
    return _view(float32_tensor(t, fn, name))


def _view(t: torch.Tensor):
    """A checked, detached tensor as the kernels take it: a NumPy view on the CPU, itself on
    the GPU."""
    return t if t.is_cuda else t.numpy()


def kernels_for(t: torch.Tensor, fn: str, name: str):
    """The kernel namespace for ``t``'s device: :data:`ember.ops.cpu_kernels` (NumPy views in
    and out) for a CPU tensor; for a CUDA tensor ``ember.ops.kernels(t, ...)``, which takes and
    returns CUDA tensors and runs on torch's current stream."""
    return ops.kernels(t, fn, name) if t.is_cuda else _K


def _wrap(r):
    """A kernel's result as a tensor: NumPy arrays through ``torch.from_numpy`` (no copy);
    the CUDA namespace's results are tensors already."""
    return torch.from_numpy(r) if type(r) is np.ndarray else r


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
        xt, wt = float32_tensor(x, fn, "input"), float32_tensor(weight, fn, "weight")
        ba = None if bias is None else as_array(bias, fn, "bias")
        k = kernels_for(xt, fn, "input")
        xa, wa = _view(xt), _view(wt)
        need = any(ctx.needs_input_grad[:3])
        save_z = need and activation != "identity" and not _from_output_ok(activation, slope)
        r = k.gemm(xa, wa, ba, None, None, False, True, activation, slope, 1.0, 0.0, save_z,
                   "fp32")
        if save_z:
            y, z = _wrap(r[0]), _wrap(r[1])
        else:
            y = _wrap(r)
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
        fn = "ember.torch.linear (backward)"
        g = as_array(grad_out, fn, "grad_output")
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        k = kernels_for(x, fn, "input")
        # (x, w and z were checked in forward: views, no checks again)
        gi, gw, gb = k.linear_backward(
            g, _view(x.detach()), _view(w.detach()), None if z is None else _view(z.detach()),
            ctx.activation,
            ctx.slope, need_x, ctx.has_bias and need_b, False, None, None, None, None, "fp32")
        return (_wrap(gi) if need_x else None,
                _wrap(gw) if need_w else None,
                _wrap(gb) if gb is not None else None, None, None)


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
        h = float32_tensor(x, fn, "input")
        k = kernels_for(h, fn, "input")
        need_any = any(ctx.needs_input_grad)
        ws, arrays, biases, at = [], [], [], 0
        for _, _, has_bias in layers:
            ws.append(params[at])
            arrays.append(views[at])
            biases.append(views[at + 1] if has_bias else None)
            at += 2 if has_bias else 1
        inputs, preacts = [], []
        cur = _view(h)
        for (act, slope, _), wa, ba in zip(layers, arrays, biases):
            save_z = need_any and act != "identity" and not _from_output_ok(act, slope)
            r = k.gemm(cur, wa, ba, None, None, False, True, act, slope, 1.0, 0.0, save_z,
                       "fp32")
            inputs.append(cur)
            y, z = (r[0], r[1]) if save_z else (r, r if act != "identity" else None)
            preacts.append(z)
            cur = y
        out = _wrap(cur)
        if need_any:
            ctx.layers, ctx.arrays, ctx.inputs, ctx.preacts = layers, arrays, inputs, preacts
            # the input and weights themselves: torch catches an in-place change before backward
            ctx.save_for_backward(x if h.data_ptr() == x.data_ptr() else h, *ws)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x = ctx.saved_tensors[0]  # (raises if the input or a weight was changed in place since)
        fn = "ember.torch.Sequential (backward)"
        g = as_array(grad_out, fn, "grad_output")
        k = kernels_for(x, fn, "input")
        needs = ctx.needs_input_grad
        grads, at = [], 3
        flags = []
        for _, _, has_bias in ctx.layers:
            flags.append((needs[at], has_bias and needs[at + 1] if has_bias else False))
            at += 2 if has_bias else 1
        for i in range(len(ctx.layers) - 1, -1, -1):
            act, slope, has_bias = ctx.layers[i]
            need_gi = i > 0 or needs[0]
            gi, gw, gb = k.linear_backward(
                g, ctx.inputs[i], ctx.arrays[i], ctx.preacts[i], act, slope, need_gi,
                has_bias and flags[i][1], False, None, None, None, None, "fp32")
            part = [_wrap(gw) if flags[i][0] else None]
            if has_bias:
                part.append(_wrap(gb) if gb is not None else None)
            grads[:0] = part
            g = gi
        return (_wrap(g) if needs[0] else None, None, None, *grads)


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
        labels = target.detach()  # ops widens integer labels to int64
        on_gpu = logits.is_cuda
        if not on_gpu:
            labels = labels.numpy()
        need = ctx.needs_input_grad[0]
        ctx.reduction = reduction
        if reduction == "none":
            rows = (torch.empty(la.shape[0], dtype=torch.float32, device=logits.device)
                    if on_gpu else np.empty(la.shape[0], np.float32))
            _, grad = ops.softmax_cross_entropy(la, labels, weight=wa,
                                                label_smoothing=label_smoothing, reduction="sum",
                                                compute_grad=need, row_loss=rows)
            out = _wrap(rows)
        else:
            loss, grad = ops.softmax_cross_entropy(la, labels, weight=wa,
                                                   label_smoothing=label_smoothing,
                                                   reduction=reduction, compute_grad=need)
            out = (torch.tensor(loss, dtype=torch.float32, device=logits.device) if on_gpu
                   else torch.from_numpy(np.array(loss, np.float32)))  # (~3 us less)
        if need:
            ctx.save_for_backward(_wrap(grad))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        if ctx.reduction == "none":
            grad = grad * grad_out.to(grad.dtype).reshape(-1, 1)
        elif grad.is_cuda or grad_out.item() != 1.0:  # (no .item() on the GPU: a sync)
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
    if target.device != input.device:
        raise ValueError(f"{fn}: target is on {target.device} but input is on {input.device}")
    return CrossEntropyFunction.apply(input, target, weight, float(label_smoothing), reduction)

"""``Linear``: a ``torch.nn.Linear`` whose forward and backward are ember's fused kernels, with an
activation fused into its GEMM; ``convert``: puts it in place of a model's ``nn.Linear`` (and the
activation after it)."""
from __future__ import annotations

import torch
from torch import nn

from ember.torch.functional import ACTIVATIONS, as_array, linear, mlp

__all__ = ["Linear", "Sequential", "convert", "activation_of"]


class Linear(nn.Linear):
    """``act(x @ weight.T + bias)`` in one ember kernel (and its backward in one more).

    A ``torch.nn.Linear`` (the same ``weight`` (out, in) and ``bias`` Parameters, initialisation
    and state-dict names) with ``activation`` one of ``"identity"``, ``"relu"``, ``"gelu"``
    (exact), ``"gelu_tanh"``, ``"tanh"``, ``"sigmoid"``, ``"silu"``, ``"leaky_relu"`` (with
    ``negative_slope``) fused into its epilogue. Float32 tensors, on the CPU or (ember built
    with CUDA, CuPy installed) a GPU.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation: str = "identity", negative_slope: float = 0.01, device=None,
                 dtype=None):
        if activation not in ACTIVATIONS:
            raise ValueError(f"ember.torch.Linear: activation must be one of {ACTIVATIONS}, got "
                             f"{activation!r}")
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.activation = activation
        self.negative_slope = float(negative_slope)

    def forward(self, input):
        return linear(input, self.weight, self.bias, self.activation, self.negative_slope)

    def extra_repr(self) -> str:
        act = self.activation
        if act == "leaky_relu":
            act += f", negative_slope={self.negative_slope}"
        return f"{super().extra_repr()}, activation={act}"


class Sequential(nn.Sequential):
    """An ``nn.Sequential`` that :func:`convert` made: when its modules are ember
    :class:`Linear` layers (and the ``nn.Identity`` left where their activations were), with
    no hook on any of them, its forward is one autograd node over the whole stack
    (:func:`ember.torch.functional.mlp`: the same kernels as layer by layer, the same results,
    less Python); otherwise it runs as ``nn.Sequential`` does. The same modules, names and
    state dict as the ``nn.Sequential`` it was."""

    def _stack(self):
        """``(layers, params)`` for the fused forward, or None when it does not apply: a
        module that is not an ember Linear or ``nn.Identity``, widths that do not chain, or a
        forward or backward hook (module or global) that running layer by layer would call."""
        mod = torch.nn.modules.module
        if mod._global_forward_hooks or mod._global_forward_pre_hooks or \
                mod._global_backward_hooks or mod._global_backward_pre_hooks:
            return None
        layers, params, width = [], [], None
        for m in self._modules.values():
            if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or \
                    m._backward_pre_hooks:
                return None
            if type(m) is nn.Identity:
                continue
            if type(m) is not Linear:
                return None
            # (the dicts themselves: Module.__getattr__ is slow, and this runs every forward)
            w, b, attrs = m._parameters.get("weight"), m._parameters.get("bias"), m.__dict__
            if w is None or w.dim() != 2 or (width is not None and w.shape[1] != width):
                return None
            layers.append((attrs["activation"], attrs["negative_slope"], b is not None))
            params.append(w)
            if b is not None:
                params.append(b)
            width = w.shape[0]
        return (tuple(layers), params) if layers else None

    def _views(self, params) -> list:
        """NumPy views of the weights and biases, kept while each is the same tensor on the
        same memory (an optimizer updates them in place)."""
        cache = self.__dict__.setdefault("_ember_views", {})
        out = []
        for t in params:
            hit = cache.get(id(t))
            if hit is None or hit[0] is not t or hit[1] != t.data_ptr():
                hit = cache[id(t)] = (t, t.data_ptr(),
                                      as_array(t, "ember.torch.Sequential", "weight"))
            out.append(hit[2])
        return out

    def forward(self, input):
        stack = self._stack()
        if stack is None or input.dim() < 1 or input.shape[-1] != stack[1][0].shape[1]:
            return super().forward(input)  # (torch's own error for a wrong width)
        return mlp(input, stack[0], stack[1], self._views(stack[1]))

    def __getstate__(self):  # (the views are not pickled: torch.save / deepcopy make new ones)
        state = dict(super().__getstate__())
        state.pop("_ember_views", None)
        return state


def activation_of(module: nn.Module):
    """``(name, negative_slope)`` of a torch activation module ember fuses, else None."""
    if type(module) is nn.ReLU:
        return "relu", 0.01
    if type(module) is nn.LeakyReLU:
        return "leaky_relu", float(module.negative_slope)
    if type(module) is nn.GELU:
        return ("gelu_tanh" if module.approximate == "tanh" else "gelu"), 0.01
    simple = {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu"}
    return (simple[type(module)], 0.01) if type(module) in simple else None


def _replacement(old: nn.Linear, act) -> Linear:
    """An ember Linear holding ``old``'s own Parameters (an optimizer made before still steps
    them), with the activation ``act`` fused."""
    activation, slope = act if act is not None else ("identity", 0.01)
    new = Linear(old.in_features, old.out_features, old.bias is not None, activation, slope,
                 device="meta")
    new.weight = old.weight
    new.bias = old.bias
    new.train(old.training)
    return new


def _convert_sequential(seq: nn.Sequential) -> None:
    names = list(seq._modules)
    i = 0
    while i < len(names):
        mod = seq._modules[names[i]]
        if type(mod) is nn.Linear:
            nxt = seq._modules[names[i + 1]] if i + 1 < len(names) else None
            act = activation_of(nxt) if nxt is not None else None
            seq._modules[names[i]] = _replacement(mod, act)
            if act is not None:
                seq._modules[names[i + 1]] = nn.Identity()  # keeps indices and parameter names
                i += 1
        i += 1


def convert(module: nn.Module) -> nn.Module:
    """Put ember's fused layers into ``module`` in place and return it.

    In every ``nn.Sequential`` of ``module`` (itself included), each ``nn.Linear`` becomes an
    :class:`Linear` holding the same Parameters; an ``nn.ReLU`` / ``GELU`` / ``Tanh`` /
    ``Sigmoid`` / ``SiLU`` / ``LeakyReLU`` right after it is fused into it and replaced by
    ``nn.Identity()``, so module indices and state-dict names do not change (state dicts load
    both ways). An ``nn.Linear`` held by any other module is converted without a fused
    activation. ``module`` being a plain ``nn.Linear``, the converted layer is returned.
    """
    if type(module) is nn.Linear:
        return _replacement(module, None)
    for sub in list(module.modules()):
        if isinstance(sub, nn.Sequential):
            _convert_sequential(sub)
            if type(sub) is nn.Sequential:  # (a subclass keeps its own forward)
                sub.__class__ = Sequential
        else:  # a Linear attribute of another module: converted, nothing fused
            for name, child in list(sub._modules.items()):
                if type(child) is nn.Linear:
                    sub._modules[name] = _replacement(child, None)
    return module

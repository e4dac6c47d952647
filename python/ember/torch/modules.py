"""``Linear``: a ``torch.nn.Linear`` whose forward and backward are ember's fused kernels, with an
activation fused into its GEMM; ``convert``: puts it in place of a model's ``nn.Linear`` (and the
activation after it)."""
from __future__ import annotations

from torch import nn

from ember.torch.functional import ACTIVATIONS, linear

__all__ = ["Linear", "convert", "activation_of"]


class Linear(nn.Linear):
    """``act(x @ weight.T + bias)`` in one ember kernel (and its backward in one more).

    A ``torch.nn.Linear`` (the same ``weight`` (out, in) and ``bias`` Parameters, initialisation
    and state-dict names) with ``activation`` one of ``"identity"``, ``"relu"``, ``"gelu"``
    (exact), ``"gelu_tanh"``, ``"tanh"``, ``"sigmoid"``, ``"silu"``, ``"leaky_relu"`` (with
    ``negative_slope``) fused into its epilogue. Float32 CPU tensors only.
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
        else:  # a Linear attribute of another module: converted, nothing fused
            for name, child in list(sub._modules.items()):
                if type(child) is nn.Linear:
                    sub._modules[name] = _replacement(child, None)
    return module

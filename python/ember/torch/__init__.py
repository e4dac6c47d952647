"""ember's fused kernels from PyTorch: ``import ember.torch`` (``import ember`` never imports
torch).

- :class:`Linear` -- ``torch.nn.Linear`` with an activation fused, forward and backward on
  ember's kernels; :func:`convert` puts it into an existing model in place.
- :func:`cross_entropy` -- ``torch.nn.functional.cross_entropy`` in one ember pass.
- :mod:`ember.torch.optim` -- ``SGD``, ``Adam``, ``AdamW``: one fused ember call per step,
  torch-compatible ``state_dict()``.
- :class:`Sequential` -- what :func:`convert` makes of an ``nn.Sequential``: a stack of
  ember Linear layers runs forward and backward as one autograd node.
- :func:`linear` -- the functional form of :class:`Linear`.

Float32 tensors on the CPU; CUDA tensors run on ember's CUDA kernels (ember built with CUDA,
CuPy installed) on torch's current stream: that path is written and compiled but has not run on a
GPU yet.
"""
from __future__ import annotations

from ember.torch import optim
from ember.torch.functional import ACTIVATIONS, cross_entropy, linear
from ember.torch.modules import Linear, Sequential, convert

__all__ = ["Linear", "Sequential", "convert", "linear", "cross_entropy", "optim", "ACTIVATIONS"]

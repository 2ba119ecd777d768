"""Faster float32 linear layers for inference on CPU: oneDNN's prepacked weights.

PyTorch runs a float32 ``nn.Linear`` on CPU through MKL's GEMM, which reads a weight matrix at a fraction of the
memory bandwidth when few rows multiply it, as in decoding (measured on a 2-core AMD EPYC: a 49152 x 576 output
layer at 8 rows takes 29 ms through MKL, 11 ms through oneDNN with the weight packed once). oneDNN's packed linear is
what torch.compile's CPU backend and Intel's extension use; PyTorch ships it as ``torch.ops.mkldnn``. The results
are the same up to float rounding (another summation order). Training never uses this: packed weights have no
gradient.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

ROWS_HINT = 32  # the row count oneDNN lays the packed weights out for; any count runs


class PackedLinear(torch.nn.Module):
    """An ``nn.Linear`` for inference whose weight oneDNN packed once."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), ROWS_HINT)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], self.out_features)


def pack_linear_layers(model: torch.nn.Module) -> int:
    """Replace the float32 ``nn.Linear`` layers of an inference model on CPU by packed ones, once a packed layer
    has been seen to agree with its original here; returns how many were replaced (0 where oneDNN is missing)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return 0
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu"
    ]
    if not targets:
        return 0
    with torch.inference_mode():
        probe, linear = torch.randn(3, targets[0][2].in_features), targets[0][2]
        if not torch.allclose(PackedLinear(linear)(probe), linear(probe), rtol=1e-4, atol=1e-4):
            log.warning("oneDNN's packed linear disagrees with nn.Linear on this machine: not used")
            return 0
        for parent, name, child in targets:
            setattr(parent, name, PackedLinear(child))
    return len(targets)

"""Faster linear layers for inference on CPU: oneDNN's prepacked weights, float32 or bfloat16.

PyTorch runs a float32 ``nn.Linear`` on CPU through MKL's GEMM, which reads a weight matrix at a fraction of the
memory bandwidth when few rows multiply it, as in decoding (measured on a 2-core AMD EPYC: a 49152 x 576 output
layer at 8 rows takes 29 ms through MKL, 11 ms through oneDNN with the weight packed once). oneDNN's packed linear is
what torch.compile's CPU backend and Intel's extension use; PyTorch ships it as ``torch.ops.mkldnn``. The results
are the same up to float rounding (another summation order). A row comes out the same whatever other rows share
the call, in either dtype (tests/test_models.py), which MKL's float32 GEMM does not promise. Training never
uses this: packed weights have no gradient.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

ROWS_HINT = 32  # the row count oneDNN lays the packed weights out for; any count runs
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}  # against nn.Linear: another summation order, rounded


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
    """Replace the float32 or bfloat16 ``nn.Linear`` layers of an inference model on CPU by packed ones, once a
    packed layer has been seen to agree with its original here; returns how many were replaced (0 where oneDNN is
    missing)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return 0
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear and child.weight.dtype in TOLERANCE and child.weight.device.type == "cpu"
    ]
    if not targets:
        return 0
    with torch.inference_mode():
        linear = targets[0][2]
        probe, tolerance = torch.randn(3, linear.in_features, dtype=linear.weight.dtype), TOLERANCE[linear.weight.dtype]
        try:
            agrees = torch.allclose(PackedLinear(linear)(probe), linear(probe), rtol=tolerance, atol=tolerance)
            problem = "disagrees with nn.Linear"
        except RuntimeError as exc:  # a dtype this CPU's oneDNN build cannot pack
            agrees, problem = False, f"fails ({str(exc).splitlines()[0]})"
        if not agrees:
            log.warning("oneDNN's packed %s linear %s on this machine: not used", linear.weight.dtype, problem)
            return 0
        for parent, name, child in targets:
            setattr(parent, name, PackedLinear(child))
    return len(targets)

"""Weight-only int8 for CPU decoding: every `nn.Linear` weight stored as int8 with one bfloat16 scale per output row.

Decoding at batch 1 is one matrix-vector product per weight matrix, bound by how fast the kernel streams the weights.
On an AVX2 CPU without native bf16, PyTorch's bf16 matrix-vector kernel reaches ~15-20 GB/s; its int8 weight-only
kernel (`aten._weight_int8pack_mm`, the one gpt-fast and torchao use on CPU) reads half the bytes and is ~2.3x
faster per matrix here. torchao 0.18's `Int8WeightOnlyConfig` was measured ~9x *slower* than bf16 in eager mode on
this CPU (it dequantises the whole weight per call unless compiled), hence this thin wrapper around the aten kernel.

Symmetric per-row quantisation (scale = max |w| / 127) of every linear layer of both stacks and the LM head; the
conv patch embedding, the token tables and the norms stay in their dtype. The result is for inference in memory:
saving it is refused (convert the original weights instead).

    from hovle.quantization import quantize_linear_int8
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True, dtype=torch.bfloat16)
    quantize_linear_int8(model)
"""

from __future__ import annotations

import torch
from torch import nn


class Int8WeightOnlyLinear(nn.Module):
    """`y = x @ (q * scale).T + b` with `q` int8 (out, in) and `scale` (out,), computed by one fused aten kernel."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach()
        if weight.device.type != "cpu":
            raise ValueError(f"int8 weight-only quantisation is a CPU path; the weight is on {weight.device}")
        rows = weight.float()
        # The kernel takes the scales in the activation dtype: round them first, then quantise against the rounded
        # values so that every weight stays within half a step of its grid.
        scale = (rows.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0).to(weight.dtype)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        quantized = torch.round(rows / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight_int8", quantized)
        self.register_buffer("scale", scale)
        self.bias = linear.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        flat = hidden.reshape(-1, self.in_features).to(self.scale.dtype)
        out = torch.ops.aten._weight_int8pack_mm(flat.contiguous(), self.weight_int8, self.scale)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*hidden.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _refuse_to_save(*args, **kwargs):
    raise NotImplementedError(
        "This model holds int8 weight-only layers (quantize_linear_int8), which are an in-memory inference format: "
        "save the original bf16/fp32 model instead"
    )


@torch.no_grad()
def quantize_linear_int8(model: nn.Module) -> nn.Module:
    """Replace every `nn.Linear` of `model` (in place) by an `Int8WeightOnlyLinear`; returns the model."""
    parameter = next(model.parameters())
    if parameter.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"int8 weight-only quantisation needs a float model, got {parameter.dtype}")
    targets = [(name, module) for name, module in model.named_modules() if type(module) is nn.Linear]
    if not targets:
        raise ValueError("the model has no nn.Linear layer to quantise")
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, Int8WeightOnlyLinear(linear))
    if hasattr(model, "save_pretrained"):
        model.save_pretrained = _refuse_to_save
    return model

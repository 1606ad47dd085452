"""Weight-only int8 (`hovle.quantization`): the kernel wiring, the quantisation error bound, the whole model."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import build_model, image_prompt

from hovle.quantization import Int8WeightOnlyLinear, quantize_linear_int8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_equals_dequantised_matmul(dtype, bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40, bias=bias).to(dtype)
    layer = Int8WeightOnlyLinear(linear)
    # Round to nearest: every weight within half a step of its row's grid.
    dequantised = layer.weight_int8.float() * layer.scale.float()[:, None]
    step = layer.scale.float()[:, None]
    assert ((linear.weight.float() - dequantised).abs() <= step / 2 * 1.01 + 1e-6).all()
    assert layer.weight_int8.abs().max() == 127  # the row maximum lands on the grid's end
    hidden = torch.randn(2, 3, 96, dtype=dtype)
    expected = F.linear(hidden.float(), dequantised, None if linear.bias is None else linear.bias.float())
    got = layer(hidden)
    assert got.shape == (2, 3, 40) and got.dtype == dtype
    tolerance = 1e-4 if dtype == torch.float32 else 3e-2 * expected.abs().max().item()
    torch.testing.assert_close(got.float(), expected, atol=tolerance, rtol=0)


def test_quantized_model_equals_its_dequantised_float_twin_and_generates():
    model = build_model("pre", "sdpa")
    ids = torch.tensor([image_prompt([5, 6], [1], [7, 8])])
    torch.manual_seed(1)
    pixels = torch.randn(1, 3, 56, 56)
    quantized = quantize_linear_int8(copy.deepcopy(model))
    assert not [m for m in quantized.modules() if type(m) is torch.nn.Linear], "every nn.Linear is replaced"
    assert isinstance(quantized.lm_head, Int8WeightOnlyLinear)
    # Independent reference: the float model whose weights are set to the dequantised int8 grid, run by nn.Linear.
    twin = copy.deepcopy(model)
    layers = dict(quantized.named_modules())
    with torch.no_grad():
        for name, linear in twin.named_modules():
            if type(linear) is torch.nn.Linear:
                layer = layers[name]
                linear.weight.copy_(layer.weight_int8.float() * layer.scale.float()[:, None])
    with torch.inference_mode():
        reference = model(input_ids=ids, pixel_values=pixels).logits
        expected = twin(input_ids=ids, pixel_values=pixels).logits
        logits = quantized(input_ids=ids, pixel_values=pixels).logits
        tokens = quantized.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    # Approximate by construction: the int8 grid moves the logits (this tiny model's large random weights amplify it).
    assert (logits - reference).abs().max() > 0
    assert tokens.shape == (1, ids.shape[1] + 4)


def test_quantized_model_refuses_to_save(tmp_path):
    model = quantize_linear_int8(build_model("pre", "sdpa"))
    with pytest.raises(NotImplementedError, match="in-memory inference format"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_integer_model_is_refused():
    model = torch.nn.Module()
    model.register_parameter("w", torch.nn.Parameter(torch.zeros(2, dtype=torch.int32), requires_grad=False))
    with pytest.raises(ValueError, match="needs a float model"):
        quantize_linear_int8(model)

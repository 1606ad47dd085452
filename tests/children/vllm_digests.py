"""A function for `LLM.apply_model` (see `vllm_offline.py`), in a module the engine process imports by name."""

import hashlib


def parameter_digests(model) -> dict[str, str]:
    """dtype, shape and sha256 of the bytes of every parameter, by vLLM's name (runs in the engine process)."""
    import torch

    digests = {}
    for name, tensor in model.named_parameters():
        data = tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
        digests[name] = f"{tensor.dtype} {list(tensor.shape)} {hashlib.sha256(data).hexdigest()}"
    return digests

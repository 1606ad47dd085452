"""The package imports and runs without flash-attn or a GPU."""

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import sys
    sys.modules["flash_attn"] = None  # any `import flash_attn` now raises ImportError
    import torch
    assert not torch.cuda.is_available() or True
    import hovle.modeling_hovle  # must not touch flash-attn at import time
    from hovle.testing import tiny_config
    model = hovle.modeling_hovle.HoVLEForConditionalGeneration(tiny_config()).eval()
    ids = torch.tensor([[1, 1020] + [1022] * 4 + [1021, 5]])
    out = model.generate(input_ids=ids, pixel_values=torch.randn(1, 3, 56, 56), max_new_tokens=3, min_new_tokens=3)
    assert out.shape == (1, ids.shape[1] + 3), out.shape
    print("OK", model.config._attn_implementation)
    """
)


def test_runs_on_cpu_without_flash_attn():
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        capture_output=True,
        text=True,
        timeout=300,
        env={"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("OK")


def test_modules_do_not_import_flash_attn_anywhere():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in (root / "hovle").rglob("*.py"):
        assert "import flash_attn" not in path.read_text(), path

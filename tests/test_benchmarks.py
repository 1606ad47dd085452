"""The benchmarks' measurements: what they report is what they say they time."""

import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import decode_cost  # noqa: E402  (the benchmark scripts import their helpers as `common`, from their own folder)


def test_decode_cost_per_token_is_a_decoding_step_whatever_the_prefills_take(monkeypatch):
    """A busy machine makes one call's prefill slower than another's: the per-token figure must still be the time of
    a decoding step (it came out negative when it subtracted a 1-token from an N-token generation's time)."""
    step, prefills = 0.05, iter([0.8, 0.0] * 4)  # the first call's prefill waits, the next one's does not, ...
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    model = LlamaForCausalLM(config).eval()
    forward = model.forward

    def slowed(*args, **kwargs):
        ids = kwargs.get("input_ids")
        time.sleep(next(prefills) if ids is not None and ids.shape[1] > 1 else step)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", slowed)
    seconds = decode_cost.per_token(model, 4, 1, input_ids=torch.tensor([[1, 5, 6, 7]]))
    assert step <= seconds < step + 0.2, seconds


def test_release_load_benchmark_runs_on_a_tiny_release(tmp_path):
    """`benchmarks/release_load.py` end to end on a tiny release (one warm run each), so that it cannot rot."""
    import json
    import subprocess

    from hovle.testing import tiny_config, write_original_checkpoint

    release = write_original_checkpoint(tmp_path / "release", tiny_config("pre"), seed=0)
    script = Path(__file__).parent.parent / "benchmarks" / "release_load.py"
    command = [sys.executable, str(script), str(release), str(tmp_path / "work"), "--cold-repeats", "0"]
    command += ["--warm-repeats", "1", "--json", str(tmp_path / "out.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["cold"] is None and set(report["warm"]["median_seconds"]) == {"release", "converted"}
    assert (tmp_path / "work" / "converted-float32" / "config.json").exists()

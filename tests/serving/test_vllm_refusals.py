"""What vLLM cannot serve exactly is refused before any engine starts, with the reason; the context
length vLLM derives for InternLM2's dynamic rope is corrected. The same checks for a converted folder and a release
as it is."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from vllm_helpers import LAYOUTS, RELEASE_ROPE, build_served_folders


@pytest.fixture(scope="module")
def hd_folders(tmp_path_factory) -> dict[str, Path]:
    return build_served_folders(tmp_path_factory.mktemp("hd"), pixel_shuffle_loc="post")


@pytest.fixture(params=LAYOUTS)
def hd_folder(request, hd_folders) -> Path:
    """HoVLE-HD, converted and as released: the same refusal for both."""
    return hd_folders[request.param]


@pytest.fixture(scope="module")
def dynamic_rope_folder(served_folder) -> Path:
    """The release's rope (dynamic NTK, factor 2), over a context of 4096 positions here."""
    return served_folder


def engine_config(folder: Path, **options):
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=str(folder), dtype="float32", **options).create_engine_config()


def test_hd_folder_is_refused_with_the_reason(hd_folder):
    with pytest.raises(
        Exception, match=r"HoVLE-HD \(embedding_config.pixel_shuffle_loc='post'\) cannot be served"
    ) as err:
        engine_config(hd_folder)
    assert "1024 per tile" in str(err.value) and "256 tokens per tile" in str(err.value)


@pytest.mark.slow
def test_vllm_serve_refuses_hd_before_starting(hd_folder, vllm_env):
    """The CLI stops with the reason before it starts an engine (were it to start, the 300 s limit would fail it)."""
    vllm = Path(sys.executable).parent / "vllm"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = subprocess.run(
        [str(vllm), "serve", str(hd_folder), "--host", "127.0.0.1", "--port", str(port)],
        env=vllm_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode != 0
    assert "HoVLE-HD (embedding_config.pixel_shuffle_loc='post') cannot be served by vLLM" in run.stdout + run.stderr


def test_default_context_is_the_llms_not_the_rope_factors(dynamic_rope_folder):
    from transformers import AutoConfig

    import hovle

    hovle.register_auto_classes()
    text_config = AutoConfig.from_pretrained(dynamic_rope_folder).text_config
    assert text_config.rope_parameters == RELEASE_ROPE  # vLLM alone would serve factor x 4096 positions
    assert engine_config(dynamic_rope_folder).model_config.max_model_len == text_config.max_position_embeddings


def test_longer_context_than_the_llms_is_refused(dynamic_rope_folder):
    with pytest.raises(
        Exception, match=r"max_model_len=8192 is longer than HoVLE's context of 4096 tokens.*--max-model-len 4096"
    ):
        engine_config(dynamic_rope_folder, max_model_len=8192)
    assert engine_config(dynamic_rope_folder, max_model_len=1024).model_config.max_model_len == 1024

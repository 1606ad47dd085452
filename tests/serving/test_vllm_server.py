"""`vllm serve FOLDER` (the CLI, with the plugin found through its entry point) answers `/v1/chat/completions` through
the `openai` client: a base64 image part, streaming; the reply equals the transformers pipeline's greedy reply on the
converted folder, whether the server serves that folder or the release it was converted from (as it is). The server
listens on 127.0.0.1 only and is stopped by the test."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

import hovle

pytestmark = pytest.mark.slow
QUESTION = "What is in this picture ? Answer briefly ."
MAX_NEW_TOKENS = 12


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(server: subprocess.Popen, port: int, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"vllm serve exited with {server.returncode}:\n{log.read_text()[-6000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(2)
    raise AssertionError(f"vllm serve was not healthy after {timeout} s:\n{log.read_text()[-6000:]}")


def stop_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass  # already gone


@pytest.fixture(scope="module")
def server(served_folder, vllm_env, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    command = [
        str(Path(sys.executable).parent / "vllm"),
        "serve",
        str(served_folder),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "4096",
        "--gpu-memory-utilization",
        "0.15",
        # No --enforce-eager: the server compiles both stacks as `vllm serve` does by default (the offline tests run
        # eager), so the reply checks the compiled path too.
    ]
    with log.open("w") as output:
        process = subprocess.Popen(
            command, env=vllm_env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until_healthy(process, port, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        # The server's own process group: its engine and worker processes stop with it.
        stop_group(process, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop_group(process, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def picture(image_files) -> Image.Image:
    return Image.open(image_files["wide"]).convert("RGB")


def transformers_reply(folder: Path, picture: Image.Image) -> str:
    from transformers import pipeline

    hovle.register_auto_classes()
    pipe = pipeline("image-text-to-text", model=str(folder), dtype="float32")
    messages = [{"role": "user", "content": [{"type": "image", "image": picture}, {"type": "text", "text": QUESTION}]}]
    out = pipe(text=messages, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, return_full_text=False)
    return out[0]["generated_text"]


def test_chat_completions_stream_equals_the_pipeline(server, served_folder, converted_folder, picture):
    from openai import OpenAI

    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    client = OpenAI(base_url=server, api_key="unused")
    stream = client.chat.completions.create(
        model=str(served_folder),
        messages=[
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": data_url}}, {"type": "text", "text": QUESTION}],
            }
        ],
        temperature=0.0,
        max_tokens=MAX_NEW_TOKENS,
        stream=True,
    )
    chunks = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len([c for c in chunks if c]) > 1, "the reply came in one piece: not streamed"
    reply = "".join(chunks)
    assert reply.strip()
    assert reply == transformers_reply(converted_folder, picture)


def test_models_endpoint_names_the_folder(server, served_folder):
    from openai import OpenAI

    assert [m.id for m in OpenAI(base_url=server, api_key="unused").models.list()] == [str(served_folder)]

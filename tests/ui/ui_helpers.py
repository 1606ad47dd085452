"""Helpers of the demo and evaluation tests (plain code; the fixtures are in `conftest.py`): the pipeline's greedy
reply (the expected answer) and the system's Chromium."""

from __future__ import annotations

import functools
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest


@functools.cache
def image_text_pipeline(folder: str):
    from transformers import pipeline

    from hovle import register_auto_classes

    register_auto_classes()
    return pipeline("image-text-to-text", model=folder)


def pipeline_greedy_reply(folder: Path, images: list, question: str, max_new_tokens: int) -> str:
    """The reply of `pipeline("image-text-to-text")` for one user turn, greedy: the independent expectation."""
    pipe = image_text_pipeline(str(folder))
    content = [{"type": "image", "image": image} for image in images] + [{"type": "text", "text": question}]
    generate_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False}
    out = pipe(text=[{"role": "user", "content": content}], generate_kwargs=generate_kwargs, return_full_text=False)
    return out[0]["generated_text"]


def find_browser() -> tuple[str, str]:
    """(chromium binary, chromedriver) installed by the system (Debian: chromium, chromium-driver), or a skip."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    return browser, driver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 300) -> bytes:
    """The body of `url` once the server answers it; fails with the server's log if it exits or never answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read()
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the server at {url} did not answer:\n{log.read_text()[-3000:]}")
        time.sleep(1)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

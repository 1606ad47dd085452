"""`hovle demo` in a real browser: the server is started on 127.0.0.1 as a user starts it (no --model: the embedded
demo model), headless Chromium loads the page, which says what the model is, uploads the sample image
(`scripts/sample.png`), asks `hovle.shapes_task.SAMPLE_QUESTION`, and the streamed reply must be the sample's correct
answer (the generator's label) and equal the greedy reply of the same model through `pipeline("image-text-to-text")`;
an unreadable file must show an error in the page. A screenshot is kept in the test's temporary folder (its path is
printed)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from ui_helpers import find_browser, free_port, pipeline_greedy_reply, stop, wait_for_http

import hovle
from hovle.shapes_task import SAMPLE_KIND, SAMPLE_QUESTION, is_correct, sample_image

pytest.importorskip("gradio")
pytest.importorskip("selenium")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow
MAX_NEW_TOKENS = 16
QUESTION = SAMPLE_QUESTION
SAMPLE_PNG = Path(__file__).resolve().parents[2] / "scripts" / "sample.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`hovle demo` in a child process; yields its URL once the page answers."""
    folder = tmp_path_factory.mktemp("demo-server")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(folder)}
    command = [sys.executable, "-m", "hovle.cli", "demo", "--device", "cpu", "--port", str(port)]
    command += ["--max-new-tokens", str(MAX_NEW_TOKENS)]
    log = folder / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_http(url, process, log)
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="module")
def browser():
    binary, chromedriver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def expected_reply(tmp_path_factory):
    """The embedded demo model's greedy reply about the sample, through the pipeline (the release folder as it is)."""
    return pipeline_greedy_reply(hovle.embedded_release(), [Image.open(SAMPLE_PNG)], QUESTION, MAX_NEW_TOKENS)


def element_text(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def ask(driver, image_path, question: str) -> str:
    """Upload an image, ask, and wait until the page says the reply is done (or shows an error); the status text."""
    driver.find_element(By.CSS_SELECTOR, "#hovle-images input[type=file]").send_keys(str(image_path))
    # The file list shows the name split in two ("photo", ".png").
    WebDriverWait(driver, 60).until(lambda d: image_path.stem in element_text(d, "#hovle-images"))
    box = driver.find_element(By.CSS_SELECTOR, "#hovle-question textarea")
    box.clear()
    box.send_keys(question)
    before = element_text(driver, "#hovle-status")  # a later question must not be judged by the last one's status
    driver.find_element(By.CSS_SELECTOR, "#hovle-send").click()
    finished = WebDriverWait(driver, 180).until(
        lambda d: (text := element_text(d, "#hovle-status")) != before and text.startswith(("Done", "Error")) and text
    )
    return finished


def test_page_answers_the_sample_correctly_like_the_pipeline_and_shows_errors(
    server, browser, broken_image, expected_reply, tmp_path
):
    browser.get(server)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#hovle-question textarea"))
    label = element_text(browser, "#hovle-demo-model")
    assert "embedded demo model" in label and "trained on synthetic shapes" in label and "not HoVLE" in label, label
    assert "UNTRAINED" not in browser.page_source

    status = ask(browser, SAMPLE_PNG, QUESTION)
    assert status.startswith("Done"), status
    reply = browser.find_element(By.CSS_SELECTOR, "#hovle-reply textarea").get_attribute("value")
    answer = sample_image().answer(SAMPLE_KIND)
    assert is_correct(reply, answer), (reply, answer)
    assert reply == expected_reply
    chat = element_text(browser, "#hovle-chatbot")
    assert QUESTION in chat
    assert browser.find_elements(By.CSS_SELECTOR, "#hovle-chatbot img"), "the uploaded image is shown in the chat"
    screenshot = tmp_path / "hovle-demo.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
    print(f"screenshot: {screenshot}")

    status = ask(browser, broken_image, "And this one?")
    assert status.startswith("Error") and "broken.png is not an image" in status, status
    assert element_text(browser, "#hovle-chatbot").count(QUESTION) == 1, "the failed turn is not added"

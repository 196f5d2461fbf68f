"""The page in real headless Chromium: start a world, hold a key, the camera moves.

Two runs from the same world seed: one without keys, one holding W. Frames generated
before the key reached the server are the same in both (same seed, same noise); the first
frame generated with the key differs and its camera is further along. Writes a screenshot
of the page (to ``$AAPT_SERVE_SCREENSHOT`` as well, when set, e.g. docs/serve_page.png).

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and selenium.
"""

import os
import shutil
import time

import numpy as np
import pytest

from aapt_jax.serve.app import BackgroundServer, ServerOptions
from aapt_jax.serve.engine import cached_engine
from configs import get as named_config

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them with apt-get)",
                allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


@pytest.fixture(scope="module")
def page():
    engine = cached_engine(named_config("tiny_world"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,860"):
        options.add_argument(arg)
    with BackgroundServer(engine, ServerOptions(port=0, capacity=2)) as url:
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
        try:
            driver.get(url + "/")
            yield driver
        finally:
            driver.quit()


def _wait(driver, script, timeout=60.0):
    t0 = time.monotonic()
    while True:
        value = driver.execute_script("return " + script)
        if value:
            return value
        assert time.monotonic() - t0 < timeout, f"timed out waiting for: {script}"
        time.sleep(0.05)


def _frames(driver):
    return driver.execute_script("return window.aapt.frames.slice()")


def test_page_streams_a_world_and_a_held_key_moves_the_camera(page, tmp_path):
    driver = page
    info = _wait(driver, "window.aapt.info")
    assert info["config"] == "tiny_world"
    assert "Randomly initialised" in driver.find_element(By.ID, "weights-warning").text

    seed = driver.find_element(By.ID, "seed")
    seed.clear()
    seed.send_keys("5")
    driver.find_element(By.ID, "start-world").click()
    _wait(driver, "window.aapt.stream === 1 && window.aapt.frames.length >= 64")
    without_key = {f["index"]: f for f in _frames(driver)}

    driver.find_element(By.ID, "reset").click()
    _wait(driver, "window.aapt.stream === 2 && window.aapt.frames.length >= 8")
    canvas = driver.find_element(By.ID, "screen")
    ActionChains(driver).click(canvas).key_down("w").perform()
    _wait(driver, "window.aapt.frames.some(f => f.ctrl_seq >= 1) && window.aapt.frames.length >= 40")
    ActionChains(driver).key_up("w").perform()
    with_key = _frames(driver)

    before = [f for f in with_key if f["ctrl_seq"] == 0]
    steered = [f for f in with_key if f["ctrl_seq"] >= 1]
    assert len(before) >= 8 and steered
    for f in before:  # same seed, same noise: the same video until the key arrives
        assert f["hash"] == without_key[f["index"]]["hash"], f["index"]
    first = steered[0]
    assert first["index"] in without_key
    assert first["hash"] != without_key[first["index"]]["hash"]
    # The camera walked forward: further from the start than without the key.
    start = before[0]["pose"]
    dist = lambda pose: ((pose[0] - start[0]) ** 2 + (pose[1] - start[1]) ** 2) ** 0.5  # noqa: E731
    last = [f for f in steered if f["index"] in without_key][-1]
    assert dist(last["pose"]) > dist(without_key[last["index"]]["pose"]) + 0.1

    latency = driver.find_element(By.ID, "latency").text
    assert latency.endswith("ms"), latency
    assert driver.execute_script("return window.aapt.errors.length") == 0
    shot = tmp_path / "serve_page.png"
    assert driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("AAPT_SERVE_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["AAPT_SERVE_SCREENSHOT"])


def test_page_starts_from_an_uploaded_picture(page, tmp_path):
    from PIL import Image

    driver = page
    _wait(driver, "window.aapt.info")
    picture = tmp_path / "picture.png"
    gradient = np.linspace(0, 255, 160 * 90 * 3).reshape(90, 160, 3).astype(np.uint8)
    Image.fromarray(gradient).save(picture)
    driver.find_element(By.ID, "image").send_keys(str(picture))
    stream = driver.execute_script("return window.aapt.stream")
    driver.find_element(By.ID, "start-image").click()  # replaces a running stream, if any
    _wait(driver, f"window.aapt.stream > {stream} && window.aapt.source === 'image' && window.aapt.frames.length >= 8")
    assert "image" in driver.find_element(By.ID, "status").text
    assert driver.execute_script("return window.aapt.errors.length") == 0

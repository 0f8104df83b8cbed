"""The prompt studio in a real browser: Voila serves notebook 07 as a web app on localhost, headless Chromium
(Debian's `chromium` + `chromium-driver`, installed by scripts/setup_browser.sh) types a prompt, clicks Generate,
waits for the images, checks they are shown, and saves a screenshot under outputs/screenshots/.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.paths import REPO_ROOT
from helpers.saving import new_run_dir

pytestmark = pytest.mark.browser

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
NOTEBOOK = REPO_ROOT / "notebooks" / "07_prompt_studio.ipynb"
VOILA = Path(sys.executable).with_name("voila")  # the .venv's voila: its kernel has `helpers` installed
#: Screenshots are the point of this test, so they go to the repo's outputs/ (not the test sandbox).
SCREENSHOTS = Path(os.environ.get("SD_SCREENSHOTS_DIR", REPO_ROOT / "outputs" / "screenshots"))
WAIT = 120  # seconds: every wait below is bounded by this
PROMPT = "a blue square above a red circle, browser test"
NOTEBOOK_DONE = "runs so far"  # printed by the notebook's last cell: only then is the app ours to click


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """All descendants of `pid` (Voila starts kernels in their own sessions, so a process group misses them)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def stop_server(proc: subprocess.Popen) -> None:
    kids = children(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # Voila shuts its kernels down on SIGTERM
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for pid in kids:  # whatever survived the shutdown
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def voila_url(tmp_path):
    if not VOILA.exists():
        pytest.fail(f"{VOILA} is missing: voila is in requirements.lock; run `make setup`.")
    port = free_port()
    env = dict(
        os.environ,
        SD_MODEL="offline",  # the offline model, even on a machine with a GPU
        SD_TUTORIAL_OUTPUTS=str(tmp_path / "outputs"),  # the notebook's own Save goes to the sandbox
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        HF_HUB_OFFLINE="1",
    )
    env.setdefault("OMP_NUM_THREADS", "1")  # the tiny model gains nothing from threads; on a busy CPU they spin
    log = (tmp_path / "voila.log").open("wb")
    proc = subprocess.Popen(
        [str(VOILA), str(NOTEBOOK), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1", "--show_tracebacks=True"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Voila exited with {proc.returncode}:\n{(tmp_path / 'voila.log').read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5):
                    break  # listening; the page itself is requested by the browser
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"Voila did not answer on {url} within {WAIT}s")
                time.sleep(0.5)
        yield url
    finally:
        stop_server(proc)
        log.close()
        print("voila log tail:\n", (tmp_path / "voila.log").read_text(errors="replace")[-2000:])


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"chromium not found ({CHROMIUM}, {CHROMEDRIVER}): run `bash scripts/setup_browser.sh` (as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download a browser
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-quic",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",  # fresh profile every run
        "--window-size=1280,2000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


GALLERY_STATE = """
const gallery = document.querySelector('.sd-gallery');
if (!gallery) return null;
const imgs = [...gallery.querySelectorAll('img')];
return {
  n: imgs.length,
  loaded: imgs.filter(i => i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 0).length,
  text: gallery.innerText,
  message: (document.querySelector('.sd-message') || {}).innerText || '',
  progress: (document.querySelector('.sd-progress') || {}).innerText || '',
  generateDisabled: (document.querySelector('button.sd-generate') || {}).disabled,
  rankDisabled: (document.querySelector('button.sd-rank') || {}).disabled,
  saveDisabled: (document.querySelector('button.sd-save') || {}).disabled,
};
"""


def test_studio_in_a_real_browser(voila_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(voila_url)  # Voila runs the whole notebook (its self-checks click the studio too)
    wait = WebDriverWait(browser, WAIT, poll_frequency=0.5)
    # The page shows cells while later ones still run; clicking before the end would race the self-checks.
    wait.until(
        lambda d: NOTEBOOK_DONE in d.execute_script("return document.body.innerText"), "the notebook never finished"
    )
    first = wait.until(lambda d: (s := d.execute_script(GALLERY_STATE)) and s["n"] and s["loaded"] == s["n"] and s)
    assert PROMPT not in first["text"]

    box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".sd-prompt textarea"))
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(PROMPT)
    browser.find_element(By.CSS_SELECTOR, "button.sd-generate").click()

    def new_images_shown(d):
        s = d.execute_script(GALLERY_STATE)
        done = s and s["text"].count(PROMPT) == s["n"] > 0 and s["loaded"] == s["n"] and not s["generateDisabled"]
        return s if done else False

    state = wait.until(new_images_shown, message="the new images never appeared")
    assert state["n"] == first["n"]  # the same number of images, now for our prompt
    assert "Done" in state["message"], state["message"]
    steps = re.search(r"Steps (\d+)/(\d+)", state["progress"])
    assert steps and steps.group(1) == steps.group(2), state["progress"]  # the bar reached its end
    seeds = re.findall(r"seed (\d+)", state["text"])
    assert len(seeds) == state["n"] and len(set(seeds)) == state["n"]  # each image labelled with its own seed

    # Rank with CLIP: the notebook plugged in a CLIP ranker; the gallery comes back sorted, with scores.
    browser.find_element(By.CSS_SELECTOR, "button.sd-rank").click()
    state = wait.until(lambda d: (s := d.execute_script(GALLERY_STATE)) and "Ranked" in s["message"] and s)
    scores = [float(x) for x in re.findall(r"score (-?[\d.]+)", state["text"])]
    assert len(scores) == state["n"] and scores == sorted(scores, reverse=True), state["text"]

    folder = new_run_dir("studio", root=SCREENSHOTS)  # never overwrites an earlier screenshot
    studio = browser.find_element(By.CSS_SELECTOR, ".sd-studio")
    browser.execute_script("arguments[0].scrollIntoView();", studio)
    assert studio.screenshot(str(folder / "studio.png"))

    # Stop, clicked in the browser while a long run goes: the kernel hears it because the run is in a thread.
    steps_box = browser.find_element(By.CSS_SELECTOR, ".sd-steps input")  # a text box: nothing clamps silently
    steps_box.click()
    steps_box.send_keys(Keys.CONTROL, "a")
    steps_box.send_keys("250", Keys.ENTER)
    wait.until(lambda d: steps_box.get_attribute("value").strip() == "250")
    browser.find_element(By.CSS_SELECTOR, "button.sd-generate").click()

    def running(d):  # a step of *this* run (>= 250 in all): the last run's "Steps 10/10" stays until its first step
        s = d.execute_script(GALLERY_STATE)
        step = re.search(r"Steps [1-9]\d*/(\d+)", s["progress"])
        return s if s["generateDisabled"] and step and int(step.group(1)) >= 250 else False

    during = WebDriverWait(browser, WAIT, poll_frequency=0.1).until(
        running, message="the long run never showed progress"
    )
    assert during["rankDisabled"] and during["saveDisabled"], during  # one action at a time
    browser.find_element(By.CSS_SELECTOR, "button.sd-stop").click()
    state = wait.until(lambda d: (s := d.execute_script(GALLERY_STATE)) and not s["generateDisabled"] and s)
    assert "Stopped early" in state["message"], state["message"]
    reached, total = map(int, re.search(r"Steps (\d+)/(\d+)", state["progress"]).groups())
    assert 1 <= reached < total >= 250 and state["text"].count(f"stopped at step {reached}/{total}") == state["n"]
    assert state["loaded"] == state["n"] > 0  # the half-denoised images are shown
    assert browser.save_screenshot(str(folder / "page.png"))
    print("screenshots:", folder, "| stopped at step", reached, "of", total)

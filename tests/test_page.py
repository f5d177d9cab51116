"""The page `charrnn serve` ships, in a real headless Chromium: generate and score through it.

Slow, and skipped without Chromium (Debian: apt-get install chromium chromium-driver) or Selenium.
Set CHARRNN_SCREENSHOTS=DIR to keep the screenshots it takes."""

import os
import shutil
from pathlib import Path

import pytest
from test_serve import home, start_server, stop  # noqa: F401 (home: the trained run)

pytestmark = pytest.mark.slow
webdriver = pytest.importorskip("selenium.webdriver")
if not shutil.which("chromium") or not shutil.which("chromedriver"):
    pytest.skip("no chromium and chromedriver", allow_module_level=True)


@pytest.fixture()
def browser():
    from selenium.webdriver.chrome.options import Options

    options = Options()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,900"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    yield driver
    driver.quit()


def test_generate_and_score_through_the_page(home, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    shots = Path(os.environ.get("CHARRNN_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    process, url = start_server(home)
    try:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: b.find_element(By.CSS_SELECTOR, "#model option").get_attribute("value") == "words")
        prompt = browser.find_element(By.ID, "prompt")
        prompt.send_keys("the cat ")
        length = browser.find_element(By.ID, "max_tokens")
        length.clear()
        length.send_keys("400")
        browser.find_element(By.ID, "go").click()
        wait.until(lambda b: "characters in" in b.find_element(By.ID, "gen-status").text)
        written = browser.find_element(By.ID, "text").text
        assert written.startswith("the cat ") and len(written) >= 400 + len("the cat ")
        browser.save_screenshot(str(shots / "page-generate.png"))

        browser.find_element(By.ID, "tab-score").click()
        browser.find_element(By.ID, "to-score").send_keys("the cat sat on a mat\nthe Zebra ran to it")
        browser.find_element(By.ID, "score-go").click()
        wait.until(lambda b: "bits/char" in b.find_element(By.ID, "score-status").text)
        spans = browser.find_elements(By.CSS_SELECTOR, "#scored span")
        assert len(spans) == len("the cat sat on a mat\nthe Zebra ran to it\n")
        assert {s.get_attribute("class") for s in spans if s.text == "Z"} == {"u"}  # never seen: left out
        assert all(s.get_attribute("class").startswith("s") for s in spans if s.text in "the cat")
        browser.save_screenshot(str(shots / "page-score.png"))
    finally:
        stop(process)

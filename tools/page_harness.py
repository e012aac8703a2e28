"""A page served from this process and driven in headless Chromium: the page tests' and tools/bench_web.py's set-up."""

from __future__ import annotations

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


class PageError(RuntimeError):
    """A page's script threw or its Promise rejected; the message is the page's."""


class BackgroundServer:
    """An ASGI app served by uvicorn on a free local port, in a thread of this process."""

    def __init__(self, app):
        import socket
        import threading
        import time

        import uvicorn

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()


def headless_chromium(downloads: str | None = None, window_size: str | None = None, chromium: str = CHROMIUM,
                      chromedriver: str = CHROMEDRIVER):
    """Chromium through chromedriver, headless, muted, playing without a gesture; downloads into `downloads`
    without asking when given (the folder is `driver.downloads`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    arguments = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--autoplay-policy=no-user-gesture-required", "--mute-audio"]
    if window_size:
        arguments.append(f"--window-size={window_size}")
    for argument in arguments:
        options.add_argument(argument)
    # The page's console, for tests that a page logs no errors (driver.get_log("browser")).
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    if downloads:
        options.add_experimental_option("prefs", {"download.default_directory": downloads,
                                                  "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    if downloads:
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads})
    driver.downloads = downloads
    return driver


def call(driver, expression: str):
    """The value of a JavaScript expression that may be a Promise; a rejection raises PageError with its message."""
    answer = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"Promise.resolve().then(() => {expression})"
        ".then((value) => done({value}), (error) => done({error: String(error && error.message || error)}));")
    if "error" in answer:
        raise PageError(f"{expression}: {answer['error']}")
    return answer.get("value")


def open_page(driver, url: str) -> dict:
    """Open the web export's page at `url` and wait until it can generate; returns what it loaded (kerasMusic.ready)."""
    driver.get(url)
    return call(driver, "kerasMusic.ready")


def reference_generator():
    """export/reference_generator.py, the TF-free generator the page must agree with, loaded as a module."""
    spec = importlib.util.spec_from_file_location("reference_generator",
                                                  os.path.join(REPO, "export", "reference_generator.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

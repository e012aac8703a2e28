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


# ----------------------------------------------------------------------------- live play: a fake MIDI keyboard

# Installed before the page's scripts (Page.addScriptToEvaluateOnNewDocument): navigator.requestMIDIAccess
# grants one input ("fake-in") whose note-on/off bytes the test chooses, and one output ("fake-out") that
# records what the page sends with its timestamps. window.fakeMidi.play(notes) plays [[onset ms, length ms,
# pitch, velocity]] from now; a Promise of when the last note is released.
FAKE_MIDI = r"""
(() => {
  const listeners = new Set();
  const input = {id: 'fake-in', name: 'Fake keyboard', manufacturer: 'tests', type: 'input', state: 'connected',
                 connection: 'open', onmidimessage: null,
                 addEventListener: (type, listener) => type === 'midimessage' && listeners.add(listener),
                 removeEventListener: (type, listener) => listeners.delete(listener)};
  const sent = [];
  const output = {id: 'fake-out', name: 'Fake synth', manufacturer: 'tests', type: 'output', state: 'connected',
                  connection: 'open', send: (data, timestamp) => sent.push({data: Array.from(data),
                                                                             timestamp: timestamp ?? performance.now()})};
  const access = {inputs: new Map(__INPUTS__), outputs: new Map(__OUTPUTS__), sysexEnabled: false,
                  onstatechange: null};
  const emit = (data) => {
    const event = {data: Uint8Array.from(data), timeStamp: performance.now(), receivedTime: performance.now()};
    if (input.onmidimessage) input.onmidimessage(event);
    for (const listener of listeners) listener(event);
  };
  const played = [];
  window.fakeMidi = {
    sent, played, emit,
    play(notes) {
      const started = performance.now();
      let last = 0;
      for (const [onset, length, pitch, velocity = 90] of notes) {
        setTimeout(() => { played.push(['on', pitch, performance.now()]); emit([0x90, pitch, velocity]); }, onset);
        setTimeout(() => { played.push(['off', pitch, performance.now()]); emit([0x80, pitch, 0]); }, onset + length);
        last = Math.max(last, onset + length);
      }
      return new Promise((resolve) => setTimeout(() => resolve(performance.now() - started), last + 5));
    },
  };
  navigator.requestMIDIAccess = __REQUEST__;
})();
"""


def install_fake_midi(driver, kind: str = "keyboard") -> str:
    """Replace Web MIDI in every page `driver` opens from now on: "keyboard" (one input, one output),
    "empty" (access granted, no device), "absent" (no navigator.requestMIDIAccess), "refused" (permission
    refused). Returns the script's identifier (for Page.removeScriptToEvaluateOnNewDocument)."""
    ports = kind == "keyboard"
    request = {"absent": "undefined", "refused": "async () => { throw new DOMException('refused by the test', "
                                                  "'SecurityError'); }"}.get(kind, "async () => access")
    source = (FAKE_MIDI.replace("__INPUTS__", "[['fake-in', input]]" if ports else "[]")
              .replace("__OUTPUTS__", "[['fake-out', output]]" if ports else "[]").replace("__REQUEST__", request))
    if kind == "absent":
        source += "\ndelete Navigator.prototype.requestMIDIAccess; delete navigator.requestMIDIAccess;"
    return driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": source})["identifier"]


# Plays one phrase per turn through the fake keyboard as soon as the page listens, until every phrase has
# had its answer; window.liveRun then holds the page's turns (the driver polls: a session outlasts one
# WebDriver request).
LIVE_TURNS = r"""
((phrases) => {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const live = kerasMusic.live;
  const until = async (test) => { while (!test()) await sleep(5); };
  window.liveRun = {done: false};
  (async () => {
    for (let i = 0; i < phrases.length; i++) {
      await until(() => live.state === 'listening' && live.turns.length === i);
      await fakeMidi.play(phrases[i]);
    }
    await until(() => live.turns.length === phrases.length && live.state === 'listening');
    window.liveRun = {done: true, turns: live.turns, session: live.session, sent: fakeMidi.sent,
                      played: fakeMidi.played};
  })().catch((error) => { window.liveRun = {done: true, error: String(error && error.message || error)}; });
  return true;
})
"""


def random_phrases(count: int, seed: int = 0, beat_ms: float = 500.0):
    """`count` short phrases for the fake keyboard: single notes, chords, overlaps and re-attacks within about
    a beat and a half, as [[onset ms, length ms, pitch, velocity]]."""
    import random

    generator = random.Random(seed)
    phrases = []
    for _ in range(count):
        notes, time = [], 0.0
        for _ in range(generator.randint(1, 5)):
            chord = generator.choice([1, 1, 1, 2, 3])
            length = generator.uniform(0.15, 0.6) * beat_ms
            for pitch in generator.sample(range(55, 80), chord):
                notes.append([round(time), round(length * generator.uniform(0.7, 1.3)), pitch, generator.randint(40, 120)])
            time += generator.uniform(0.2, 0.5) * beat_ms
        phrases.append(notes)
    return phrases


def live_session(driver, phrases, settings: dict, timeout: float | None = None) -> dict:
    """Start live play with `settings`, play `phrases` (one per turn) on the fake keyboard; returns the turns,
    the session (synth log, long tasks, ...), what was sent to the fake output and what the keyboard played."""
    import json
    import time

    call(driver, "kerasMusic.live.ready.then(() => kerasMusic.live.selectOutput('fake-out'))")
    call(driver, f"kerasMusic.live.start({json.dumps(settings)})")
    call(driver, f"{LIVE_TURNS}({json.dumps(phrases)})")
    deadline = time.time() + (timeout or 30 + 15 * len(phrases))
    while not driver.execute_script("return window.liveRun.done"):
        if time.time() > deadline:
            raise PageError(f"live play did not finish {len(phrases)} turns: "
                            f"{driver.execute_script('return [kerasMusic.live.state, kerasMusic.live.turns.length]')}")
        time.sleep(1)
    result = driver.execute_script("return window.liveRun")
    if "error" in result:
        raise PageError(f"live play failed: {result['error']}")
    return result


def exported_site(run_dir: str):
    """(RUN/export/web, its web.json) for the benchmarks, or None after saying how to build it."""
    import sys

    sys.path.insert(0, REPO)
    from keras_music import run as run_lib, storage, web_export

    site = run_lib.path(run_dir, run_lib.EXPORT, run_lib.WEB)
    if not os.path.isfile(os.path.join(site, web_export.SITE_FILE)):
        print(f"{site} holds no web export: run python -m keras_music.export --run-dir {run_dir} --web",
              file=sys.stderr)
        return None
    return site, storage.read_json(os.path.join(site, web_export.SITE_FILE))

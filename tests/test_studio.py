"""The studio: HTTP API (concurrency, restarts, statistics, refusals) and the page in headless Chromium."""

import concurrent.futures
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import usage_error, write_chorales_as_midi
from keras_music import audio
from keras_music.studio import app as studio_app, routes, service
from page_harness import BackgroundServer, headless_chromium


class Server(BackgroundServer):
    """The studio's app served in a thread of the test process."""

    def __init__(self, studio):
        self.studio = studio
        super().__init__(routes.create_app(studio))


def make_studio(run_dir, root, **kwargs):
    return service.Studio([run_dir], str(root / "out"), str(root / "votes.sqlite"), ab_seconds=8, ab_pool=1,
                             log=lambda message: None, **kwargs)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("studio")


@pytest.fixture(scope="module")
def server(tiny_run, root):
    server = Server(make_studio(tiny_run, root))
    yield server
    server.stop()


def call(server, path, body=None, data=None, method=None):
    """(status, decoded JSON or bytes) of one request."""
    if body is not None:
        data = json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, payload, kind = response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as error:
        status, payload, kind = error.code, error.read(), error.headers.get("content-type", "")
    return status, json.loads(payload) if kind.startswith("application/json") else payload


# ----------------------------------------------------------------------------- API

def test_generate_answers_the_documented_shape_and_serves_every_file(server):
    status, piece = call(server, "/api/generate", {"length": 16, "seed": 5, "temperature": 0.9, "top_k": 20})
    assert status == 200, piece
    assert set(piece["urls"]) >= {"midi", "musicxml", "audio", "png"}
    assert len(piece["id"]) == 32 and piece["seed"] == 5
    status, midi = call(server, piece["urls"]["midi"])
    assert status == 200 and midi[:4] == b"MThd"
    status, sound = call(server, piece["urls"]["audio"])
    assert status == 200 and sound[:4] == b"OggS"
    assert audio.duration(sound) == pytest.approx(piece["seconds"])
    status, png = call(server, piece["urls"]["png"])
    assert status == 200 and png[:4] == b"\x89PNG"
    status, musicxml = call(server, piece["urls"]["musicxml"])
    assert status == 200 and b"score-partwise" in musicxml
    status, runs = call(server, "/api/runs")
    assert status == 200 and runs["runs"][0]["held_out"] >= 1 and "val_loss" in runs["runs"][0]["metrics"]


def test_bad_requests_unknown_ids_traversal_and_oversized_bodies_are_4xx(server, tmp_path):
    cases = [
        ("/api/generate", {"length": 10 ** 6}, 400, "length"),
        ("/api/generate", {"temperature": "hot"}, 400, "temperature"),
        ("/api/generate", {"run": "nope"}, 404, "unknown run"),
        ("/api/generate", {"primer": "upload:" + "0" * 32}, 404, "unknown primer"),
        ("/api/generate", {"primer": "held_out:99"}, 400, "does not exist"),
        ("/api/ab/vote", {"pair_id": "0" * 32, "choice": "a"}, 404, "unknown pair"),
        ("/api/ab/vote", {"pair_id": "../../etc", "choice": "a"}, 404, "unknown pair"),
        ("/api/ab/next", {"comparison": "x@1 vs y@1"}, 404, "unknown run"),
    ]
    for path, body, expected, words in cases:
        status, answer = call(server, path, body)
        assert status == expected and words in answer["error"], (path, body, answer)
    status, answer = call(server, "/api/generate", data=b"{not json")
    assert status == 400 and "not JSON" in answer["error"]
    status, answer = call(server, "/api/generate", data=b" " * (routes.MAX_JSON_BYTES + 1))
    assert status == 413
    for path in ("/files/pieces/../../votes.sqlite", "/files/pieces/%2e%2e/%2e%2e/votes.sqlite",
                 "/files/pieces/" + "0" * 32 + "/..%2F..%2Fvotes.sqlite", "/runs/x/config.yaml",
                 "/api/ab/audio/" + "0" * 32 + "/a", "/static/../app.py"):
        status, answer = call(server, path)
        assert 400 <= status < 500, path
        assert b"CREATE TABLE" not in (answer if isinstance(answer, bytes) else b"")
    # Uploads: non-music, wrong type, oversized; a real MIDI is accepted and usable as a primer.
    status, answer = call(server, "/api/primers?filename=x.mid", data=b"definitely not midi")
    assert status == 422 and "not usable music" in answer["error"]
    status, answer = call(server, "/api/primers?filename=notes.txt", data=b"C D E")
    assert status == 415
    status, answer = call(server, "/api/primers?filename=big.mid", data=b"M" * (routes.MAX_UPLOAD_BYTES + 1))
    assert status == 413
    path = write_chorales_as_midi(str(tmp_path), ("bach/bwv66.6",))[0]
    with open(path, "rb") as handle:
        status, primer = call(server, "/api/primers?filename=chorale.mid", data=handle.read())
    assert status == 200 and primer["notes"] > 100
    status, piece = call(server, "/api/generate", {"length": 8, "primer": "upload:" + primer["id"]})
    assert status == 200 and piece["primer_events"] > 0


def test_a_second_generation_waits_or_gets_a_busy_answer(server, monkeypatch):
    monkeypatch.setattr(service, "QUEUE", 0)
    holding, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=lambda: server.studio.exclusive(lambda: (holding.set(), release.wait())))
    holder.start()
    assert holding.wait(30)
    try:
        status, answer = call(server, "/api/generate", {"length": 4})
        assert status == 503 and answer["error"].startswith("busy")
    finally:
        release.set()
        holder.join()
    assert call(server, "/api/generate", {"length": 4})[0] == 200


def test_fifty_concurrent_votes_are_all_stored_and_survive_a_restart(server, tiny_run, root):
    pairs = [call(server, "/api/ab/next", {})[1] for _ in range(50)]
    assert all(set(p) >= {"pair_id", "a", "b"} and p["a"]["audio_url"] != p["b"]["audio_url"] for p in pairs)
    name = pairs[0]["comparison"]
    before = next((r["votes"] for r in call(server, "/api/ab/results")[1]["comparisons"] if r["name"] == name), 0)

    def vote(number):
        return call(server, "/api/ab/vote", {"pair_id": pairs[number]["pair_id"], "choice": "ab"[number % 3 == 0],
                                             "reason": f"vote {number}"})[0]

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        assert list(pool.map(vote, range(50))) == [200] * 50
    status, answer = call(server, "/api/ab/vote", {"pair_id": pairs[0]["pair_id"], "choice": "a"})
    assert status == 409 and "already" in answer["error"]
    status, answer = call(server, "/api/ab/vote", {"pair_id": pairs[0]["pair_id"], "choice": "c"})
    assert status in (400, 409)
    result = next(r for r in call(server, "/api/ab/results")[1]["comparisons"] if r["name"] == name)
    assert result["votes"] == before + 50
    # Blind stimuli match in length, and the A/B audio is served under the pair's id only.
    status, first = call(server, pairs[1]["a"]["audio_url"])
    status_b, second = call(server, pairs[1]["b"]["audio_url"])
    assert status == status_b == 200 and abs(audio.duration(first) - audio.duration(second)) < 0.05

    restarted = Server(make_studio(tiny_run, root))
    try:
        again = next(r for r in call(restarted, "/api/ab/results")[1]["comparisons"] if r["name"] == name)
        assert again == result
        status, csv_text = call(restarted, "/api/ab/results?format=csv")
        assert status == 200 and name.encode() in csv_text and f",{result['votes']},".encode() in csv_text
        # A pair drawn before the restart can still be answered after it.
        spare = call(server, "/api/ab/next", {})[1]
        assert call(restarted, "/api/ab/vote", {"pair_id": spare["pair_id"], "choice": "b"})[0] == 200
    finally:
        restarted.stop()


def test_wrong_methods_are_not_found_and_failures_are_one_logged_line(server, monkeypatch):
    status, answer = call(server, "/api/generate")
    assert (status, answer) == (405, {"error": "not found"})
    logged = []
    monkeypatch.setattr(server.studio, "log", logged.append)

    def broken():
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(server.studio, "describe_runs", broken)
    status, answer = call(server, "/api/runs")
    assert (status, answer) == (500, {"error": "internal error (RuntimeError); see the studio's log"})
    assert logged == ["studio: GET /api/runs: RuntimeError: disk on fire"]


# ----------------------------------------------------------------------------- command line

@pytest.mark.parametrize("extra,words", [
    (["--web-export", "."], "argument --web-export: serves a web export alone; leave out --run-dir"),
    (["--port", "70000"], "argument --port: expected 0-65535, got 70000"),
    (["--tempo", "0"], "argument --tempo must be in (0, 1000) and --ab-seconds in [1, 300]"),
    (["--ab-seconds", "0.5"], "argument --tempo must be in (0, 1000) and --ab-seconds in [1, 300]"),
    (["--ab-pool", "0"], "argument --ab-pool: expected a positive integer, got 0"),
])
def test_command_line_refusals_are_usage_errors(tiny_run, capsys, extra, words):
    line = usage_error(studio_app.parse_args, ["--run-dir", tiny_run, *extra], capsys)
    assert line == f"python -m keras_music.studio: error: {words}"


def test_without_runs_latest_or_a_web_export_the_command_says_what_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        studio_app.main([])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("python -m keras_music.studio: error: run directory runs/latest does not exist "
                                       "(train one with python -m keras_music.train, or use runs/latest)\n")
    with pytest.raises(SystemExit) as exit_info:
        studio_app.parse_args(["--web-export", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"python -m keras_music.studio: error: argument --web-export: {tmp_path} holds no web export (no web.json in "
        "it or in export/web/); build one with python -m keras_music.export --run-dir RUN --web")


def test_a_port_in_use_is_one_line_and_exit_1(capsys):
    import argparse
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(SystemExit) as exit_info:
            studio_app.serve(argparse.ArgumentParser(prog="studio"), "127.0.0.1", port, None, "nothing")
    finally:
        taken.close()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"studio: error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


# ----------------------------------------------------------------------------- the page in Chromium

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = headless_chromium(str(tmp_path_factory.mktemp("downloads")), "1200,1800")
    yield driver
    driver.quit()


def wait_for(driver, script, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(script))


def test_page_generates_plays_downloads_and_records_a_blind_round(server, browser):
    import mido
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/")
    wait_for(browser, "return document.getElementById('run-select').options.length > 0")
    length = browser.find_element(By.ID, "length")
    length.clear()
    length.send_keys("24")
    browser.find_element(By.ID, "generate-button").click()
    duration = wait_for(browser, "const p = document.getElementById('player');"
                                 "return p.readyState >= 1 && isFinite(p.duration) && p.duration > 0 && p.duration;")
    seconds = float(browser.execute_script("return document.getElementById('player').dataset.seconds"))
    assert duration == pytest.approx(seconds, abs=0.05)
    assert browser.execute_script("return document.getElementById('player').error") is None
    # Playable: it actually advances when played (muted, autoplay allowed by the flags above).
    browser.execute_script("document.getElementById('player').play()")
    wait_for(browser, "return document.getElementById('player').currentTime > 0.2", timeout=20)
    assert wait_for(browser, "const i = document.getElementById('roll-png'); return i.complete && i.naturalWidth") > 100
    # The download is the piece's MIDI, and the audio lasts its end time plus the release tail.
    browser.find_element(By.ID, "dl-midi").click()
    deadline = time.time() + 20
    while time.time() < deadline and not [f for f in os.listdir(browser.downloads) if f.endswith(".mid")]:
        time.sleep(0.1)
    (name,) = [f for f in os.listdir(browser.downloads) if f.endswith(".mid")]
    midi_path = os.path.join(browser.downloads, name)
    assert duration == pytest.approx(mido.MidiFile(midi_path).length + audio.RELEASE_SECONDS, abs=0.05)
    shutil.move(midi_path, midi_path + ".seen")

    # One blind round: two votes, then the results view shows them.
    before = {r["name"]: r["votes"] for r in call(server, "/api/ab/results")[1]["comparisons"]}
    for choice in ("vote-a", "vote-b"):
        browser.find_element(By.ID, "ab-next").click()
        wait_for(browser, "return !document.getElementById('ab-pair').hidden && "
                          "document.getElementById('ab-a').readyState >= 1 && document.getElementById('ab-b').readyState >= 1")
        a, b = browser.execute_script("return [document.getElementById('ab-a').duration, document.getElementById('ab-b').duration]")
        assert a == pytest.approx(b, abs=0.05) and a > 5
        browser.find_element(By.ID, choice).click()
        wait_for(browser, "return document.getElementById('ab-status').textContent.includes('recorded')")
    name = browser.find_element(By.ID, "comparison").get_attribute("value")
    expected = before.get(name, 0) + 2
    # The view refreshes after each vote; wait for the refresh that follows the second one.
    assert wait_for(browser, "const row = [...document.querySelectorAll('#results-table tbody tr')]"
                             f".find(r => r.cells[0].textContent === {json.dumps(name)});"
                             f"return row && Number(row.cells[1].textContent) === {expected};", timeout=10)
    browser.save_screenshot(os.path.join(browser.downloads, "studio.png"))


def test_runs_show_the_evaluation_that_evaluate_wrote(tiny_run, tmp_path):
    import shutil

    from keras_music import run as run_lib, storage

    copy = str(tmp_path / "run")
    shutil.copytree(tiny_run, copy)
    assert make_studio(copy, tmp_path).describe_runs()[0]["evaluation"] == {}
    # Where `python -m keras_music.evaluate` writes it: RUN/evaluation/evaluation.json.
    storage.write_json(run_lib.path(copy, run_lib.EVALUATION, run_lib.EVALUATION_JSON),
                       {"model_quality": {"perplexity_per_token": 3.25, "tokens": 1200}, "settings": {"seed": 0}})
    shown = make_studio(copy, tmp_path).describe_runs()[0]["evaluation"]
    assert shown == {"model_quality.perplexity_per_token": 3.25, "model_quality.tokens": 1200, "settings.seed": 0}

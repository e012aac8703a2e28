"""The studio: HTTP API (concurrency, restarts, statistics, refusals, many listeners) and its pages in headless Chromium."""

import asyncio
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
from keras_music import audio, defaults
from keras_music.evaluate_music import EvaluationSettings
from keras_music.studio import app as studio_app, routes, service
from page_harness import BackgroundServer, headless_chromium


class Server(BackgroundServer):
    """The studio's app served in a thread of the test process, once its A/B pool is rendered."""

    def __init__(self, studio, admin_token=None):
        self.studio = studio
        studio.wait_for_pool(300, max_failures=2)  # a broken renderer fails the test at once, not after 300 s
        super().__init__(routes.create_app(studio, admin_token))


def make_studio(run_dir, root, **kwargs):
    return service.Studio([run_dir], str(root / "out"), db=str(root / "votes.sqlite"),
                            settings=service.StudioSettings(ab_seconds=8, ab_pool=1), log=lambda message: None, **kwargs)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("studio")


@pytest.fixture(scope="module")
def evaluated_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run with the evaluation `python -m keras_music.evaluate` writes."""
    from keras_music import evaluate, run as run_lib

    copy = str(tmp_path_factory.mktemp("evaluated") / "tiny")
    shutil.copytree(tiny_run, copy)
    evaluate.evaluate_run(copy, EvaluationSettings(3, 24, (0.5, 0.9, 1.2), 0, (1, 2, 3)),
                          out_dir=run_lib.path(copy, run_lib.EVALUATION))
    return copy


@pytest.fixture(scope="module")
def server(evaluated_run, root):
    server = Server(make_studio(evaluated_run, root), admin_token="owner-token")
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

def test_generate_answers_the_documented_shape_and_serves_every_file(server, evaluated_run, root):
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
    # The JSON record as served names the run by its label: no path of the serving machine in it.
    status, record = call(server, piece["urls"]["json"])
    assert status == 200 and record["seed"] == 5 and record["run_dir"] == piece["run"]
    served = json.dumps(record)
    assert os.path.dirname(evaluated_run) not in served and str(root) not in served
    status, runs = call(server, "/api/runs")
    assert status == 200 and runs["runs"][0]["held_out"] >= 1 and "val_loss" in runs["runs"][0]["metrics"]


def test_runs_are_described_in_words_and_labelled_records_without_machine_paths(server, evaluated_run):
    from keras_music import run as run_lib

    (run,) = call(server, "/api/runs")[1]["runs"]
    evaluation, metrics = run_lib.read_evaluation(evaluated_run), run_lib.read_training_record(evaluated_run)
    ratio = evaluation["lstm_vs_ngram"]
    assert (f"Held-out perplexity {evaluation['model_quality']['perplexity']:.2f} per token, "
            f"{ratio['perplexity_ratio']:.2f}x the best n-gram ({ratio['best_order']}-gram)") in run["summary"]["lines"][1]
    assert run["summary"]["lines"][2].startswith(f"Trained {metrics['epochs']} epochs, ")
    overlap = run["summary"]["overlap"]
    assert overlap["temperature"] == 0.9 and len(overlap["metrics"]) == len(evaluation["music_metrics"]["metric_names"])
    assert all(0 <= m["area"] <= 1 for m in overlap["metrics"])
    training, evaluated = run["details"]
    perplexity = evaluation["model_quality"]["perplexity"]
    assert ["held-out perplexity", f"{perplexity:,.{3 - len(str(int(perplexity)))}f} per token"] in evaluated["rows"]
    assert ["best n-gram order", str(evaluation["ngram"]["best_order"])] in evaluated["rows"]
    assert dict(training["rows"])["validation loss"] == f"{metrics['val_loss']:.3g} nats per token"
    text = json.dumps(run)
    assert "run_dir" not in text and evaluated_run not in text and os.path.dirname(evaluated_run) not in text


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


def test_fifty_concurrent_votes_are_all_stored_and_survive_a_restart(server, evaluated_run, root):
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

    restarted = Server(make_studio(evaluated_run, root))
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
            studio_app.serve(argparse.ArgumentParser(prog="studio"), None, host="127.0.0.1", port=port, what="nothing")
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
    # The form starts from keras_music/defaults.py, as every command and the web page do.
    shown = {name: float(browser.find_element(By.ID, name).get_attribute("value"))
             for name in ("temperature", "length", "top-k", "top-p")}
    assert shown == {"temperature": defaults.TEMPERATURE, "length": defaults.LENGTH, "top-k": defaults.TOP_K,
                     "top-p": defaults.TOP_P}
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
    studio = make_studio(copy, tmp_path)
    studio.close()
    assert studio.describe_runs()[0]["evaluation"] == {}
    # Where `python -m keras_music.evaluate` writes it: RUN/evaluation/evaluation.json.
    storage.write_json(run_lib.path(copy, run_lib.EVALUATION, run_lib.EVALUATION_JSON),
                       {"model_quality": {"perplexity_per_token": 3.25, "tokens": 1200}, "settings": {"seed": 0}})
    studio = make_studio(copy, tmp_path)
    studio.close()
    shown = studio.describe_runs()[0]["evaluation"]
    assert shown == {"model_quality.perplexity_per_token": 3.25, "model_quality.tokens": 1200, "settings.seed": 0}


def test_waiting_for_a_pool_whose_renders_fail_ends_at_the_failures_naming_the_last(tiny_run, tmp_path, monkeypatch):
    def broken(self, side):
        raise OSError(f"no sound for {side.name}")

    monkeypatch.setattr(service.Studio, "render_stimulus", broken)
    studio = make_studio(tiny_run, tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError) as error:
            studio.wait_for_pool(120, max_failures=1)
        assert time.monotonic() - started < 30  # the back-off after two failures is 2 s + 4 s, not the timeout
        assert "2 renders failed, the last with OSError: no sound for" in str(error.value)
        assert studio.pool_status()["filled"] is False
    finally:
        studio.close()


# ----------------------------------------------------------------------------- many listeners

def test_fifty_listeners_voting_five_times_get_answers_at_once_and_every_vote_counts_once(server, evaluated_run, root):
    import bench_studio

    store = server.studio.store
    before = {v["pair_id"] for v in store.votes()}
    outcome = bench_studio.load(server.url, listeners=50, rounds=5)
    print("\n".join(bench_studio.describe(outcome)))
    assert {kind: statuses for kind, statuses in outcome["statuses"].items()} == {
        "pair": {200: 250}, "audio": {200: 500}, "vote": {200: 250}}
    every = [seconds for values in outcome["latencies"].values() for seconds in values]
    assert bench_studio.percentile(every, 0.95) < 1.0
    stored = [v for v in store.votes() if v["pair_id"] not in before]
    assert sorted((v["pair_id"], v["choice"]) for v in stored) == sorted((p, c) for p, _, c in outcome["votes"])
    assert len({v["listener"] for v in stored}) == 50 and all(len(v["listener"]) == 32 for v in stored)
    for pair_id, _, choice in outcome["votes"][:5]:
        status, answer = call(server, "/api/ab/vote", {"pair_id": pair_id, "choice": "ab"[choice == "a"]})
        assert status == 409 and "already has a vote" in answer["error"]
    assert len(store.votes()) == len(before) + 250
    name = outcome["votes"][0][1]
    result = next(r for r in call(server, "/api/ab/results")[1]["comparisons"] if r["name"] == name)
    assert result["listeners"] >= 50
    per_listener = call(server, "/api/ab/results?by=listener")[1]["listeners"]
    assert sum(r["votes"] for r in per_listener if r["name"] == name) == result["votes"]
    restarted = Server(make_studio(evaluated_run, root))
    try:
        assert call(restarted, "/api/ab/results")[1] == call(server, "/api/ab/results")[1]
    finally:
        restarted.stop()


def test_once_listeners_pause_the_pool_is_topped_up_with_fresh_excerpts(server):
    for _ in range(3):
        pair = call(server, "/api/ab/next", {})[1]
        assert call(server, "/api/ab/vote", {"pair_id": pair["pair_id"], "choice": "a"})[0] == 200
    deadline = time.time() + 120
    while time.time() < deadline:
        sides = server.studio.pool_status()["sides"]
        if all(info["fresh"] >= 1 for info in sides.values()):
            break
        time.sleep(0.2)
    assert all(info["fresh"] >= 1 and 1 < info["rendered"] <= service.POOL_GROWTH for info in sides.values()), sides


def test_a_comparison_whose_excerpts_are_not_rendered_yet_is_busy_until_its_pool_fills(server):
    body = {"comparison": "tiny@0.5 vs tiny@1.2"}
    status, answer = call(server, "/api/ab/next", body)
    assert status == 503 and "still being rendered" in answer["error"]
    server.studio.wait_for_pool(120)
    status, pair = call(server, "/api/ab/next", body)
    assert status == 200 and pair["comparison"] == "tiny@0.5 vs tiny@1.2"


def test_a_listener_cannot_vote_on_a_pair_dealt_to_another(server):
    import http.cookiejar

    jars = [urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())) for _ in "ab"]

    def post(opener, path, body):
        request = urllib.request.Request(server.url + path, data=json.dumps(body).encode(), method="POST")
        try:
            with opener.open(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    status, pair = post(jars[0], "/api/ab/next", {})
    assert status == 200
    status, answer = post(jars[1], "/api/ab/next", {})  # the second listener gets an id of their own
    assert status == 200
    status, answer = post(jars[1], "/api/ab/vote", {"pair_id": pair["pair_id"], "choice": "a"})
    assert status == 403 and "another listener" in answer["error"]
    assert post(jars[0], "/api/ab/vote", {"pair_id": pair["pair_id"], "choice": "a"})[0] == 200
    assert post(jars[0], "/api/ab/vote", {"pair_id": pair["pair_id"], "choice": "b"})[0] == 409


# ----------------------------------------------------------------------------- sharing beyond this machine

def asgi_call(app, method, path, body=b"", headers=(), client=("203.0.113.7", 40000)):
    """(status, headers, body) of one request handed straight to the app, as if from `client`."""
    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers]
             + [(b"content-length", str(len(body)).encode())], "client": client, "server": ("127.0.0.1", 8000)}
    sent, messages = [], [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client stays connected

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return (start["status"], {k.decode(): v.decode() for k, v in start["headers"]},
            b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


def test_from_another_machine_generate_uploads_and_results_need_the_admin_token(server):
    app = routes.create_app(server.studio, admin_token="owner-token")
    generate = json.dumps({"length": 4}).encode()
    refused = [("POST", "/api/generate", generate), ("POST", "/api/primers?filename=x.mid", b"MThd"),
               ("GET", "/api/ab/results?format=csv", b""), ("GET", "/api/ab/results?format=json", b""),
               ("GET", "/api/ab/results", b""), ("GET", "/api/ab/results?by=listener", b"")]
    for method, path, body in refused:
        for headers in ((), ((routes.ADMIN_HEADER, "wrong"),), (("Cookie", f"{routes.ADMIN_COOKIE}=nope"),)):
            status, _, answer = asgi_call(app, method, path, body, headers)
            assert status == 403 and b"admin token" in answer, (path, headers)
    # The owner's token, as a header, a cookie or the page link's ?token=, opens them.
    assert asgi_call(app, "POST", "/api/generate", generate, ((routes.ADMIN_HEADER, "owner-token"),))[0] == 200
    assert asgi_call(app, "GET", "/api/ab/results?format=csv", b"",
                     (("Cookie", f"{routes.ADMIN_COOKIE}=owner-token"),))[0] == 200
    status, headers, _ = asgi_call(app, "GET", "/?token=owner-token")
    assert status == 200 and f"{routes.ADMIN_COOKIE}=owner-token" in headers["set-cookie"]
    # Listeners need nothing: the studio's page sends them to /listen, which deals pairs and takes votes.
    status, headers, _ = asgi_call(app, "GET", "/")
    assert status == 303 and headers["location"] == "/listen"
    assert asgi_call(app, "GET", "/listen")[0] == 200
    status, headers, answer = asgi_call(app, "POST", "/api/ab/next", b"{}")
    assert status == 200 and headers["set-cookie"].startswith(routes.LISTENER_COOKIE + "=")
    vote = json.dumps({"pair_id": json.loads(answer)["pair_id"], "choice": "b"}).encode()
    assert asgi_call(app, "POST", "/api/ab/vote", vote, (("Cookie", headers["set-cookie"].split(";")[0]),))[0] == 200
    # Without a token configured (the default, bound to 127.0.0.1) nothing is open to other machines.
    assert asgi_call(routes.create_app(server.studio), "POST", "/api/generate", generate)[0] == 403
    # From this machine no token is needed.
    assert asgi_call(app, "GET", "/api/ab/results", client=("127.0.0.1", 5000))[0] == 200


def test_listening_beyond_this_machine_prints_the_listeners_link_and_the_token():
    assert studio_app.is_loopback("127.0.0.1") and studio_app.is_loopback("::1")
    assert not studio_app.is_loopback("0.0.0.0") and not studio_app.is_loopback("192.168.1.20")
    assert studio_app.share_lines("192.168.1.20", 8000, token="T0K") == [
        "studio: give listeners this link: http://192.168.1.20:8000/listen",
        "studio: admin token (generate, uploads, results from other machines): T0K",
        "studio: your page from another machine: http://192.168.1.20:8000/?token=T0K"]
    lines = studio_app.share_lines("0.0.0.0", 8000, token="T0K")
    assert lines[0].endswith(":8000/listen") and "0.0.0.0" not in lines[0]


# ----------------------------------------------------------------------------- the pages at a glance

def console_errors(driver) -> list:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_first_screen_at_1280x800_is_generate_and_the_summary_says_the_perplexity_in_words(server, browser,
                                                                                          evaluated_run):
    from keras_music import run as run_lib

    browser.get_log("browser")
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    try:
        browser.get(server.url + "/")
        wait_for(browser, "return document.querySelectorAll('#run-summary p').length > 1")
        top, bottom, height = browser.execute_script(
            "const r = document.getElementById('generate-button').getBoundingClientRect();"
            "return [r.top, r.bottom, innerHeight];")
        assert height == 800 and 0 < top and bottom <= 800
        for element in ("run-select", "temperature", "primer"):
            assert browser.execute_script(f"return document.getElementById('{element}').getBoundingClientRect().bottom") <= 800
        evaluation = run_lib.read_evaluation(evaluated_run)
        ratio = evaluation["lstm_vs_ngram"]
        summary = browser.execute_script("return document.getElementById('run-summary').innerText")
        assert (f"perplexity {evaluation['model_quality']['perplexity']:.2f} per token, "
                f"{ratio['perplexity_ratio']:.2f}x the best n-gram ({ratio['best_order']}-gram)") in summary
        # The records are folded away, labelled, and name no path of this machine.
        assert browser.execute_script("return document.getElementById('details').open") is False
        records = browser.execute_script("return document.getElementById('run-info').textContent")
        assert "held-out perplexity" in records and "model_quality" not in records
        assert os.path.dirname(evaluated_run) not in browser.page_source
        browser.save_screenshot(os.path.join(browser.downloads, "first-screen.png"))
        favicon = call(server, "/favicon.ico")
        assert favicon[0] == 200 and favicon[1].startswith(b"<svg")
        assert console_errors(browser) == []
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_listen_page_shows_only_the_test_plays_both_sides_and_records_a_vote(server, browser):
    from selenium.webdriver.common.by import By

    browser.get_log("browser")
    browser.get(server.url + "/listen")
    assert browser.find_elements(By.ID, "generate-button") == [] and browser.find_elements(By.ID, "results") == []
    browser.find_element(By.ID, "ab-next").click()
    wait_for(browser, "return !document.getElementById('ab-pair').hidden && "
                      "document.getElementById('ab-a').readyState >= 1 && document.getElementById('ab-b').readyState >= 1")
    for side in ("ab-a", "ab-b"):
        browser.execute_script(f"document.getElementById('{side}').play()")
        wait_for(browser, f"return document.getElementById('{side}').currentTime > 0.2", timeout=20)
    pair_a = browser.execute_script("return document.getElementById('ab-a').src")
    listener = browser.get_cookie(routes.LISTENER_COOKIE)["value"]
    before = sum(1 for v in server.studio.store.votes() if v["listener"] == listener)
    browser.find_element(By.ID, "vote-b").click()
    wait_for(browser, "return document.getElementById('ab-count').textContent.startsWith('1 answer recorded')")
    voted = [v for v in server.studio.store.votes() if v["listener"] == listener]
    assert len(voted) == before + 1 and voted[-1]["choice"] == "b" and voted[-1]["pair_id"] in pair_a
    # The next pair is dealt at once.
    wait_for(browser, "return !document.getElementById('ab-pair').hidden && "
                      f"document.getElementById('ab-a').src !== {json.dumps(pair_a)}")
    assert console_errors(browser) == []

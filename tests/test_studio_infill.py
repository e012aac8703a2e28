"""The studio fills bars of a piece it made: POST /api/infill over HTTP judged with mido, and the page's form."""

import json
from fractions import Fraction as F

import pytest

from conftest import tiny_config
from keras_music import defaults
from keras_music.studio import service
from midi_truth import read_back
from page_harness import headless_chromium
from test_infill import clipped, markers
from test_studio import Server, call, wait_for


@pytest.fixture(scope="module")
def infill_run(tmp_path_factory):
    """A tiny run trained with control tokens and infilling, as the default run is."""
    from keras_music import train

    run_dir = str(tmp_path_factory.mktemp("studio-infill") / "steered")
    train.train(tiny_config("data.controls=true", "data.infill_rate=0.5", "train.epochs=3", "data.seq_length=96"),
                run_dir, show_progress=False, log=lambda *a: None)
    return run_dir


@pytest.fixture(scope="module")
def server(infill_run, tiny_run, tmp_path_factory):
    """The studio serving the infilling run and a plain one (no controls, no infilling)."""
    root = tmp_path_factory.mktemp("studio-infill-out")
    studio = service.Studio([infill_run, tiny_run], str(root / "out"), db=str(root / "votes.sqlite"),
                            settings=service.StudioSettings(ab_seconds=8, ab_pool=1), log=lambda message: None)
    server = Server(studio)
    yield server
    server.stop()


def run_names(server) -> tuple[str, str]:
    """(the infilling run's name, the plain run's name), as GET /api/runs describes them."""
    status, answer = call(server, "/api/runs")
    assert status == 200
    (steered,) = [r for r in answer["runs"] if r["infill"]]
    (plain,) = [r for r in answer["runs"] if not r["infill"]]
    assert steered["controls"] and plain["controls"] is None
    return steered["name"], plain["name"]


def midi_file(server, url, path):
    status, data = call(server, url)
    assert status == 200 and data[:4] == b"MThd"
    path.write_bytes(data)
    return str(path)


def test_filling_bars_of_a_generated_piece_fills_the_exact_gap_and_keeps_the_other_bars(server, tmp_path):
    steered, plain = run_names(server)
    status, source = call(server, "/api/generate", {"run": steered, "length": 40, "min_length": 40, "seed": 3,
                                                   "primer": "none"})
    assert status == 200, source
    assert source["infill"] is None and source["bars"] >= 4
    status, filled = call(server, "/api/infill", {"run": steered, "piece": f"piece:{source['id']}", "bars": "2-3",
                                                  "seed": 1, "temperature": 1.2})
    assert status == 200, filled
    record = filled["infill"]
    assert record["bars"] == [2, 3] and record["source"] == f"piece:{source['id']}" and record["exact"] is True
    assert sum(F(t[4:]) for t in record["tokens"] if t.startswith("dur:")) == F(record["duration"])
    assert record["filled_duration"] == record["duration"] == record["offset"] - record["onset"] > 0
    assert filled["bars"] == source["bars"] and filled["run"] == steered

    # Both files read with mido: bars 2-3 by the file's own metre, the notes around them the source's.
    truth, _, signatures = read_back(midi_file(server, source["urls"]["midi"], tmp_path / "source.mid"))
    written_path = midi_file(server, filled["urls"]["midi"], tmp_path / "filled.mid")
    written, _, _ = read_back(written_path)
    assert {s[1:] for s in signatures} == {signatures[0][1:]} and signatures[0][0] == 0  # one metre
    bar = F(4 * signatures[0][1], signatures[0][2])
    begin, end = min(a for a, *_ in truth), max(b for _, b, *_ in truth)
    onset, offset = max(bar, begin), min(3 * bar, end)
    assert (F(record["onset"]), F(record["offset"])) == (onset, offset)
    assert markers(written_path) == [(onset, "infill 2-3 start"), (offset, "infill 2-3 end")]
    # Had the middle been a tick too short or too long, every note after it would have moved.
    assert clipped(written, 0, onset) == clipped(truth, 0, onset)
    assert clipped(written, offset, end) == clipped(truth, offset, end)
    assert max(b for _, b, *_ in written) == end
    # What changed lies in the gap, or is a source note that crossed its boundary, cut there.
    assert all(a <= offset and b >= onset for a, b, *_ in set(written) ^ set(truth))
    # The piece's record names the studio's piece, not a path of this machine.
    status, saved = call(server, filled["urls"]["json"])
    assert saved["infill"]["source"] == f"piece:{source['id']}" and saved["primer_source"].startswith("piece:")

    # The last bar the answer counts can be filled; the one after it is outside the piece.
    last = source["bars"]
    status, answer = call(server, "/api/infill", {"run": steered, "piece": f"piece:{source['id']}",
                                                  "bars": f"{last}-{last}", "seed": 2})
    assert status == 200 and answer["infill"]["exact"], answer
    out_dir = server.studio.out_dir
    for body, expected, words in (
            ({"bars": f"{last}-{last + 1}"}, 400,
             f"bars {last}-{last + 1} are outside piece {source['id']}, which has {last} bars"),
            ({"bars": "3-2"}, 400, "bars '3-2' are not a bar range"),
            ({"run": plain, "bars": "2-3"}, 400, f"run {plain} was trained without infilling"),
            ({"piece": "piece:" + "0" * 32, "bars": "2-3"}, 404, "unknown piece '" + "0" * 32 + "'")):
        status, answer = call(server, "/api/infill", {"run": steered, "piece": f"piece:{source['id']}", **body})
        assert status == expected and words in answer["error"], answer
        assert "\n" not in answer["error"] and out_dir not in answer["error"]


def test_the_fill_form_shows_for_a_piece_of_an_infilling_run_only(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    steered, plain = run_names(server)
    driver = headless_chromium(str(tmp_path), "1200,1800")

    def generate(run):
        before = driver.execute_script("return typeof piece !== 'undefined' && piece ? piece.id : null")
        Select(driver.find_element(By.ID, "run-select")).select_by_value(run)
        length = driver.find_element(By.ID, "length")
        length.clear()
        length.send_keys("32")
        driver.find_element(By.ID, "generate-button").click()
        wait_for(driver, f"return piece && piece.id !== {json.dumps(before)} && piece.run === {run!r} && "
                         "document.getElementById('status').textContent.includes('playable')")

    def fill(first, last):
        for name, value in (("infill-first", first), ("infill-last", last)):
            driver.find_element(By.ID, name).clear()
            driver.find_element(By.ID, name).send_keys(str(value))
        driver.find_element(By.ID, "infill-button").click()
        status = "document.getElementById('infill-status')"
        return wait_for(driver, f"return ({status}.className === 'error' || "
                                f"{status}.textContent.includes('playable')) && {status}.textContent")

    def shown(element):
        return driver.execute_script(f"return !document.getElementById({element!r}).hidden")

    try:
        driver.get(server.url + "/")
        wait_for(driver, "return document.getElementById('run-select').options.length === 2")
        generate(plain)
        assert not shown("infill-form") and not shown("controls")
        generate(steered)
        assert shown("infill-form") and shown("controls") and not shown("piece-filled")
        levels = driver.execute_script("return [...document.getElementById('levels').options].map((o) => o.value)")
        assert levels == ["low", "medium", "high"]
        # "Hold bars to them" (checked by default) is the request's bar_limits.
        assert driver.find_element(By.ID, "bar-limits").is_selected()
        driver.find_element(By.ID, "density").send_keys("high")
        driver.find_element(By.ID, "bar-limits").click()
        generate(steered)
        assert driver.execute_script("return [piece.controls.density, piece.controls.bar_limits]") == ["5", False]
        driver.find_element(By.ID, "bar-limits").click()
        generate(steered)
        assert driver.execute_script("return [piece.controls.density, piece.controls.bar_limits]") == ["5", True]
        # "Key prior" starts at the default and is the request's key_prior; emptied, the default again.
        assert float(driver.find_element(By.ID, "key-prior").get_attribute("value")) == defaults.KEY_PRIOR
        Select(driver.find_element(By.ID, "key")).select_by_value("D minor")
        driver.find_element(By.ID, "key-prior").clear()
        driver.find_element(By.ID, "key-prior").send_keys("0.5")
        generate(steered)
        assert driver.execute_script("return [piece.controls.key_token, piece.controls.key_prior]") == ["key:minor", 0.5]
        driver.find_element(By.ID, "key-prior").clear()
        generate(steered)
        assert driver.execute_script("return piece.controls.key_prior") == defaults.KEY_PRIOR
        Select(driver.find_element(By.ID, "key")).select_by_value("")
        bars = driver.execute_script("return piece.bars")
        message = fill(bars + 1, bars + 1)
        assert message.startswith(f"bars {bars + 1}-{bars + 1} are outside piece ") and "\n" not in message
        assert not shown("piece-filled")
        fill(2, 2)
        assert driver.find_element(By.ID, "piece-filled").text == "bars 2-2 filled"
        assert shown("infill-form") and driver.execute_script("return piece.infill.exact") is True
    finally:
        driver.quit()

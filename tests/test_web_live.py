"""Live play in the web export: the page's encoder equals Python's, and call and response in headless Chromium
(a fake Web MIDI keyboard) answers on the beat with the reference generator's tokens."""

import json
import os
import random
import shutil
import subprocess
import time
from fractions import Fraction

import pytest

from keras_music import events, web_export
from keras_music.vocabulary import Vocabulary
from page_harness import (BackgroundServer, PageError, call, headless_chromium, install_fake_midi, live_session,
                          open_page, random_phrases, reference_generator)
# The web export's fixtures: one tiny run exported with --web, served with and without isolation headers.
from test_web_export import isolated, plain, reference_models, site, vocabulary  # noqa: F401

reference = reference_generator()

TURNS = 50


# ----------------------------------------------------------------------------- the encoder in Node

NODE_ENCODER = r"""
import {encode, phrasePrimer, cutAnswer} from './encoder.mjs';
const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const cases = JSON.parse(Buffer.concat(chunks).toString());
process.stdout.write(JSON.stringify({
  encoded: (cases.encode || []).map(({notes, options}) => encode(notes, options)),
  primers: (cases.primers || []).map(({notes, endTick, vocabulary, options}) =>
    phrasePrimer(notes, endTick, vocabulary, options)),
  cuts: (cases.cuts || []).map(({ids, vocabulary, quarters}) => cutAnswer(ids, vocabulary, quarters)),
}));
"""


def run_node(tmp_path, cases):
    node = shutil.which("node")
    assert node, "node is needed by the web export (it comes with npm) and by this test"
    shutil.copyfile(os.path.join(web_export.SOURCES, "encoder.js"), tmp_path / "encoder.mjs")
    (tmp_path / "harness.mjs").write_text(NODE_ENCODER)
    result = subprocess.run([node, str(tmp_path / "harness.mjs")], input=json.dumps(cases), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def random_notes(generator, grid):
    """Chords, overlaps, unisons, re-attacks, rests, notes longer than max_duration, on and off the grid."""
    notes, time = [], 0.0
    for _ in range(generator.randint(0, 14)):
        kind = generator.random()
        if kind < 0.15:
            time += generator.choice([0.5, 1, 2.5, 9.0])  # a rest, sometimes longer than max_duration
        onset = time if generator.random() < 0.7 else time + generator.random() * 0.37
        for pitch in generator.sample(range(40, 90), generator.choice([1, 1, 2, 3, 4])):
            length = generator.choice([0.25, 0.5, 1, 1.5, 3, 12.0, generator.random() * 2])
            notes.append([onset, onset + length, pitch])
        if kind > 0.9 and notes:
            a, b, p = notes[-1]
            notes.append([a + (b - a) / 3, b + 0.5, p])  # a unison overlapping a sounding note
        if generator.random() < 0.1:
            notes.append([onset, onset, 61])  # empty: dropped
        time += generator.choice([0, 0.25, 0.5, 1, 1 / 3, 0.1])
    if generator.random() < 0.3:
        notes.append([round(time * grid + 0.5) / grid, time + 1, 50])  # exactly half a tick: rounds to even
    return notes


def test_page_encoder_equals_keras_musics_encoder(tmp_path):
    generator = random.Random(24)
    cases, expected = {"encode": []}, []
    for number in range(400):
        grid = (24, 24, 12, 4, 48)[number % 5]
        max_duration = (8.0, 8.0, 2.0, 1.5, 4.0)[number % 5]
        representation = "classic" if number % 7 == 6 else "note"
        notes = random_notes(generator, grid)
        sonorities = events.notes_to_sonorities([tuple(n) for n in notes], Fraction(max_duration), grid)
        expected.append(events.sonorities_to_tokens(sonorities, representation))
        cases["encode"].append({"notes": notes, "options": {"grid": grid, "maxDuration": max_duration,
                                                            "representation": representation}})
    assert sum(any(t.startswith("hold:") for t in tokens) for tokens in expected) > 100
    assert sum("rest" in tokens for tokens in expected) > 50

    answers = run_node(tmp_path, cases)

    assert answers["encoded"] == expected


NOTE_VOCABULARY = ["<pad>", "<unk>", "<piece>"] + [f"pitch:{p}" for p in range(48, 73)] + \
    [f"hold:{p}" for p in range(48, 73) if p % 2 == 0] + ["rest", "dur:1/4", "dur:1/2", "dur:1", "dur:2"]


def test_a_played_phrase_becomes_a_primer_the_vocabulary_can_say(tmp_path):
    """phrasePrimer: clipped at the answer, moved by octaves into the vocabulary, encoded as Python encodes,
    a rest up to the answer, durations split into the vocabulary's (held), missing holds re-attacked."""
    shipped = json.loads(json.dumps(Vocabulary(NOTE_VOCABULARY).to_json()))
    generator = random.Random(5)
    cases = {"primers": []}
    for _ in range(60):
        notes = []
        for _ in range(generator.randint(1, 8)):
            onset = generator.randrange(0, 96, 6)
            notes.append([onset, onset + generator.randrange(6, 120, 6), generator.randrange(30, 100)])
        end = max(n[1] for n in notes) + generator.choice([0, 6, 24, 300])
        end = end if generator.random() < 0.8 else end - 12  # sometimes a note is still held at the answer
        cases["primers"].append({"notes": notes, "endTick": end, "vocabulary": shipped,
                                 "options": {"grid": 24, "maxDuration": 8}})

    answers = run_node(tmp_path, cases)

    for case, primer in zip(cases["primers"], answers["primers"]):
        tokens = primer["tokens"]
        assert tokens[0] == "<piece>" and set(tokens) <= set(NOTE_VOCABULARY), tokens
        # What it says is the phrase: each note (moved by octaves into 48..72, clipped at the answer) sounds from
        # its onset to its end, relative to the first onset, and the primer lasts until the answer.
        def place(pitch):
            while pitch < 48:
                pitch += 12
            while pitch > 72:
                pitch -= 12
            return pitch

        ticks = [(a, min(b, case["endTick"]), place(p)) for a, b, p in case["notes"] if min(b, case["endTick"]) > a]
        first = min(a for a, _, _ in ticks)
        sonorities = events.tokens_to_sonorities(tokens, "note")
        assert sum(s.duration for s in sonorities) == Fraction(case["endTick"] - first, 24)
        # Re-attacks (a hold missing from the vocabulary) split a note; the spans it covers stay the same.
        covered = {}
        for onset, length, pitch in events.sonorities_to_notes(sonorities).tolist():
            start = round(onset * 24) + first
            covered.setdefault(int(pitch), set()).update(range(start, start + round(length * 24)))
        wanted = {}
        for a, b, p in events.canonical_notes([(Fraction(a, 24), Fraction(b, 24), p) for a, b, p in ticks]):
            wanted.setdefault(p, set()).update(range(a, b))
        assert covered == wanted
    # With every duration and hold in the vocabulary, the primer is exactly Python's encoding plus the rest.
    simple = [[0, 12, 60], [0, 24, 64], [12, 36, 66], [48, 60, 62]]
    answers = run_node(tmp_path, {"primers": [{"notes": simple, "endTick": 84, "vocabulary": shipped,
                                               "options": {"grid": 24, "maxDuration": 8}}]})
    python = events.sonorities_to_tokens(events.notes_to_sonorities([(Fraction(a, 24), Fraction(b, 24), p)
                                                                     for a, b, p in simple]))
    assert answers["primers"][0]["tokens"] == ["<piece>", *python, "rest", "dur:1"]
    # Without `rest` in the vocabulary a silence holds the notes before it, and none follows the phrase.
    no_rest = json.loads(json.dumps(Vocabulary([t for t in NOTE_VOCABULARY if t != "rest"]).to_json()))
    answers = run_node(tmp_path, {"primers": [{"notes": [[0, 12, 60], [24, 36, 62]], "endTick": 96,
                                               "vocabulary": no_rest, "options": {"grid": 24, "maxDuration": 8}}]})
    assert answers["primers"][0]["tokens"] == ["<piece>", "pitch:60", "dur:1/2", "hold:60", "dur:1/2", "pitch:62",
                                               "dur:1/2"]


def cut_answer(ids, vocabulary, quarters):
    """The answer rule in Python: the ids up to and including the event at which the length reaches `quarters`."""
    total = Fraction(0)
    for index, token_id in enumerate(ids):
        token, kind = vocabulary["tokens"][token_id], vocabulary["grammar"]["kinds"][token_id]
        if kind == "dur":
            total += Fraction(token[4:])
        elif kind == "event":
            total += Fraction(str(vocabulary.get("classic_step", 0.5)))
        else:
            continue
        if total >= quarters:
            return ids[:index + 1]
    return list(ids)


def test_the_answer_rule_is_the_same_in_javascript_and_python(tmp_path):
    shipped = json.loads(json.dumps(Vocabulary(NOTE_VOCABULARY + ["dur:1/3", "dur:2/3"]).to_json()))
    generator = random.Random(9)
    durations = [i for i, t in enumerate(shipped["tokens"]) if t.startswith("dur:")]
    pitches = [i for i, t in enumerate(shipped["tokens"]) if t.startswith("pitch:")]
    cases = {"cuts": []}
    for _ in range(100):
        ids = []
        for _ in range(generator.randint(0, 30)):
            ids += generator.sample(pitches, generator.randint(1, 3)) + [generator.choice(durations)]
        cases["cuts"].append({"ids": ids, "vocabulary": shipped, "quarters": generator.choice([1, 2, 4, 8])})

    answers = run_node(tmp_path, cases)

    for case, got in zip(cases["cuts"], answers["cuts"]):
        expected = cut_answer(case["ids"], shipped, case["quarters"])
        assert got["ids"] == expected
        assert got["complete"] == (expected != case["ids"] or sum(
            Fraction(shipped["tokens"][i][4:]) for i in expected if shipped["tokens"][i].startswith("dur:"))
            >= case["quarters"])


# ----------------------------------------------------------------------------- the page in Chromium


@pytest.fixture(scope="module")
def keyboard_browser(tmp_path_factory):
    """Chromium whose pages see a fake MIDI keyboard (one input, one output) instead of Web MIDI."""
    driver = headless_chromium(str(tmp_path_factory.mktemp("live-downloads")), "1200,1600")
    driver.set_script_timeout(600)
    install_fake_midi(driver, "keyboard")
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def live_page(keyboard_browser, isolated):  # noqa: F811
    # The float32 model file, the one every path agrees on to the token (tests/test_same_seed.py).
    open_page(keyboard_browser, isolated.url + "/?model=model.tflite")
    ready = call(keyboard_browser, "kerasMusic.live.ready")
    assert ready["where"] == "worker", ready
    assert ready["midi"]["status"] == "granted" and ready["midi"]["input"] == "fake-in"
    return keyboard_browser


def midi_notes(sent):
    """Note on/off messages sent to the fake output as [pitch, on ms, off ms], in order of their start."""
    open_notes, notes = {}, []
    for message in sent:
        status, *data = message["data"]
        if status & 0xF0 == 0x90 and data[1] > 0:
            open_notes.setdefault(data[0], []).append(message["timestamp"])
        elif status & 0xF0 in (0x80, 0x90):
            notes.append([data[0], open_notes[data[0]].pop(0), message["timestamp"]])
    return sorted(notes, key=lambda n: (n[1], n[0]))


@pytest.mark.slow
def test_fifty_turns_of_call_and_response_at_120_bpm_are_on_the_beat_with_the_reference_tokens(
        live_page, vocabulary, reference_models):  # noqa: F811
    phrases = random_phrases(TURNS, seed=1)
    settings = {"tempo": 120, "mode": "silence", "silenceBeats": 1, "answerBars": 1, "seed": 1000,
                "temperature": 0.9, "topK": 0, "topP": 0.95, "click": True, "synth": True}
    result = live_session(live_page, phrases, settings)
    turns, session = result["turns"], result["session"]
    assert len(turns) == TURNS and session["late"] == 0
    spq = session["secondsPerQuarter"]
    assert spq == 0.5 and session["answerQuarters"] == 4
    for turn in turns:
        # On its beat, on the audio clock: planned while the player was silent, scheduled before it came.
        assert not turn["late"] and turn["where"] == "worker"
        beat = (turn["answerAt"] - session["origin"]) / spq
        assert turn["answerAt"] == turn["plannedAt"] and abs(beat - round(beat)) < 1e-9 and round(beat) == turn["beat"]
        assert turn["beat"] == int(-(-((turn["phraseEnd"] + 0.5 + 0.1 - session["origin"]) / spq - 1e-9) // 1))
        assert turn["resultAt"] < turn["answerAt"] and turn["scheduledAt"] < turn["answerAt"] - 0.02
        assert turn["phraseEnd"] < turn["answerAt"] <= turn["phraseEnd"] + 0.5 + 0.1 + spq + 1e-9
    # The synth played every answer note at its place: the beat plus the note's onset.
    answer_log = [n for n in session["synth"] if n["source"] == "answer"]
    assert len(answer_log) == sum(len(turn["notes"]) for turn in turns) > TURNS
    scheduled = iter(answer_log)
    for turn in turns:
        for onset, length, pitch in turn["notes"]:
            played = next(scheduled)
            assert played["pitch"] == pitch
            assert played["at"] == pytest.approx(turn["answerAt"] + onset * spq, abs=1e-9)
            assert played["end"] - played["at"] == pytest.approx(length * spq, abs=1e-9)

    # The answers' tokens are the reference generator's for the same primer, seed and settings, cut at 1 bar.
    model = reference_models["model.tflite"]
    same = 0
    for turn in turns:
        assert turn["seed"] == str(1000 + turn["turn"]) and turn["primer"][0] == "<piece>"
        assert set(turn["primer"]) <= set(vocabulary["tokens"])
        assert [vocabulary["tokens"][i] for i in turn["primerIds"]] == turn["primer"]
        ids, _ = reference.generate(model, vocabulary, turn["primerIds"], turn["length"], 0.9, 0, int(turn["seed"]),
                                    stop_at_boundary=True, top_p=0.95, min_length=turn["length"])
        expected = cut_answer(ids[len(turn["primerIds"]):], vocabulary, 4)
        same += expected == turn["ids"]
        assert turn["tokens"] == [vocabulary["tokens"][i] for i in turn["ids"]]
    assert same == TURNS, same

    # What went out over MIDI is what the synth played: the same notes at the same times, converted from the
    # audio clock to MIDI timestamps (performance.now()) with the clock pair the page read for each answer.
    sent = midi_notes(result["sent"])
    assert result["sent"][0]["data"][0] == 0xC0
    expected = []
    played = iter(answer_log)
    for turn in turns:
        clock = turn["clock"]
        for _ in turn["notes"]:
            note = next(played)
            expected.append([note["pitch"], clock["performanceTime"] + (note["at"] - clock["contextTime"]) * 1000,
                             clock["performanceTime"] + (note["end"] - clock["contextTime"]) * 1000])
    expected.sort(key=lambda n: (n[1], n[0]))
    assert [n[0] for n in sent] == [n[0] for n in expected]
    assert sent == [[p, pytest.approx(on, abs=1e-6), pytest.approx(off, abs=1e-6)] for p, on, off in expected]
    # The two clocks agree to within a few ms over the session (the pair moves only by the clocks' drift).
    pairs = [t["clock"]["performanceTime"] - t["clock"]["contextTime"] * 1000 for t in turns]
    assert max(pairs) - min(pairs) < 50

    # The session's MIDI file holds the player's phrases and the answers, on two named tracks, with markers.
    import io

    import mido

    midi = mido.MidiFile(file=io.BytesIO(bytes(call(live_page, "kerasMusic.live.sessionMidi()"))))
    assert midi.type == 1 and [t.name for t in midi.tracks[1:]] == ["player", "keras_music"]
    markers = [m.text for m in midi.tracks[0] if m.type == "marker"]
    assert markers[:2] == ["phrase 1", "answer 1"] and len(markers) == 2 * TURNS
    counts = [sum(m.type == "note_on" for m in track) for track in midi.tracks[1:]]
    assert counts == [sum(len(p) for p in phrases), len(answer_log)]


@pytest.mark.slow
def test_a_dropped_midi_file_primes_the_answer(live_page, vocabulary):  # noqa: F811
    notes = [(0, 1, 60), (1, 1.5, 62), (1.5, 2, 64), (2, 4, 65), (2, 3, 69)]  # quarters, a bar of 4/4
    data = reference.midi_bytes([[a, b - a, p] for a, b, p in notes], 100.0, 0, (4, 4))
    call(live_page, "kerasMusic.live.start({tempo: 120, answerBars: 1, seed: 3})")
    primed = call(live_page, f"kerasMusic.live.file({json.dumps(list(data))})")
    assert primed == {"notes": 5, "bars": 1}
    call(live_page, "new Promise((resolve) => { const t = setInterval(() => { if (kerasMusic.live.turns.length) "
                    "{ clearInterval(t); resolve(); } }, 20); })")
    (turn,) = call(live_page, "kerasMusic.live.turns")
    call(live_page, "kerasMusic.live.stop()")
    python = events.sonorities_to_tokens(events.notes_to_sonorities([(Fraction(a), Fraction(b), p)
                                                                     for a, b, p in notes]))
    assert turn["primer"] == ["<piece>", *python] and not turn["late"]


@pytest.mark.slow
def test_without_control_tokens_the_key_and_density_selects_are_disabled_and_say_why(live_page):
    selects = live_page.execute_script(
        "return ['control-key', 'control-density'].map((id) => { const s = document.getElementById(id); "
        "return [s.disabled, s.title, s.options.length]; })")
    for disabled, title, options in selects:
        assert disabled and options == 1 and "trained without control tokens" in title, (disabled, title, options)
    with pytest.raises(PageError, match="this model has no control tokens"):
        call(live_page, "kerasMusic.live.start({controls: {key: 'D minor', density: null}})")
    assert call(live_page, "kerasMusic.live.state") == "stopped"


def sonority_starts(tokens):
    """(index of its first token, start in quarters) of each sonority in `tokens`; the tokens' total duration."""
    starts, onset, between = [], Fraction(0), True
    for index, token in enumerate(tokens):
        kind = token.split(":")[0]
        if kind in ("pitch", "hold", "rest") and between:
            starts.append((index, onset))
            between = False
        elif kind == "dur":
            onset += Fraction(token[4:])
            between = True
    return starts, onset


@pytest.mark.slow
def test_key_and_density_steer_each_answer_as_the_reference_generator_does(controls_run):
    """A run trained with control tokens: the live Key and Density selects offer the ordinary form's choices, and
    with E minor and high density every answer has key:minor in its primer, key:minor density:5 at each bar (counted from
    the primer's start) it starts a sonority in, notes moved by -5 semitones, and the reference generator's ids."""
    from keras_music import run as run_lib
    from keras_music.studio import routes

    folder = run_lib.path(controls_run, run_lib.EXPORT, run_lib.WEB)
    vocab = reference.load_vocabulary(os.path.join(folder, "vocab.json"))
    model = reference.StepModel(os.path.join(folder, "models", "model.tflite"), len(vocab["tokens"]))
    with open(os.path.join(folder, web_export.SITE_FILE)) as handle:
        metre = tuple(json.load(handle)["timing"]["time_signature"])
    bar = Fraction(4 * metre[0], metre[1])
    server = BackgroundServer(routes.create_web_app(folder))
    driver = headless_chromium(None, "1200,1600")
    driver.set_script_timeout(180)
    try:
        install_fake_midi(driver, "keyboard")
        open_page(driver, server.url + "/?model=model.tflite")
        assert call(driver, "kerasMusic.live.ready")["where"] == "worker"
        (_, keys), (_, densities), *live = driver.execute_script(
            "return ['key', 'density', 'control-key', 'control-density'].map((id) => { const s = "
            "document.getElementById(id); return [s.disabled, [...s.options].map((o) => o.value)]; })")
        assert live == [[False, keys], [False, densities]]
        assert keys[0] == "" and "E minor" in keys and "D major" in keys
        assert densities == ["", "low", "medium", "high", *[str(b) for b in range(7)]]
        # Chosen in the page: live.start takes the selects' values.
        driver.execute_script("document.getElementById('control-key').value = 'E minor';"
                              "document.getElementById('control-density').value = 'high';")
        settings = {"tempo": 120, "mode": "silence", "silenceBeats": 1, "answerBars": 2, "seed": 40,
                    "temperature": 0.9, "topK": 0, "topP": 0.95, "click": False, "synth": True}
        result = live_session(driver, random_phrases(3, seed=2), settings)
    finally:
        driver.quit()
        server.stop()
    turns, session = result["turns"], result["session"]
    assert session["settings"]["controls"] == {"key": "E minor", "density": "high"}
    quarters = session["answerQuarters"]
    assert quarters == 2 * bar
    fed_bars = 0
    for turn in turns:
        controls = turn["controls"]
        assert {k: controls[k] for k in ("key", "density", "keyToken", "transpose")} == {
            "key": "E minor", "density": "high", "keyToken": "key:minor", "transpose": -5}
        # The key token right after <piece> in the primer the model was fed, and nowhere else in it.
        assert turn["primer"][:2] == ["<piece>", "key:minor"]
        assert [t for t in turn["primer"] if t.startswith("key:")] == ["key:minor"]
        assert [vocab["tokens"][i] for i in turn["primerIds"]] == turn["primer"]
        # The phrase reached the model in its own frame: moved by +5 (E minor -> A minor), as the answer moves back.
        # (Pitch classes: a pitch the vocabulary lacks is moved by octaves into its range.)
        read = {int(t.partition(":")[2]) % 12 for t in turn["primer"] if t.startswith(("pitch:", "hold:"))}
        if turn["dropped"] == 0:
            assert read == {(pitch + 5) % 12 for _, _, pitch in turn["phraseNotes"]}, turn["turn"]
        ids, _ = reference.generate(model, vocab, turn["primerIds"], turn["length"], 0.9, 0, int(turn["seed"]),
                                    stop_at_boundary=True, top_p=0.95, min_length=turn["length"], density="high",
                                    time_signature=metre, key="key:minor")
        assert turn["ids"] == cut_answer(ids[len(turn["primerIds"]):], vocab, quarters), turn["turn"]
        # key:minor density:5 before the first sonority the answer starts in each bar no earlier sonority started in
        # (the key too: the primer ends in the phrase's last duration, not in the key token).
        primer_starts, primer_length = sonority_starts(turn["primer"])
        done = max(int(onset // bar) for _, onset in primer_starts)
        expected = []
        for index, onset in sonority_starts(turn["tokens"])[0]:
            number = int((primer_length + onset) // bar)
            if number > done:
                expected.append({"bar": number + 1, "at": index, "tokens": ["key:minor", "density:5"]})
                done = number
        assert controls["fed"] == expected, turn["turn"]
        fed_bars += len(expected)
        # The notes are the tokens' notes moved to E minor.
        unmoved = reference.sonorities_to_notes(reference.tokens_to_sonorities(turn["tokens"]))
        assert sorted(n[2] - 5 for n in unmoved) == sorted(n[2] for n in turn["notes"])
    assert fed_bars >= len(turns)


@pytest.mark.slow
def test_a_phrase_of_a_bar_count_is_answered_on_the_bar_line_and_a_late_answer_says_so(live_page):
    from selenium.webdriver.common.by import By

    from page_harness import LIVE_TURNS

    def play(lookahead):
        call(live_page, "kerasMusic.live.start({tempo: 120, mode: 'bars', phraseBars: 1, lookaheadBeats: "
                        f"{lookahead}, answerBars: 1, seed: 5}})")
        time.sleep(0.4)  # past beat 0: the phrase starts inside the first bar
        call(live_page, f"{LIVE_TURNS}({json.dumps(random_phrases(1, seed=lookahead))})")
        call(live_page, "new Promise((resolve) => { const t = setInterval(() => { if (window.liveRun.done) "
                        "{ clearInterval(t); resolve(); } }, 20); })")
        (turn,) = call(live_page, "kerasMusic.live.turns")
        return turn, call(live_page, "kerasMusic.live.session")

    # Predicted a beat ahead: on the bar line that ends the phrase's bar.
    turn, session = play(1)
    assert 0 <= min(note[0] for note in turn["phraseNotes"]) < 96  # ticks from the bar line before the phrase
    assert not turn["late"] and session["late"] == 0 and turn["beat"] == turn["answerBeat"] == 4
    assert turn["beat"] % 4 == 0 and turn["beat"] * 0.5 + session["origin"] == pytest.approx(turn["answerAt"])
    assert turn["answerAt"] - turn["requestedAt"] == pytest.approx(0.5, abs=0.05)
    # Asked for only at the bar line itself, the answer cannot make it: it moves to the next beat, and says so.
    turn, session = play(0)
    assert turn["late"] and session["late"] == 1 and turn["beat"] == turn["answerBeat"] + 1 and turn["lateMs"] > 0
    assert "would have been late" in live_page.find_element(By.ID, "live-status").text
    call(live_page, "kerasMusic.live.stop()")


def live_ready_in(driver, url):
    open_page(driver, url)
    return call(driver, "kerasMusic.live.ready")


@pytest.mark.slow
def test_without_midi_the_page_says_so_and_the_on_screen_keyboard_plays(isolated, tmp_path):  # noqa: F811
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = headless_chromium(None, "1200,1600")
    driver.set_script_timeout(120)
    try:
        # Headless Chromium refuses MIDI permission by itself.
        ready = live_ready_in(driver, isolated.url + "/")
        assert ready["midi"]["status"] == "refused" and "MIDI permission was refused" in ready["midi"]["message"]
        assert "MIDI permission was refused" in driver.find_element(By.ID, "midi-status").text
        for kind, words in (("absent", "this browser has no Web MIDI"), ("empty", "no MIDI device is connected")):
            script = install_fake_midi(driver, kind)
            ready = live_ready_in(driver, isolated.url + "/")
            driver.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": script})
            assert words in ready["midi"]["message"] and words in driver.find_element(By.ID, "midi-status").text
        # The on-screen keyboard plays a phrase (mouse), and the model answers it.
        call(driver, "kerasMusic.live.start({tempo: 120, answerBars: 1, silenceBeats: 4, seed: 8})")
        for pitch in (60, 64, 67):
            key = driver.find_element(By.CSS_SELECTOR, f'#keyboard [data-pitch="{pitch}"]')
            ActionChains(driver).click_and_hold(key).pause(0.2).release().perform()
        call(driver, "new Promise((resolve) => { const t = setInterval(() => { if (kerasMusic.live.turns.length) "
                     "{ clearInterval(t); resolve(); } }, 20); })")
        (turn,) = call(driver, "kerasMusic.live.turns")
        assert [t for t in turn["primer"] if t.startswith("pitch:")] == ["pitch:60", "pitch:64", "pitch:67"]
        assert turn["tokens"] and not turn["late"] and turn["where"] == "worker"
    finally:
        driver.quit()


@pytest.mark.slow
def test_a_page_from_file_or_without_isolation_falls_back_and_says_so(plain, site):  # noqa: F811
    from selenium.webdriver.common.by import By

    # web.json tells the page's encoder how the run encoded notes.
    with open(os.path.join(site, web_export.SITE_FILE)) as handle:
        assert json.load(handle)["encoding"] == {"grid": 24, "max_duration": 8.0, "normalize_key": True,
                                                 "transpose": 0}

    driver = headless_chromium(None, "1200,1600")
    driver.set_script_timeout(120)
    try:
        ready = live_ready_in(driver, plain.url + "/")
        assert ready["where"] == "worker" and any("not cross-origin isolated" in n for n in ready["notes"])
        assert "not cross-origin isolated" in driver.find_element(By.ID, "live-status").text
        driver.get("file://" + os.path.join(site, "index.html"))
        status = driver.find_element(By.ID, "status").text
        assert "opened from a file" in status and "Serve the folder" in status
        assert driver.find_element(By.ID, "live-status").text == "live play needs the page served over http(s)"
    finally:
        driver.quit()

"""Audio rendering: real sound of the MIDI's length, each format decodable, clear errors."""

import io
import os

import numpy as np
import pytest
import soundfile

from keras_music import audio



@pytest.fixture(scope="module")
def chorale_midi(tmp_path_factory):
    from music21 import corpus

    path = str(tmp_path_factory.mktemp("audio") / "bwv66.6.mid")
    corpus.parse("bach/bwv66.6").write("midi", fp=path)
    return path


def midi_end_seconds(path):
    import mido

    return mido.MidiFile(path).length


def last_note_off_seconds(path):
    import mido

    now, last = 0.0, 0.0
    for message in mido.MidiFile(path):  # iterating a MidiFile yields times in seconds
        now += message.time
        if message.type == "note_off" or (message.type == "note_on" and message.velocity == 0):
            last = now
    return last


def decode(data):
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    return samples, rate


def test_default_soundfont_is_the_gm_bank_inside_pretty_midi():
    path = audio.default_soundfont()
    assert os.path.basename(path) == "TimGM6mb.sf2"
    assert os.path.basename(os.path.dirname(path)) == "pretty_midi"
    assert audio.soundfont_bytes(path)[8:12] == b"sfbk"


def test_wave_lasts_the_midi_plus_a_release_tail_and_is_not_silent(chorale_midi):
    end = midi_end_seconds(chorale_midi)
    with open(chorale_midi, "rb") as handle:
        samples, rate = decode(audio.render(handle.read(), "wav"))
    seconds = len(samples) / rate
    assert seconds == pytest.approx(end + audio.RELEASE_SECONDS, abs=2 / rate)
    mono = samples.mean(axis=1)
    # The tail holds the last chord's release, fading to silence rather than being cut.
    tail = mono[int(last_note_off_seconds(chorale_midi) * rate):]
    assert np.abs(tail[:rate // 10]).max() > 0.01 and np.abs(tail[-rate // 10:]).max() < 0.01
    # Sound all the way through: every second up to the last note has energy (a chorale has no long rests).
    window = rate
    levels = [np.sqrt(np.mean(mono[i:i + window] ** 2)) for i in range(0, int(end * rate) - window, window)]
    assert min(levels) > 1e-3, levels
    assert np.abs(mono).max() < 1.0  # no clipping


def test_ogg_opus_decodes_to_the_same_length_and_level(chorale_midi, tmp_path):
    out = str(tmp_path / "piece.ogg")
    assert audio.render_file(chorale_midi, out) == out
    with open(out, "rb") as handle:
        data = handle.read()
    assert data[:4] == b"OggS" and b"OpusHead" in data[:100]
    samples, rate = decode(data)
    with open(chorale_midi, "rb") as handle:
        wave, wave_rate = decode(audio.render(handle.read(), "wav"))
    assert rate == wave_rate == 48000
    assert abs(len(samples) - len(wave)) <= rate // 50
    rms_ogg, rms_wave = np.sqrt(np.mean(samples ** 2)), np.sqrt(np.mean(wave ** 2))
    assert rms_wave > 0.01 and abs(rms_ogg - rms_wave) / rms_wave < 0.1
    assert len(data) < len(audio.render(open(chorale_midi, "rb").read(), "wav")) / 5
    assert audio.duration(data) == pytest.approx(len(wave) / rate, abs=0.02)
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_flac_is_lossless(chorale_midi):
    with open(chorale_midi, "rb") as handle:
        midi = handle.read()
    flac, _ = soundfile.read(io.BytesIO(audio.render(midi, "flac")), dtype="int16")
    wave, _ = soundfile.read(io.BytesIO(audio.render(midi, "wav")), dtype="int16")
    assert np.array_equal(flac, wave)


def test_bad_format_soundfont_and_midi_raise_audio_errors(chorale_midi, tmp_path):
    with open(chorale_midi, "rb") as handle:
        midi = handle.read()
    with pytest.raises(audio.AudioError, match="'mp3'"):
        audio.render(midi, "mp3")
    with pytest.raises(audio.AudioError, match="no such file"):
        audio.render(midi, "wav", soundfont=str(tmp_path / "missing.sf2"))
    fake = tmp_path / "fake.sf2"
    fake.write_bytes(b"not a soundfont at all")
    with pytest.raises(audio.AudioError, match="not a SoundFont 2 file"):
        audio.render(midi, "wav", soundfont=str(fake))
    with pytest.raises(audio.AudioError, match="cannot read the MIDI"):
        audio.render(b"MThd garbage", "wav")


def test_generate_cli_writes_the_chosen_format_or_none(tiny_run, tmp_path, capsys):
    import json

    from keras_music import generate

    def generate_into(out, fmt):
        with pytest.raises(SystemExit) as exit_info:
            generate.main(["--run-dir", tiny_run, "--length", "12", "--out", str(out), "--quiet", "--audio", fmt])
        assert exit_info.value.code == 0
        return json.loads((out / "sample-01.json").read_text())

    record = generate_into(tmp_path / "wav", "wav")
    assert record["files"]["audio"] == "sample-01.wav"
    samples, rate = decode((tmp_path / "wav" / "sample-01.wav").read_bytes())
    assert len(samples) / rate > 1 and np.abs(samples).max() > 0.01
    record = generate_into(tmp_path / "none", "none")
    assert "audio" not in record["files"]
    assert sorted(p.suffix for p in (tmp_path / "none").iterdir()) == [".json", ".mid", ".musicxml", ".png"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        generate.main(["--run-dir", tiny_run, "--length", "4", "--out", str(tmp_path / "bad"), "--quiet",
                       "--soundfont", str(tmp_path / "missing.sf2")])
    assert exit_info.value.code == 1
    error = capsys.readouterr().err
    assert "missing.sf2: no such file" in error and "Traceback" not in error


def test_end_seconds_cuts_or_pads_to_an_exact_length(chorale_midi):
    with open(chorale_midi, "rb") as handle:
        midi = handle.read()
    last_note = last_note_off_seconds(chorale_midi)
    assert 5 < last_note < 28
    cut, rate = decode(audio.render(midi, "wav", end_seconds=5.0))
    padded, _ = decode(audio.render(midi, "wav", end_seconds=30.0))
    assert len(cut) / rate == pytest.approx(5.0 + audio.RELEASE_SECONDS, abs=2 / rate)
    assert len(padded) / rate == pytest.approx(30.0 + audio.RELEASE_SECONDS, abs=2 / rate)
    # Cut: the music sounds up to the cut. Padded: the last notes ring out, then silence to the end.
    assert np.abs(cut[int(4 * rate):int(5 * rate)]).max() > 0.01
    assert np.abs(padded[int((last_note - 1) * rate):int(last_note * rate)]).max() > 0.01
    assert np.abs(padded[int((last_note + 2) * rate):]).max() < 0.01

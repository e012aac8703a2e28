"""Render MIDI to audio browsers play (Ogg/Opus; WAV or FLAC on request) through a General MIDI SoundFont."""

from __future__ import annotations

import functools
import importlib.util
import io
import os

import midirenderer
import mido
import soundfile

from keras_music import storage
from keras_music.errors import KerasMusicError

# Ogg/Opus plays in every current browser and is about a tenth of the WAV's size.
FORMATS = ("ogg", "wav", "flac")
NONE = "none"
DEFAULT_FORMAT = "ogg"
EXTENSIONS = {"ogg": ".ogg", "wav": ".wav", "flac": ".flac"}
MEDIA_TYPES = {"ogg": "audio/ogg", "wav": "audio/wav", "flac": "audio/flac"}
DEFAULT_SOUNDFONT_NAME = "TimGM6mb.sf2"
# The renderer stops at the MIDI's end of track, which would cut the last notes' release
# (measured: about 0.7 s to silence for TimGM6mb's piano), so the MIDI is lengthened by this much.
RELEASE_SECONDS = 1.0


class AudioError(KerasMusicError, ValueError):
    """Audio cannot be rendered as asked (format, SoundFont, MIDI); the message says why."""


def check_format(fmt: str) -> str:
    fmt = str(fmt).lower()
    if fmt not in FORMATS + (NONE,):
        raise AudioError(f"unknown audio format {fmt!r} (expected one of {', '.join(FORMATS + (NONE,))})")
    return fmt


def default_soundfont() -> str:
    """The GM SoundFont inside the installed pretty_midi wheel (found without importing pretty_midi)."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or not spec.submodule_search_locations:
        raise AudioError("the default SoundFont comes with the pretty_midi package, which is not installed: "
                         "pip install pretty_midi, or pass --soundfont FILE.sf2")
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_SOUNDFONT_NAME)
    if not os.path.isfile(path):
        raise AudioError(f"{path} is missing from the pretty_midi package: reinstall it, or pass --soundfont FILE.sf2")
    return path


@functools.lru_cache(maxsize=4)
def _soundfont_bytes(path: str) -> bytes:
    # Several megabytes, read once per process: every piece of a batch and every studio
    # request reuses them.
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError:
        raise AudioError(f"SoundFont {path}: no such file") from None
    except OSError as error:
        raise AudioError(f"SoundFont {path}: cannot read it ({error.strerror or error})") from None
    if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
        raise AudioError(f"SoundFont {path} is not a SoundFont 2 file (expected a RIFF 'sfbk' .sf2)")
    return data


def soundfont_bytes(path: str | None = None) -> bytes:
    return _soundfont_bytes(str(path) if path else default_soundfont())


def with_release_tail(midi_bytes: bytes, seconds: float = RELEASE_SECONDS, *,
                      end_seconds: float | None = None) -> bytes:
    """The MIDI with every track's end moved `seconds` past the file's end (at the tempo in force there).

    `end_seconds` puts the end there instead of at the file's own end (writers pad differently,
    and excerpts compared with each other must last exactly as long).
    """
    try:
        midi = mido.MidiFile(file=io.BytesIO(bytes(midi_bytes)))
    except Exception as error:  # mido raises OSError, EOFError, ValueError, KeyError for damaged files
        raise AudioError(f"cannot read the MIDI to render it: {type(error).__name__}: {error}") from None
    if midi.type == 2:
        raise AudioError("cannot render a type-2 MIDI file (independent sequences)")
    end = max((sum(message.time for message in track) for track in midi.tracks), default=0)
    tempo, now, clock = 500000, 0, 0.0  # MIDI's default tempo (120 bpm) until a set_tempo says otherwise
    for message in mido.merge_tracks(midi.tracks):
        if end_seconds is not None and clock + message.time * tempo / 1e6 / midi.ticks_per_beat > end_seconds:
            break
        now += message.time
        clock += message.time * tempo / 1e6 / midi.ticks_per_beat
        if message.type == "set_tempo" and (end_seconds is not None or now <= end):
            tempo = message.tempo
    if end_seconds is not None:
        end = now + round((end_seconds - clock) * 1e6 / tempo * midi.ticks_per_beat)
    extra = round(seconds * 1e6 / tempo * midi.ticks_per_beat)
    for track in midi.tracks:
        length = sum(message.time for message in track)
        if end_seconds is not None:
            # Drop whatever lies past the end (notes still sounding are released by the renderer).
            kept, elapsed = mido.MidiTrack(), 0
            for message in track:
                if message.type == "end_of_track" or elapsed + message.time > end:
                    break
                elapsed += message.time
                kept.append(message)
            track[:] = kept
            length = elapsed
        if track and track[-1].type == "end_of_track":
            track[-1].time += end + extra - length
        else:
            track.append(mido.MetaMessage("end_of_track", time=end + extra - length))
    out = io.BytesIO()
    midi.save(file=out)
    return out.getvalue()


def render_wave(midi_bytes: bytes, soundfont: str | None = None, *, end_seconds: float | None = None) -> bytes:
    """16-bit 48 kHz stereo WAV of the MIDI plus RELEASE_SECONDS for its last notes to ring out."""
    sf2 = soundfont_bytes(soundfont)
    midi_bytes = with_release_tail(midi_bytes, end_seconds=end_seconds)
    try:
        return bytes(midirenderer.render_wave_from(sf2, midi_bytes))
    except (ValueError, RuntimeError) as error:
        raise AudioError(f"cannot render the MIDI with {soundfont or DEFAULT_SOUNDFONT_NAME}: {error}") from None


def render(midi_bytes: bytes, fmt: str = DEFAULT_FORMAT, *, soundfont: str | None = None,
           end_seconds: float | None = None) -> bytes:
    """The MIDI rendered and encoded as `fmt` (ogg, wav or flac); `end_seconds` cuts or pads it to that length."""
    fmt = check_format(fmt)
    if fmt == NONE:
        raise AudioError("audio format 'none' renders nothing")
    wave = render_wave(midi_bytes, soundfont, end_seconds=end_seconds)
    if fmt == "wav":
        return wave

    # midirenderer's own Opus path is slower (about 1.4x here), twice the size at any bitrate
    # setting, and trims samples; libsndfile encodes the exact rendered samples.
    samples, rate = soundfile.read(io.BytesIO(wave), dtype="int16")
    out = io.BytesIO()
    if fmt == "ogg":
        soundfile.write(out, samples, rate, format="OGG", subtype="OPUS")
    else:
        soundfile.write(out, samples, rate, format="FLAC", subtype="PCM_16")
    return out.getvalue()


def render_file(midi_path: str, out_path: str, fmt: str = DEFAULT_FORMAT, soundfont: str | None = None,
                end_seconds: float | None = None) -> str:
    """Render the MIDI file at `midi_path` into `out_path` (written atomically); returns `out_path`."""
    storage.write_bytes(out_path, render(storage.read_bytes(midi_path), fmt, soundfont=soundfont,
                                         end_seconds=end_seconds))
    return out_path


def duration(data: bytes) -> float:
    """Seconds of audio in encoded bytes (any format libsndfile reads)."""
    info = soundfile.info(io.BytesIO(data))
    return info.frames / info.samplerate

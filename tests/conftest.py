"""Shared fixtures: a parse cache per test session and small corpora made by code."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The page tests serve pages and drive Chromium with tools/page_harness.py, as tools/bench_web.py does.
sys.path.append(os.path.join(REPO, "tools"))
TINY = os.path.join(REPO, "configs", "tiny.yaml")
FOUR_CHORALES = ("bach/bwv66.6", "bach/bwv4.8", "bach/bwv26.6", "bach/bwv10.7")
STEER_CHORALES = FOUR_CHORALES + ("bach/bwv269",)  # bwv269 is in G major, the others in minor keys


@pytest.fixture(scope="session", autouse=True)
def parse_cache(tmp_path_factory):
    # One cache per session keeps tests independent of a developer's ~/.cache while
    # letting later tests reuse what earlier ones parsed.
    directory = os.environ.get("KERAS_MUSIC_TEST_CACHE") or str(tmp_path_factory.mktemp("parse-cache"))
    previous = os.environ.get("KERAS_MUSIC_CACHE")
    os.environ["KERAS_MUSIC_CACHE"] = directory
    yield directory
    if previous is None:
        os.environ.pop("KERAS_MUSIC_CACHE", None)
    else:
        os.environ["KERAS_MUSIC_CACHE"] = previous


def write_chorales_as_midi(directory, names=FOUR_CHORALES):
    from music21 import corpus

    os.makedirs(directory, exist_ok=True)
    paths = []
    for name in names:
        path = os.path.join(directory, name.replace("/", "_") + ".mid")
        corpus.parse(name).write("midi", fp=path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def midi_folder(tmp_path_factory):
    """Four chorales as MIDI plus one corrupt .mid file."""
    directory = str(tmp_path_factory.mktemp("midi"))
    write_chorales_as_midi(directory)
    with open(os.path.join(directory, "corrupt.mid"), "wb") as handle:
        handle.write(b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\x00\x00\x10\x00\x90\x3c")
    return directory


def usage_error(parse, argv, capsys) -> str:
    """The one `prog: error: ...` line a command prints when `parse(argv)` refuses its arguments (exit 2)."""
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.rstrip().splitlines()[-1]


def tiny_config(*overrides, sources=FOUR_CHORALES):
    from keras_music import config

    listed = "[" + ", ".join(sources) + "]"
    return config.load([TINY], [f"data.sources={listed}", "train.num_samples=0", *overrides])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A trained tiny run directory shared by read-only tests."""
    from keras_music import train

    run_dir = str(tmp_path_factory.mktemp("tiny-run"))
    train.train(tiny_config(), run_dir, show_progress=False, log=lambda *a: None)
    return run_dir


@pytest.fixture(scope="session")
def web_run(tiny_run, tmp_path_factory):
    """A copy of the tiny run, exported once with --web (the SavedModel, TFLite models and the page); shared by
    the web export's, live play's and the one-seed tests, which only read it."""
    import shutil

    from test_web_export import run_export

    directory = str(tmp_path_factory.mktemp("web-run") / "run")
    shutil.copytree(tiny_run, directory, ignore=shutil.ignore_patterns("export"))
    status, out, err = run_export(directory, "--web")
    assert status == 0, out + err
    assert "web export: web/" in out
    return directory


@pytest.fixture(scope="session")
def controls_run(tmp_path_factory):
    """A tiny run trained with control tokens (data.controls), exported (TFLite, SavedModel and the page); shared
    by read-only tests."""
    from keras_music import train
    from test_web_export import run_export

    run_dir = str(tmp_path_factory.mktemp("steer") / "run")
    # The four chorales are minor; a major one beside them gives both key tokens training pieces, so the key
    # prior's log ratios are not zero and the cross-backend tests compare tokens it really moved.
    train.train(tiny_config("data.controls=true", sources=STEER_CHORALES), run_dir, show_progress=False,
                log=lambda *a: None)
    status, out, err = run_export(run_dir, "--web")
    assert status == 0, out + err
    return run_dir


@pytest.fixture(scope="session")
def ground_truth(tmp_path_factory):
    """A MIDI file with every hard case, and the notes, tempo map and metre a faithful round trip gives back."""
    from midi_truth import write_ground_truth

    return write_ground_truth(tmp_path_factory.mktemp("truth"))


@pytest.fixture
def saved_figures(monkeypatch):
    """Every figure saved through keras_music.plots, kept for inspection after it is written."""
    from keras_music import plots

    figures = []
    save = plots.save

    def keep(figure, path, dpi=90):
        figures.append(figure)
        save(figure, path, dpi)

    monkeypatch.setattr(plots, "save", keep)
    return figures

"""A built wheel, installed alone in a fresh virtualenv, carries the studio's page and the web page and exports --web."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from conftest import REPO

PACKAGE = os.path.join(REPO, "keras_music")
# What the build reads: setup.cfg's metadata (README.md is the long description) and the package.
BUILD_INPUTS = ("pyproject.toml", "setup.cfg", "README.md", "keras_music")


def package_files(folder: str) -> set[str]:
    """The files of keras_music/<folder>/ as wheel paths."""
    return {f"keras_music/{folder}/{name}" for name in os.listdir(os.path.join(PACKAGE, folder))
            if os.path.isfile(os.path.join(PACKAGE, folder, name))}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # Built from a copy, so the build's own build/ and *.egg-info never touch the working tree.
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if os.path.isdir(os.path.join(REPO, name)):
            shutil.copytree(os.path.join(REPO, name), source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copyfile(os.path.join(REPO, name), source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                             "-q", str(source), "-w", str(root / "dist")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (built,) = (root / "dist").iterdir()
    return built


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory):
    """A new virtualenv with only the wheel installed (--no-deps); returns its python."""
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    result = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                             "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return python


def child_env() -> dict:
    # The dependencies come from this interpreter's site-packages through PYTHONPATH, where .pth
    # files are not processed: the repository's editable keras_music is not loaded, the wheel's is.
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def test_the_wheel_carries_the_studio_page_and_the_web_page(wheel):
    from keras_music import web_export

    names = set(zipfile.ZipFile(wheel).namelist())
    studio, page = package_files("studio/static"), package_files("web_page")
    assert {"keras_music/studio/static/index.html", "keras_music/studio/static/app.js"} <= studio
    assert {f"keras_music/web_page/{name}" for name in web_export.SOURCE_FILES} <= page
    assert studio <= names and page <= names
    assert "keras_music/__init__.py" in names and not any(name.startswith("tests/") for name in names)


@pytest.mark.slow
def test_the_installed_wheel_exports_the_web_page_from_outside_the_repository(fresh_venv, tiny_run, tmp_path):
    from keras_music import web_export

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = child_env()
    where = subprocess.run([fresh_venv, "-c", "import keras_music; print(keras_music.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    installed = os.path.realpath(where.stdout.strip())
    assert installed.startswith(os.path.realpath(os.path.dirname(os.path.dirname(fresh_venv))) + os.sep), installed

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("export"))
    # The LiteRT.js cache ($KERAS_MUSIC_CACHE, the session's) is shared with the web export's tests.
    result = subprocess.run([fresh_venv, "-m", "keras_music.export", "--run-dir", str(run_dir), "--web",
                             "--parity-windows", "2", "--parity-steps", "20", "--quiet"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    site = run_dir / "export" / "web"
    for name in web_export.SOURCE_FILES:
        assert (site / name).read_bytes() == open(os.path.join(PACKAGE, "web_page", name), "rb").read(), name
    assert (site / "web.json").is_file() and (site / "models" / "model_dynamic.tflite").is_file()

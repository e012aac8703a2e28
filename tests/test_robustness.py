"""Across stages: disk full, read-only and unwritable directories, too many open files are one line and exit 1."""

import errno
import io
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import FOUR_CHORALES, REPO, TINY
from keras_music import evaluate, export, generate, run as run_lib, storage, train

ADVICE = {
    errno.ENOSPC: "No space left on device; free some space and rerun the same command",
    errno.EROFS: "Read-only file system; choose a writable directory",
    errno.EACCES: "Permission denied; check the owner and mode of the directory",
    errno.EMFILE: "Too many open files; raise the limit (ulimit -n) or lower data.workers",
}


def failing_writes(monkeypatch, number, when):
    """Make storage's writes of files whose path matches `when` fail with OSError(number) mid-write."""
    real_open = open

    class Failing(io.BufferedWriter):
        def write(self, data):
            raise OSError(number, os.strerror(number), self.name)

    def fake_open(file, mode="r", *args, **kwargs):
        if "w" in mode and when(str(file)):
            raw = io.FileIO(file, "w")
            return Failing(raw)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(storage, "open", fake_open, raising=False)


def one_line_error(capsys, exit_info, expected):
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and expected in lines[0], err
    assert "(files written before are intact)" in lines[0]
    return lines[0]


def leftovers(directory):
    """Temporary files or folders and lock files anywhere below `directory`."""
    found = []
    for root, folders, files in os.walk(directory):
        for name in folders + files:
            if ".tmp" in name or name == run_lib.LOCK:
                found.append(os.path.join(root, name))
    return found


def test_disk_full_while_training_is_one_line_and_keeps_what_was_written(tmp_path, monkeypatch, capsys):
    run_dir = str(tmp_path / "run")
    failing_writes(monkeypatch, errno.ENOSPC, lambda path: path.endswith("metrics.json")
                   or os.path.basename(path).startswith(".metrics.json.tmp"))
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--config", TINY, "--run-dir", run_dir, "--quiet", "--set", "train.num_samples=0",
                    *[word for source in FOUR_CHORALES for word in ("--data", source)]])
    line = one_line_error(capsys, exit_info, ADVICE[errno.ENOSPC])
    assert "metrics.json" in line
    assert not os.path.exists(os.path.join(run_dir, "metrics.json"))
    run_lib.load_model(run_dir)  # the model written before the disk filled up is whole
    assert not leftovers(run_dir)


@pytest.mark.parametrize("number", sorted(ADVICE))
def test_os_errors_while_generating_are_one_line(tiny_run, tmp_path, monkeypatch, capsys, number):
    out = tmp_path / "out"
    failing_writes(monkeypatch, number, lambda path: ".mid" in path)
    with pytest.raises(SystemExit) as exit_info:
        generate.main(["--run-dir", tiny_run, "--length", "4", "--audio", "none", "--quiet", "--out", str(out)])
    one_line_error(capsys, exit_info, ADVICE[number])
    assert not os.listdir(out)  # no half piece, no temporary file, no lock


def test_disk_full_while_evaluating_keeps_the_earlier_evaluation(tiny_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "evaluation"
    out.mkdir()
    (out / "evaluation.json").write_text('{"earlier": true}')
    failing_writes(monkeypatch, errno.ENOSPC, lambda path: "evaluation.json" in path)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--run-dir", tiny_run, "--num-samples", "1", "--length", "4", "--temperature", "1",
                       "--orders", "1-2", "--quiet", "--out", str(out)])
    one_line_error(capsys, exit_info, ADVICE[errno.ENOSPC])
    assert json.loads((out / "evaluation.json").read_text()) == {"earlier": True}
    assert not leftovers(str(out))


def test_disk_full_while_exporting_keeps_the_earlier_export(tiny_run, tmp_path, monkeypatch, capsys):
    run_dir = str(tmp_path / "run")
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("export"))
    os.makedirs(os.path.join(run_dir, "export"))
    with open(os.path.join(run_dir, "export", "export_report.json"), "w") as handle:
        handle.write('{"earlier": true}')
    real_open = open

    def full(file, mode="r", *args, **kwargs):
        if "w" in mode and str(file).endswith("vocab.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(export, "open", full, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--run-dir", run_dir, "--parity-windows", "1", "--parity-steps", "1", "--quiet"])
    one_line_error(capsys, exit_info, ADVICE[errno.ENOSPC])
    assert os.listdir(os.path.join(run_dir, "export")) == ["export_report.json"]
    assert not leftovers(run_dir)


# ----------------------------------------------------------------------------- a directory nobody may write to

def unprivileged():
    """Keyword arguments for subprocess.run under which a directory's mode binds.

    Root ignores permission bits through two capabilities (CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH); dropping them from the child's bounding set before it starts
    its program leaves root to the owner's bits like any user.
    """
    if os.geteuid() != 0:
        return {}
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2

    def drop():
        for capability in (cap_dac_override, cap_dac_read_search):
            if libc.prctl(pr_capbset_drop, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return {"preexec_fn": drop}


@pytest.fixture()
def read_only_run(tiny_run, tmp_path):
    run_dir = str(tmp_path / "run")
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("export", "logs"))
    for root, folders, files in os.walk(run_dir):
        for name in files:
            os.chmod(os.path.join(root, name), 0o444)
        for name in folders:
            os.chmod(os.path.join(root, name), 0o555)
    os.chmod(run_dir, 0o555)
    yield run_dir
    for root, folders, _ in os.walk(run_dir):
        os.chmod(root, 0o755)


def run_unprivileged(args, cwd):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          **unprivileged())


def test_a_read_only_run_directory_is_one_line_for_every_writer(read_only_run, tmp_path):
    run_dir = read_only_run
    before = sorted(os.listdir(run_dir))
    probe = run_unprivileged(["-c", f"open({os.path.join(run_dir, 'probe')!r}, 'w')"], REPO)
    assert probe.returncode != 0 and "Permission denied" in probe.stderr, "the directory's mode does not bind"
    for args in (["-m", "keras_music.export", "--run-dir", run_dir, "--quiet"],
                 ["-m", "keras_music.generate", "--run-dir", run_dir, "--length", "4", "--audio", "none", "--quiet"],
                 ["-m", "keras_music.train", "--config", TINY, "--run-dir", run_dir, "--quiet",
                  "--set", "train.num_samples=0", *[w for s in FOUR_CHORALES for w in ("--data", s)]]):
        result = run_unprivileged(args, REPO)
        assert result.returncode == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Permission denied; check the owner and mode" in lines[0], (args, result.stderr)
    assert sorted(os.listdir(run_dir)) == before
    # Reading is fine: generating into a writable folder works from the read-only run.
    out = str(tmp_path / "pieces")
    result = run_unprivileged(["-m", "keras_music.generate", "--run-dir", run_dir, "--length", "4", "--audio", "none",
                               "--quiet", "--out", out], REPO)
    assert result.returncode == 0, result.stderr
    assert os.path.exists(os.path.join(out, "sample-01.mid"))

"""The house rules the README's "How the code is laid out" states, checked on the source."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_music"

# The README's order: each module imports only modules listed before it.
FLOW = """errors formatting defaults storage cli config plots events controls midi corpus vocabulary infill dataset model run
prepare roundtrip
sampling backends pieces audio piece_files generate callbacks distributed finetune train ngram music_metrics evaluate_held_out
evaluate_likelihood evaluate_music evaluate_controls evaluate_report evaluate listening experiment_configs experiment_claims
experiment_report experiment export_saved_model export_tflite export_parity web_export export
studio.summary studio.service studio.routes studio.app""".split()


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources():
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(path: pathlib.Path) -> set[str]:
    """keras_music modules a file imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("keras_music"):
            if node.module == "keras_music":
                names |= {alias.name for alias in node.names}
            else:
                names.add(node.module[len("keras_music."):])
        elif isinstance(node, ast.Import):
            names |= {alias.name[len("keras_music."):] for alias in node.names if alias.name.startswith("keras_music.")}
    return names


def test_every_module_has_its_place_in_the_flow():
    listed = set(FLOW) | {"", "studio", "studio.__main__"}
    assert set(sources()) == listed, "a module was added or removed: place it in FLOW and in the README"


@pytest.mark.parametrize("name", FLOW)
def test_imports_point_down_the_flow(name):
    path = sources()[name]
    later = {other for other in imported(path) if other in FLOW and FLOW.index(other) > FLOW.index(name)}
    assert not later, f"{name} imports {sorted(later)}, which come after it in the flow"


def test_pure_numpy_modules_do_not_import_tensorflow_or_the_model():
    for name in ("music_metrics", "sampling", "events", "controls", "infill", "formatting", "ngram", "defaults"):
        tree = ast.parse(sources()[name].read_text())
        modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {m for m in modules if m.split(".")[0] in ("tensorflow", "keras")}, name
        assert "model" not in imported(sources()[name]), name


def test_only_run_py_spells_the_run_directory_file_names():
    from keras_music import run

    names = {value for key, value in vars(run).items() if key.isupper() and isinstance(value, str) and "." in value}
    names |= set(run.TFLITE_FILES.values())
    assert {"config.yaml", "vocab.json", "model.keras", "metrics.json", "prepared.json"} <= names
    spelled = []
    for module, path in sources().items():
        if module == "run":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.append(f"{module}:{node.lineno} {node.value!r}")
    # vocabulary.py names its own file format in messages about a file given by path.
    assert [s for s in spelled if not s.startswith("vocabulary:")] == []

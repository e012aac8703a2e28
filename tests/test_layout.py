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


# ----------------------------------------------------------------------------- function-level imports

# The rule: a function imports a module only when importing it at the top would load one of these
# where it is not needed (a command's --help, `import keras_music`, a pure-numpy module): TensorFlow
# and what loads it, LiteRT, and music21 and matplotlib (a third of a second each). That covers a
# keras_music module that imports one of them at its top. Everything else is imported at the top.
HEAVY = ("tensorflow", "keras", "tensorflow_io", "ai_edge_litert", "music21", "matplotlib")
# POSIX-only: imported where a lock is taken, so that the rest of a module imports anywhere.
PLATFORM = ("fcntl",)


def _loaded(node) -> list[str]:
    """The absolute module names an import statement loads (keras_music submodules included)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.module == "keras_music":
        return [f"keras_music.{alias.name}" for alias in node.names]
    return [node.module]


def heavy_modules() -> set[str]:
    """keras_music modules whose import loads a heavy library at their top, directly or through another."""
    direct = {}
    for name, path in sources().items():
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        direct["keras_music" + (f".{name}" if name else "")] = {m for n in top for m in _loaded(n)}
    heavy = {name for name, modules in direct.items() if any(m.split(".")[0] in HEAVY for m in modules)}
    while True:
        more = {name for name, modules in direct.items() if name not in heavy and modules & heavy}
        if not more:
            return heavy
        heavy |= more


def function_imports():
    """(module, function name, import node) for every import inside a function, once each."""
    seen = set()
    for name, path in sources().items():
        for function in ast.walk(ast.parse(path.read_text())):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    if isinstance(node, (ast.Import, ast.ImportFrom)) and (name, node.lineno) not in seen:
                        seen.add((name, node.lineno))
                        yield name, function.name, node


def test_functions_import_only_what_keeps_a_heavy_library_out():
    heavy = heavy_modules()
    allowed = set(HEAVY) | set(PLATFORM)
    needless = [f"{module}:{node.lineno} {function}: {ast.unparse(node)}" for module, function, node in function_imports()
                if not any(m.split(".")[0] in allowed or m in heavy for m in _loaded(node))]
    assert needless == [], "import these at the top of their module (see the rule above HEAVY)"


def test_no_function_imports_again_what_its_module_imports_at_the_top():
    again = []
    for module, function, node in function_imports():
        tree = ast.parse(sources()[module].read_text())
        top = {ast.unparse(alias) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) for alias in n.names}
        again += [f"{module}:{node.lineno} {function}: {ast.unparse(alias)}" for alias in node.names
                  if ast.unparse(alias) in top]
    assert again == []


def test_the_rule_tells_heavy_modules_from_light_ones():
    heavy = heavy_modules()
    assert {"keras_music.model", "keras_music.dataset", "keras_music.callbacks"} <= heavy
    # plots and backends load matplotlib and TensorFlow inside their functions, so they are light.
    assert not {"keras_music", "keras_music.cli", "keras_music.sampling", "keras_music.storage",
                "keras_music.music_metrics", "keras_music.plots", "keras_music.backends"} & heavy

"""Count the habits the house rules watch: long parameter lists, long positional calls, dicts between modules, nested imports."""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_music"


def module_name(path: pathlib.Path, package: pathlib.Path = PACKAGE) -> str:
    parts = path.relative_to(package).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    return [n for n in names if n not in ("self", "cls")]


def returns_dict(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    annotation = node.returns
    if annotation is None:
        return False
    text = ast.unparse(annotation)
    return text == "dict" or text.startswith("dict[")


def count(package: pathlib.Path = PACKAGE) -> dict[str, list[str]]:
    """Each habit's places, as 'module:line name' strings."""
    found = {"long_parameter_lists": [], "positional_calls": [], "dicts_between_modules": [],
             "function_imports": []}
    trees = {module_name(p, package): ast.parse(p.read_text()) for p in sorted(package.rglob("*.py"))}
    # Which public dict-returning functions are named from another module (as module.function or imported).
    dict_functions: dict[str, tuple[str, int]] = {}
    for module, tree in trees.items():
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and returns_dict(node):
                dict_functions[node.name] = (module, node.lineno)
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and returns_dict(item):
                        if not item.name.startswith("_"):
                            dict_functions.setdefault(item.name, (module, item.lineno))
    crossing = set()
    for module, tree in trees.items():
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.alias):
                name = node.name
            if name in dict_functions and dict_functions[name][0] != module:
                crossing.add(name)
    found["dicts_between_modules"] = sorted(f"{m}:{line} {n}" for n, (m, line) in dict_functions.items()
                                            if n in crossing)
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if len(parameters(node)) > 7:
                    found["long_parameter_lists"].append(f"{module}:{node.lineno} {node.name} ({len(parameters(node))})")
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        names = ", ".join(a.name for a in inner.names)
                        source = inner.module if isinstance(inner, ast.ImportFrom) else names
                        found["function_imports"].append(f"{module}:{inner.lineno} {node.name}: {source}")
            if isinstance(node, ast.Call):
                positional = [a for a in node.args if not isinstance(a, ast.Starred)]
                if len(positional) >= 6:
                    found["positional_calls"].append(f"{module}:{node.lineno} {ast.unparse(node.func)} ({len(positional)})")
    # A nested function's imports are counted once, under the outermost function.
    found["function_imports"] = sorted(set(found["function_imports"]))
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--list", action="store_true", help="list every place, not only the counts")
    parser.add_argument("--package", type=pathlib.Path, default=PACKAGE,
                        help="the package directory to count (default: this checkout's keras_music; e.g. an older "
                             "commit's, unpacked with `git archive COMMIT keras_music | tar -x -C DIR`)")
    args = parser.parse_args(argv)
    if not (args.package / "__init__.py").is_file():
        parser.error(f"--package {args.package}: not a package directory (expected an __init__.py in it)")
    for habit, places in count(args.package.resolve()).items():
        print(f"{habit}: {len(places)}")
        if args.list:
            for place in places:
                print(f"  {place}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

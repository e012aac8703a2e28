"""tools/house_counts.py counts each habit the house rules watch, at the right places, and only those."""

import textwrap

import pytest

import house_counts


def write_package(root, modules):
    package = root / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, source in modules.items():
        (package / f"{name}.py").write_text(textwrap.dedent(source))
    return package


def test_each_habit_is_counted_where_it_is(tmp_path):
    package = write_package(tmp_path, {
        "records": """
            import json

            def eight(a, b, c, d, e, f, g, h):
                return a

            def seven(a, b, *, c, d, e, f, g):
                return a

            def shared() -> dict:
                return {}

            def private_use() -> dict[str, int]:
                return {}

            def user():
                import math
                return private_use(), math.pi
        """,
        "caller": """
            from pkg import records

            def call():
                records.eight(1, 2, 3, 4, 5, 6, 7, 8)
                records.seven(1, 2, c=3, d=4, e=5, f=6, g=7)
                print(*[1, 2, 3, 4, 5, 6, 7])
                return records.shared()
        """,
    })
    found = house_counts.count(package)
    assert found["long_parameter_lists"] == ["records:4 eight (8)"]
    assert found["positional_calls"] == ["caller:5 records.eight (8)"]
    assert found["dicts_between_modules"] == ["records:10 shared"]
    assert found["function_imports"] == ["records:17 user: math"]


def test_the_command_prints_counts_and_refuses_a_directory_without_a_package(tmp_path, capsys):
    package = write_package(tmp_path, {"one": "def f():\n    import os\n    return os.sep\n"})
    assert house_counts.main(["--package", str(package)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "long_parameter_lists: 0", "positional_calls: 0", "dicts_between_modules: 0", "function_imports: 1"]
    with pytest.raises(SystemExit) as error:
        house_counts.main(["--package", str(tmp_path / "missing")])
    assert error.value.code == 2
    assert "not a package directory" in capsys.readouterr().err

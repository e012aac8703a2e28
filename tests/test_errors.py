"""Every error a user can fix derives from KerasMusicError, so every command prints it as one line."""

import importlib
import inspect
import pkgutil

import keras_music
from keras_music import errors


def all_modules():
    for info in pkgutil.walk_packages(keras_music.__path__, "keras_music."):
        if not info.name.endswith("__main__"):
            yield importlib.import_module(info.name)


def test_every_error_type_of_the_package_derives_from_the_base():
    found = {}
    for module in all_modules():
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = value
    # Lower-level signals that are not user messages: OSError kinds the CLI reports as OS errors.
    not_user_errors = {"keras_music.storage.NotARegularFile", "keras_music.storage.FileTooLarge"}
    stray = {name for name, kind in found.items()
             if not issubclass(kind, errors.KerasMusicError) and name not in not_user_errors}
    assert not stray, f"error types outside the KerasMusicError family: {sorted(stray)}"
    assert issubclass(keras_music.EnvironmentMismatch, errors.KerasMusicError)  # the package's own, not walked
    # The stages' own errors are there (the walk found them), and usage errors are the config's.
    assert {"keras_music.run.RunError", "keras_music.generate.GenerateError", "keras_music.corpus.CorpusError",
            "keras_music.export_saved_model.ExportError", "keras_music.config.ConfigError"} <= set(found)
    assert issubclass(found["keras_music.config.ConfigError"], errors.UsageError)
    assert not issubclass(found["keras_music.run.RunError"], errors.UsageError)


def test_errors_keep_their_builtin_kind_for_callers_that_catch_it():
    from keras_music import config, export_saved_model, run

    assert issubclass(run.RunError, ValueError) and issubclass(config.ConfigError, ValueError)
    assert issubclass(export_saved_model.ExportError, RuntimeError)

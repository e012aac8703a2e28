"""TFLite step models from the batch-1 step SavedModel: builtin ops only, float32 and quantized, CPU-only."""

from __future__ import annotations

import os
import subprocess
import sys

from keras_music import run as run_lib
from keras_music.export_saved_model import ExportError

# Quantization name -> TFLite file; "none" is the float32 model, always written.
QUANTIZATIONS = ("none", "float16", "dynamic")
# Quantization -> its artifact's name in export_report.json, and what its weights are.
ARTIFACT_NAMES = {"none": "tflite_float32", "float16": "tflite_float16", "dynamic": "tflite_dynamic"}
WEIGHTS = {"none": "float32", "float16": "float16", "dynamic": "dynamic-range int8 weights"}


def convert_tflite(step_saved_model: str, quantization: str) -> bytes:
    """Convert the batch-1 step SavedModel, restricted to builtin ops so a Flex need fails here."""
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r} (expected one of {', '.join(QUANTIZATIONS)})")
    converter = tf.lite.TFLiteConverter.from_saved_model(step_saved_model, signature_keys=["step"])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization in ("float16", "dynamic"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        data = converter.convert()
    except Exception as error:  # the converter raises ConverterError and friends
        raise ExportError(f"TFLite conversion ({quantization}) failed with builtin ops only: "
                          f"{type(error).__name__}: {str(error).strip()[:2000]}") from None
    check_builtin_only(data, run_lib.TFLITE_FILES[quantization])
    return data


def tflite_operators(data: bytes) -> list[str]:
    """Operator names a .tflite flatbuffer uses; custom (incl. Flex) ops appear as `CUSTOM:<code>`."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = {value: key for key, value in vars(schema.BuiltinOperator).items() if not key.startswith("_")}
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    found = set()
    for code in model.operatorCodes or []:
        # Old files keep small codes in the deprecated field; newer ones in builtinCode.
        builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
            found.add(f"CUSTOM:{custom}")
        else:
            found.add(names.get(builtin, f"UNKNOWN:{builtin}"))
    return sorted(found)


def check_builtin_only(data: bytes, name: str) -> list[str]:
    """The file's operators; raises ExportError when one needs more than LiteRT's builtins."""
    operators = tflite_operators(data)
    extra = [op for op in operators if op.startswith(("CUSTOM", "UNKNOWN")) or "Flex" in op]
    if extra:
        raise ExportError(f"{name} needs non-builtin ops {extra}: a phone's LiteRT runtime without the "
                          "Flex delegate cannot run it")
    return operators


def convert_all(step_saved_model: str, out_dir: str, *, quantizations) -> None:
    """Write one .tflite file per quantization into out_dir (in this process)."""
    for quantization in quantizations:
        data = convert_tflite(step_saved_model, quantization)
        with open(os.path.join(out_dir, run_lib.TFLITE_FILES[quantization]), "wb") as handle:
            handle.write(data)


def needs_separate_process() -> bool:
    # The converter must run CPU-only; once TensorFlow in this process sees a GPU,
    # hiding it again is impossible, so the conversion moves to a CPU-only child.
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def convert_in_subprocess(step_saved_model: str, out_dir: str, *, quantizations) -> None:
    """convert_all in a child process that sees no GPU."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1")
    code = ("import sys; from keras_music import export_tflite; "
            "export_tflite.convert_all(sys.argv[1], sys.argv[2], quantizations=sys.argv[3].split(','))")
    result = subprocess.run([sys.executable, "-c", code, step_saved_model, out_dir, ",".join(quantizations)],
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise ExportError(f"TFLite conversion in a CPU-only process failed (exit {result.returncode}):\n{tail}")


def convert(step_saved_model: str, out_dir: str, *, quantizations, separate_process: bool) -> None:
    """One .tflite file per quantization into out_dir, in a CPU-only child process when `separate_process`."""
    if separate_process:
        convert_in_subprocess(step_saved_model, out_dir, quantizations=quantizations)
    else:
        convert_all(step_saved_model, out_dir, quantizations=quantizations)

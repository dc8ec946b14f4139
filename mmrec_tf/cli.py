"""Command-line flags generated from the config dataclasses.

Every field of `DataConfig`, `ModelConfig`, `TrainConfig`, `EvalConfig`,
`ExportConfig` and `ExperimentConfig` is one absl flag with the field's
default, its type, its choices (`config.CHOICES`) and its docstring entry as
help. A field is written once, in `config.py`; adding one there adds its
flag. Flag names are the field names, except where two sections share a
name (`RENAMED`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys

from absl import flags

from mmrec_tf import config as config_lib

SECTIONS = {
    "data": config_lib.DataConfig,
    "model": config_lib.ModelConfig,
    "train": config_lib.TrainConfig,
    "eval": config_lib.EvalConfig,
    "export": config_lib.ExportConfig,
}

# Fields whose flag has another name, so that every flag name is unique.
RENAMED = {("export", "top_k"): "export_top_k"}

# How a pair-list flag's entries are written: separator, form, example.
_PAIR_FORMS = {
    "columns": ("=", "field=column", "user=uid"),
}


# Flags of the run that are not config fields.
RUN_FLAGS = {
    "dataset_name": "Name recorded in results.json (default: the data folder's name, or "
    "'synthetic')."
}


def _docs(cls) -> dict[str, str]:
    """The `Attributes:` entries of a dataclass docstring, by field name."""
    text = (cls.__doc__ or "").split("Attributes:", 1)[-1]
    docs, name = {}, None
    for line in text.splitlines():
        match = re.match(r"^ {6}(\w+): ?(.*)$", line)
        if match:
            name = match.group(1)
            docs[name] = match.group(2).strip()
        elif name and line.strip():
            docs[name] += " " + line.strip()
    return docs


def flag_name(section: str, field: str) -> str:
    """The flag that sets `<section>.<field>`."""
    return RENAMED.get((section, field), field)


def fields_of(name: str) -> list[tuple[str, str]]:
    """The (section, field) pairs that the flag `name` sets ("" for a run-level field).

    Raises:
      ValueError: for a name that is not a config flag.
    """
    found = [(section, field.name) for section, field, flag, _ in _fields() if flag == name]
    if not found:
        raise ValueError(f"{name!r} is not a config flag: see python -m mmrec_tf.main --helpfull.")
    return found


def _fields():
    """(section, field, flag name, help) of every config field."""
    for section, cls in SECTIONS.items():
        docs = _docs(cls)
        for field in dataclasses.fields(cls):
            yield section, field, flag_name(section, field.name), docs.get(field.name, "")
    docs = _docs(config_lib.ExperimentConfig)
    for field in dataclasses.fields(config_lib.ExperimentConfig):
        if field.name not in SECTIONS:
            yield "", field, field.name, docs.get(field.name, "")


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one flag per config field (and the run's own flags) in `fv`."""
    f = dict(flag_values=fv)
    for section, field, name, help_text in _fields():
        default = field.default
        kind = field.type
        if field.name in config_lib.CHOICES:
            flags.DEFINE_enum(name, default, config_lib.CHOICES[field.name], help_text, **f)
        elif kind == "bool":
            flags.DEFINE_boolean(name, default, help_text, **f)
        elif kind == "int":
            flags.DEFINE_integer(name, default, help_text, **f)
        elif kind == "float":
            flags.DEFINE_float(name, default, help_text, **f)
        elif kind == "str":
            flags.DEFINE_string(name, default, help_text, **f)
        elif kind.startswith("tuple"):
            separator = _PAIR_FORMS.get(field.name, (":",))[0]
            flags.DEFINE_list(name, [_format_item(v, separator) for v in default], help_text, **f)
        else:
            raise TypeError(f"config field {section}.{field.name} has type {kind}: give it a flag")
    for name, help_text in RUN_FLAGS.items():
        flags.DEFINE_string(name, "", help_text, **f)


def _format_item(value, separator: str) -> str:
    """A default list entry as the flag writes it (pairs joined by their separator)."""
    if isinstance(value, tuple):
        return separator.join(str(v) for v in value)
    return str(value)


def _convert(field: dataclasses.Field, name: str, value):
    """A parsed flag value as the field's type; a bad entry names the flag and the form."""
    kind = field.type
    if not kind.startswith("tuple"):
        if field.name == "delimiter" and value in ("\\t", "tab"):
            return "\t"
        return value
    entries = [v.strip() for v in value or []]
    if kind == "tuple[str, ...]":
        return tuple(entries)
    if kind == "tuple[int, ...]":
        try:
            return tuple(int(v) for v in entries)
        except ValueError:
            raise ValueError(f"--{name}={','.join(entries)} must be integers, e.g. 10,20") from None
    separator, form, example = _PAIR_FORMS.get(field.name, (":", "key:value", "a:b"))
    pairs = []
    for entry in entries:
        key, sep, rest = entry.partition(separator)
        ok = bool(sep and key.strip() and rest.strip())
        if ok and kind == "tuple[tuple[str, float], ...]":
            try:
                rest = float(rest)
            except ValueError:
                ok = False
        if not ok:
            raise ValueError(f"--{name} entry {entry!r} is not {form}, e.g. {example}.")
        pairs.append((key.strip(), rest.strip() if isinstance(rest, str) else rest))
    return tuple(pairs)


def config_from_flags(fv: flags.FlagValues = flags.FLAGS) -> config_lib.ExperimentConfig:
    """Maps parsed flags to an ExperimentConfig (validated by its dataclasses)."""
    if not fv.model_dir:
        raise ValueError("--model_dir is required: checkpoints and results.json go there.")
    sections = {section: {} for section in SECTIONS}
    top = {}
    for section, field, name, _ in _fields():
        value = _convert(field, name, fv[name].value)
        (sections[section] if section else top)[field.name] = value
    return config_lib.ExperimentConfig(
        **{section: cls(**sections[section]) for section, cls in SECTIONS.items()}, **top
    )


@contextlib.contextmanager
def _native_stderr_silenced():
    """Sends what native code writes to stderr (fd 2) to /dev/null meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def start_tensorflow(*, list_devices: bool) -> None:
    """Imports TensorFlow (and lists its devices) without its start-up log.

    TensorFlow's native start-up lines (oneDNN notices, CUDA probes on a
    machine without a GPU) are written before its logging is configured, so
    TF_CPP_MIN_LOG_LEVEL does not hide them; the binaries start TensorFlow
    with fd 2 sent to /dev/null instead. `TF_CPP_MIN_LOG_LEVEL=0` in the
    environment shows them. Errors still raise as usual.

    Args:
      list_devices: also initialize the devices (where the CUDA probe
        logs). Not for a multi-worker run, whose collectives must be set up
        before the runtime starts.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return
    with _native_stderr_silenced():
        import tensorflow as tf

        if list_devices:
            tf.config.list_physical_devices()

"""The run record: what a model_dir was trained with, written once, checked after.

Training writes `<model_dir>/config.json` (the resolved configuration) and
`<model_dir>/data_fingerprint.json` (the data files' sizes and the
vocabularies' hashes) when it starts a run. Every later command on the same
folder (a resume, `--mode=evaluate`, `--mode=export`) compares its own
configuration and data with them: a field that would change what the
checkpoint means (the model, the training, the data) is an error that names
the field, both values and the fix, instead of a silent resume or a restore
into another model. Fields that only say how to run (epochs to reach,
verbosity, the device strategy, evaluation and export options) may differ.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from mmrec_tf import config as config_lib

CONFIG = "config.json"
FINGERPRINT = "data_fingerprint.json"

# Fields a later command may set differently from the run's record.
_MAY_DIFFER = (
    "mode",
    "model_dir",
    # Where fitted ALS factors were cached changes no weight (a hit is the fit).
    "model.als_cache_dir",
    "train.epochs",
    "train.verbose",
    "train.steps_per_execution",
    "train.distribution_strategy",
    "train.jit_compile",
    "train.early_stopping_patience",
    "eval.",
    "export.",
)


class RunRecordError(ValueError):
    """A command contradicts the run recorded in its model_dir."""


class DamagedFileError(ValueError):
    """A file the project wrote cannot be read: the message names it and the way out."""


def damaged(path: str, error: BaseException, fix: str) -> DamagedFileError:
    """The error for a state file that is truncated, empty or not what it should be."""
    reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    return DamagedFileError(f"{path} is damaged ({type(error).__name__}: {reason}). {fix}")


def read_json(path: str, fix: str):
    """The JSON in `path`; a damaged file is a DamagedFileError naming it and `fix`."""
    try:
        with open(path) as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as error:
        raise damaged(path, error, fix) from None


def read_array(path: str, fix: str) -> np.ndarray:
    """The NumPy array in `path`; a damaged file is a DamagedFileError naming it and `fix`."""
    try:
        return np.load(path)
    except (ValueError, OSError, EOFError) as error:
        raise damaged(path, error, fix) from None


def write_json(path: str, value) -> None:
    """Writes JSON atomically: a reader sees the old file or the new, never half."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    if isinstance(value, tuple):
        value = [list(v) if isinstance(v, tuple) else v for v in value]
    return {prefix[:-1]: value}


def fingerprint(data, split) -> dict:
    """The data a run trained on: files and sizes, vocabulary sizes and hashes."""

    def digest(tokens) -> str:
        h = hashlib.sha256()
        for token in tokens:
            h.update(str(token).encode("utf-8", "surrogateescape") + b"\n")
        return h.hexdigest()

    files = data.report.files
    return {
        "files": [
            {"path": os.path.abspath(f), "bytes": os.path.getsize(f) if os.path.exists(f) else None}
            for f in files
        ],
        "records": int(data.report.records),
        "num_users": int(split.num_users),
        "num_items": int(split.num_items),
        "users_sha256": digest(data.user_vocab.tokens),
        "items_sha256": digest(data.item_vocab.tokens),
        "content_sha256": data.report.content_sha256,
        "behaviors": list(split.behaviors.behaviors),
    }


def _plain(value):
    """`value` as a JSON record holds it (a tuple reads back as a list)."""
    return json.loads(json.dumps(value, default=str))


def differences(
    recorded: dict, current: dict, may_differ: tuple[str, ...] = ()
) -> list[tuple[str, object, object]]:
    """(field, recorded value, current value) of each field two configurations
    differ in, beside those `may_differ` names (a field, or a prefix ending in
    "."). A field the library has since retired matches when the record held
    its constant; a field added since matches at its default (the value that
    keeps what the library did before it); a field moved matches through the
    new one. Also what a tuning study is resumed against (`tune`)."""
    before, after = flatten(recorded), flatten(current)
    defaults = flatten(config_lib.ExperimentConfig().to_dict())
    out = []
    for key in sorted(set(before) | set(after)):
        if any(key == m or (m.endswith(".") and key.startswith(m)) for m in may_differ):
            continue
        if key not in after and key in config_lib.MOVED:
            # Recorded when one flag set both fields; the new one is compared.
            continue
        if key not in after and key in config_lib.RETIRED:
            if _plain(before[key]) != _plain(config_lib.RETIRED[key]):
                # The run used an option the library no longer has.
                out.append((key, before[key], "(retired: see benchmarks/README.md)"))
            continue
        if key not in before and key in defaults and _plain(after[key]) == _plain(defaults[key]):
            # Recorded before the field existed: every option is added at the
            # default that keeps what the library did before it.
            continue
        if before.get(key) != after.get(key):
            out.append((key, before.get(key, "(absent)"), after.get(key, "(absent)")))
    return out


def check(
    model_dir: str,
    config: config_lib.ExperimentConfig,
    data_fingerprint: dict,
    *,
    training: bool,
) -> bool:
    """Compares a command with the run recorded in `model_dir`.

    A resume (`training`) must match the data, the model and the training
    settings; an evaluation or an export, the data and the model (how the
    weights were trained does not change what they mean).

    Returns:
      Whether a record exists (False: nothing was trained there yet).

    Raises:
      RunRecordError: naming the first contradicting fields, both values and
        the fix.
    """
    path = os.path.join(model_dir, CONFIG)
    if not os.path.exists(path):
        return False
    recorded = read_json(
        path,
        "It records how the run was trained: restore it from a copy of the run, or give a "
        "new --model_dir for a new run.",
    )
    may_differ = _MAY_DIFFER if training else _MAY_DIFFER + ("train.",)
    problems = differences(recorded, config.to_dict(), may_differ)
    fingerprint_path = os.path.join(model_dir, FINGERPRINT)
    if os.path.exists(fingerprint_path):
        before = read_json(
            fingerprint_path,
            "It records the data the run trained on: restore it from a copy of the run, or "
            "give a new --model_dir for a new run.",
        )
        # The data's identity: vocabularies, record counts and the records'
        # content, not where the files sit (a run may be evaluated from
        # another working folder). A record from before the content hash
        # is checked on the rest.
        keys = ["records", "num_users", "num_items", "users_sha256", "items_sha256"]
        if before.get("content_sha256"):
            keys.append("content_sha256")
        for key in keys:
            if before.get(key) != data_fingerprint.get(key):
                problems.append((f"data.{key}", before.get(key), data_fingerprint.get(key)))
    if problems:
        listed = "; ".join(
            f"{k}: the run has {a!r}, this command {b!r}" for k, a, b in problems[:5]
        )
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        data_note = ""
        if any(k.startswith("data.") for k, _, _ in problems):
            data_note = (
                f" The data differs from the run's ({fingerprint_path} records what it "
                f"read: {', '.join(f['path'] for f in before.get('files', []))}): point "
                "--data_path at that data, or train on the new data in a new --model_dir."
            )
        raise RunRecordError(
            f"{model_dir} holds a run this command contradicts: {listed}{more}.{data_note} "
            f"Pass the run's own settings (recorded in {path}) to resume, evaluate or export "
            "it, or give a new --model_dir for a new run."
        )
    return True


def write(model_dir: str, config: config_lib.ExperimentConfig, data_fingerprint: dict) -> None:
    """Records a new run (the configuration and the data fingerprint)."""
    write_json(os.path.join(model_dir, CONFIG), config.to_dict())
    write_json(os.path.join(model_dir, FINGERPRINT), data_fingerprint)

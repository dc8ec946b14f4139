"""Versioned, atomic SavedModel export in the layout TensorFlow Serving watches.

`<export_dir>/<integer version>/saved_model.pb` + `variables/` +
`assets.extra/`. A version is written under a hidden temporary folder in
`export_dir` and renamed into place in one step, so a server watching the
folder never sees a half-written version, and an export that is killed
leaves no version folder behind (only a `.tmp-*` folder, which the next
export removes). An existing version is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil

import tensorflow as tf

from mmrec_tf import locks
from mmrec_tf.export import cascade
from mmrec_tf.export import serving
from mmrec_tf.export import warmup
from mmrec_tf.pipelines import schema

TMP_PREFIX = ".tmp-"
# What the exported model was trained on (assets.extra/), for evaluate_export.
TRAINING_DATA = "mmrec_training_data.json"
# The request bounds the signatures enforce (assets.extra/), for clients that
# split their batches: {"max_request_users": ..., "max_request_pairs": ...}.
REQUEST_LIMITS = "mmrec_request_limits.json"


def module_request_limits(module) -> dict:
    """The most users (`recommend`, `retrieve`) and pairs (`serving_default`) per request."""
    names = ("max_request_users", "max_request_pairs")
    return {name: int(getattr(module, name)) for name in names if hasattr(module, name)}


def request_limits(path: str) -> dict:
    """The request limits an export version wrote ({} for a version written without them)."""
    file = os.path.join(path, "assets.extra", REQUEST_LIMITS)
    if not os.path.exists(file):
        return {}
    with open(file) as f:
        return json.load(f)


def versions(export_dir: str) -> list[int]:
    """The integer versions present in `export_dir`, sorted."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir) if name.isdigit())


def _remove_stale_temporaries(export_dir: str) -> None:
    for name in os.listdir(export_dir):
        if name.startswith(TMP_PREFIX):
            pid = name.rsplit("-", 1)[-1]
            if pid.isdigit() and locks.process_alive(int(pid)):
                continue
            shutil.rmtree(os.path.join(export_dir, name), ignore_errors=True)


def export(
    module: serving.ServingModule | cascade.CascadeModule,
    export_dir: str,
    *,
    warmup_user_ids: list,
    warmup_item_ids: list,
    version: int | None = None,
    training_data: dict | None = None,
    locked: bool = False,
) -> str:
    """Writes `module` as the next version under `export_dir`.

    Args:
      module: the serving module (`recommend_from_history` gets a warm-up
        request too when the module has it).
      export_dir: the folder TensorFlow Serving watches.
      warmup_user_ids: a few known raw user ids for the warm-up requests.
      warmup_item_ids: as many known raw item ids.
      version: the version number; default one more than the latest.
      training_data: the fingerprint of the data the model was trained on
        (`run_record.fingerprint`), kept as `assets.extra/TRAINING_DATA` so
        an evaluation on other data can say what the export knows.
      locked: the caller already holds `export_dir`'s lock (a run takes it
        before its slow work, so a second exporter fails at once).

    Returns:
      The path of the new version folder.

    Raises:
      FileExistsError: if `version` already exists.
      mmrec_tf.locks.LockError: if another process is exporting to `export_dir`.
    """
    os.makedirs(export_dir, exist_ok=True)
    if locked:
        return _export_locked(
            module, export_dir, warmup_user_ids, warmup_item_ids, version, training_data
        )
    # One exporter at a time picks the next version and writes it.
    with locks.exclusive(export_dir, what="--export_dir"):
        return _export_locked(
            module, export_dir, warmup_user_ids, warmup_item_ids, version, training_data
        )


def _export_locked(
    module, export_dir, warmup_user_ids, warmup_item_ids, version, training_data
) -> str:
    _remove_stale_temporaries(export_dir)
    present = versions(export_dir)
    version = version if version is not None else (present[-1] + 1 if present else 1)
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(
            f"{final} exists: an export never overwrites a version. Pick another version, or "
            "leave it unset to take the next one."
        )
    tmp = os.path.join(export_dir, f"{TMP_PREFIX}{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    signatures = module.signatures()
    tf.saved_model.save(module, tmp, signatures=signatures)
    history = schema.RECOMMEND_FROM_HISTORY in signatures
    warmup.write(
        tmp,
        user_ids=warmup_user_ids,
        item_ids=warmup_item_ids,
        history_behavior=module.behavior_names[0] if history else "",
    )
    if training_data is not None:
        with open(os.path.join(tmp, "assets.extra", TRAINING_DATA), "w") as f:
            json.dump(training_data, f, indent=2)
    with open(os.path.join(tmp, "assets.extra", REQUEST_LIMITS), "w") as f:
        json.dump(module_request_limits(module), f, indent=2)
    os.rename(tmp, final)  # atomic on one file system; fails if `final` appeared meanwhile
    return final

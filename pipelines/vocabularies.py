"""Vocabularies: raw user and item ids <-> contiguous indices.

A vocabulary travels with the model: it is saved as a text file (one raw id a
line, line k is index k) beside the checkpoints and baked into the exported
SavedModel, so serving takes raw string ids.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Raw ids in index order.

    Attributes:
      tokens: [size] raw ids as Python strings; token k has index k.
    """

    tokens: np.ndarray

    @property
    def size(self) -> int:
        return len(self.tokens)

    def lookup(self, raw_ids) -> np.ndarray:
        """Maps raw ids (any type whose str() is the token) to indices, -1 if unknown."""
        index = pd.Index(self.tokens)
        return index.get_indexer(pd.Index(np.asarray(raw_ids).astype(str))).astype(np.int64)

    def save(self, path: str) -> None:
        """Writes one token a line, atomically (a reader never sees half a file)."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            for token in self.tokens:
                f.write(f"{token}\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> Vocabulary:
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
        return cls(np.array(tokens, dtype=object))


def build(raw_ids: np.ndarray) -> tuple[Vocabulary, np.ndarray]:
    """Builds a vocabulary over raw ids, sorted so the result is order-independent.

    Args:
      raw_ids: [n] int64 or object (str/bytes) raw ids.

    Returns:
      The vocabulary and [n] int32 indices of `raw_ids`.

    Raises:
      ValueError: if a raw id contains a newline (it could not be saved).
    """
    if raw_ids.dtype.kind in "iu":
        uniques, inverse = np.unique(raw_ids, return_inverse=True)
        tokens = uniques.astype(str).astype(object)
    else:
        decoded = np.array(
            [
                r.decode("utf-8", "replace") if isinstance(r, bytes) else str(r)
                for r in pd.unique(raw_ids)
            ],
            dtype=object,
        )
        order = np.argsort(decoded.astype(str), kind="stable")
        tokens = decoded[order]
        codes, uniques = pd.factorize(raw_ids)
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        # pd.unique and pd.factorize list uniques in the same (first-seen) order.
        inverse = rank[codes]
        if any("\n" in t for t in tokens):
            raise ValueError("an id contains a newline; ids must be single-line tokens.")
    return Vocabulary(tokens), inverse.astype(np.int32)

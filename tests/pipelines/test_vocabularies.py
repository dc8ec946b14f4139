"""Vocabularies: sorted, order-independent, saved and loaded, unknown ids."""

import numpy as np

from mmrec_tf.pipelines import vocabularies


def test_integer_ids_map_to_sorted_indices():
    vocab, index = vocabularies.build(np.array([30, 10, 20, 10], np.int64))
    assert vocab.tokens.tolist() == ["10", "20", "30"]
    assert index.tolist() == [2, 0, 1, 0]


def test_string_ids_are_order_independent():
    a, ia = vocabularies.build(np.array([b"b", b"a", b"c"], object))
    b, ib = vocabularies.build(np.array([b"c", b"b", b"a"], object))
    assert a.tokens.tolist() == b.tokens.tolist() == ["a", "b", "c"]
    assert ia.tolist() == [1, 0, 2] and ib.tolist() == [2, 1, 0]


def test_save_load_and_lookup_with_unknown(tmp_path):
    vocab, _ = vocabularies.build(np.array([b"x", b"y"], object))
    path = str(tmp_path / "v" / "items.txt")
    vocab.save(path)
    loaded = vocabularies.Vocabulary.load(path)
    assert loaded.lookup(["y", "x", "zz"]).tolist() == [1, 0, -1]

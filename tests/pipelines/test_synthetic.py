"""The synthetic log: layout, determinism, learnable supportive signal."""

import numpy as np

from mmrec_tf import config as config_lib
from mmrec_tf.pipelines import readers
from mmrec_tf.pipelines import synthetic


def test_same_spec_writes_same_bytes_in_userbehavior_layout(tmp_path):
    spec = synthetic.SyntheticSpec(
        num_users=50, num_items=100, records_per_user=20, seed=3, chunk_users=16
    )
    a, b = tmp_path / "a.csv", tmp_path / "b.csv.gz"
    stats = synthetic.write_userbehavior(str(a), spec)
    synthetic.write_userbehavior(str(b), spec)
    log = readers.read_interactions(
        config_lib.DataConfig(data_path=str(b), data_format="userbehavior")
    )
    assert log.report.records == stats["records"] == len(a.read_text().splitlines())
    assert set(log.behavior_names) == {"pv", "cart", "fav", "buy"}
    assert 15 * 50 < stats["records"] < 25 * 50
    assert len(np.unique(log.users)) == 50 and np.unique(log.items).size <= 100


def test_buys_follow_carts_more_often_than_views(tmp_path):
    spec = synthetic.SyntheticSpec(num_users=400, num_items=500, records_per_user=40, seed=0)
    path = str(tmp_path / "s.csv")
    synthetic.write_userbehavior(path, spec)
    log = readers.read_interactions(
        config_lib.DataConfig(data_path=path, data_format="userbehavior")
    )
    names = log.behavior_names
    keys = log.users * 10**9 + log.items

    def pairs(name):
        return set(keys[log.behaviors == names.index(name)].tolist())

    carted, viewed, bought = pairs("cart"), pairs("pv"), pairs("buy")
    p_buy_given_cart = len(bought & carted) / len(carted)
    p_buy_given_view_only = len(bought & (viewed - carted)) / len(viewed - carted)
    assert p_buy_given_cart > 3 * p_buy_given_view_only

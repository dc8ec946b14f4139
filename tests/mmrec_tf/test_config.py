"""Configs validate their fields and name the bad one."""

import pytest

from mmrec_tf import config as config_lib


@pytest.mark.parametrize(
    "cls,kwargs,message",
    [
        (config_lib.DataConfig, {"data_format": "parquet"}, "data_format='parquet'"),
        (config_lib.DataConfig, {"data_format": "tsv"}, "data_path is empty"),
        (config_lib.DataConfig, {"supportive_behaviors": ("buy",)}, "supportive_behaviors"),
        (config_lib.DataConfig, {"ignore_behaviors": ("buy",)}, "ignore_behaviors"),
        (
            config_lib.DataConfig,
            {"data_format": "csv", "data_path": "x", "columns": (("user", "u"),)},
            "names the fields",
        ),
        (config_lib.ModelConfig, {"gating": "soft"}, "gating='soft'"),
        (config_lib.ModelConfig, {"mlp_layers": 9}, "mlp_layers=9"),
        (config_lib.TrainConfig, {"supportive_negative_ratio": 1.5}, "supportive_negative_ratio"),
        (config_lib.TrainConfig, {"loss": "hinge"}, "loss='hinge'"),
        (config_lib.EvalConfig, {"full_ranking_cases": -1}, "full_ranking_cases=-1"),
        (config_lib.ExperimentConfig, {"mode": "serve"}, "mode='serve'"),
    ],
)
def test_invalid_field_raises_value_error_naming_it(cls, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cls(**kwargs)


def test_experiment_config_serializes_to_json():
    assert '"mf_dim": 8' in config_lib.ExperimentConfig().to_json()


def test_synthetic_data_with_a_data_path_is_an_error():
    with pytest.raises(ValueError, match="data_path='log.csv' is invalid.*synthetic"):
        config_lib.DataConfig(data_format="synthetic", data_path="log.csv")

"""The flags generated from the config dataclasses."""

import dataclasses

import pytest
from absl import flags

from mmrec_tf import cli
from mmrec_tf import config as config_lib


def _parse(argv):
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(["mmrec_tf"] + argv)
    return fv


def test_every_config_field_is_one_flag_with_its_docstring_as_help():
    fv = _parse([])
    for section, cls in cli.SECTIONS.items():
        docs = cli._docs(cls)
        for field in dataclasses.fields(cls):
            name = cli.flag_name(section, field.name)
            assert name in fv, f"{section}.{field.name} has no flag"
            assert docs.get(field.name), f"{section}.{field.name} has no docstring entry"
            assert docs[field.name] in fv[name].help
            if field.name in config_lib.CHOICES:
                assert fv[name].parser.enum_values == list(config_lib.CHOICES[field.name])


def test_default_flags_give_the_default_config():
    config = cli.config_from_flags(_parse(["--model_dir=runs/x"]))
    assert config == config_lib.ExperimentConfig(model_dir="runs/x")


def test_one_seed_flag_seeds_the_run():
    config = cli.config_from_flags(_parse(["--model_dir=x", "--seed=7"]))
    assert config.train.seed == 7
    assert not hasattr(config.data, "seed")
    # The sampled protocol's negatives keep their own fixed seed.
    assert config.eval.seed == config_lib.EvalConfig.seed


def test_list_flags_convert_to_the_field_types():
    config = cli.config_from_flags(
        _parse(
            [
                "--model_dir=x",
                "--data_format=csv",
                "--data_path=log.csv",
                "--columns=user=uid,item=iid,behavior=act",
                "--delimiter=tab",
                "--loss=softmax",
                "--supportive_positive_weight=0",
                "--ignore_behaviors=pv,fav",
            ]
        )
    )
    assert config.data.columns == (("user", "uid"), ("item", "iid"), ("behavior", "act"))
    assert config.data.delimiter == "\t"
    assert config.data.ignore_behaviors == ("pv", "fav")


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--columns=user", "field=column"),
        ("--columns=user:uid", "field=column"),
    ],
)
def test_a_bad_list_entry_names_the_flag_and_the_form(flag, message):
    with pytest.raises(ValueError, match=message):
        cli.config_from_flags(_parse(["--model_dir=x", flag]))


def test_model_dir_is_required():
    with pytest.raises(ValueError, match="--model_dir"):
        cli.config_from_flags(_parse([]))


def test_fields_of_names_what_a_flag_sets():
    assert cli.fields_of("mf_dim") == [("model", "mf_dim")]
    assert cli.fields_of("seed") == [("train", "seed")]
    assert cli.fields_of("export_top_k") == [("export", "top_k")]
    assert cli.fields_of("mode") == [("", "mode")]
    with pytest.raises(ValueError, match="no_such_flag"):
        cli.fields_of("no_such_flag")

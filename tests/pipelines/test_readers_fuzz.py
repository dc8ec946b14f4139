"""Readers fuzzed: random bytes and mutated valid lines parse or fail clearly."""

import os
import tempfile

import hypothesis
from hypothesis import strategies as st

from mmrec_tf import config as config_lib
from mmrec_tf.pipelines import readers

VALID = ["1,10,5,pv,100", "1,10,5,buy,200", "2,11,5,cart,150", "2,12,6,fav,151"]
FORMATS = {
    "userbehavior": {},
    "tsv": {},
    "csv": {"columns": (("user", "0"), ("item", "1"), ("behavior", "3")), "has_header": False},
}


def _read(data: bytes, data_format: str, **kwargs):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "fuzz.gz" if data[:2] == b"\x1f\x8b" else "fuzz.csv")
        with open(path, "wb") as f:
            f.write(data)
        config = config_lib.DataConfig(
            data_path=path, data_format=data_format, **FORMATS[data_format], **kwargs
        )
        try:
            log = readers.read_interactions(config)
        except readers.DataError as error:
            assert path in str(error) or config.data_path in str(error)
            return None
        assert len(log.users) == log.report.records
        return log


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(data=st.binary(max_size=300), data_format=st.sampled_from(sorted(FORMATS)))
def test_random_bytes_parse_or_raise_data_error(data, data_format):
    _read(data, data_format)
    _read(data, data_format, on_bad_record="skip")


@st.composite
def _mutated(draw):
    lines = list(VALID)
    for _ in range(draw(st.integers(1, 4))):
        k = draw(st.integers(0, len(lines) - 1))
        line = lines[k]
        kind = draw(st.sampled_from(["delete", "insert", "replace", "dup", "cut"]))
        pos = draw(st.integers(0, len(line)))
        char = draw(st.sampled_from([",", "\t", "\r", " ", "x", "-", "9", "\x00", "é", ""]))
        if kind == "delete":
            line = line[:pos] + line[pos + 1 :]
        elif kind == "insert":
            line = line[:pos] + char + line[pos:]
        elif kind == "replace":
            line = line[:pos] + char + line[pos + 1 :]
        elif kind == "dup":
            lines.insert(k, line)
        else:
            line = line[:pos]
        lines[k] = line
    return "\n".join(lines).encode("utf-8")


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(data=_mutated())
def test_mutated_valid_lines_keep_every_good_record_or_raise(data):
    strict = _read(data, "userbehavior")
    skipped = _read(data, "userbehavior", on_bad_record="skip")
    if strict is not None:
        assert skipped is not None and skipped.report.records == strict.report.records
    if skipped is not None:
        report = skipped.report
        assert report.records + report.skipped == report.lines  # nothing lost silently

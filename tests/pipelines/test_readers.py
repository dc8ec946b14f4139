"""Readers: each layout, gzip and globs, and every bad-input case."""

import dataclasses
import gzip
import os

import numpy as np
import pytest

from mmrec_tf import config as config_lib
from mmrec_tf.pipelines import readers

UB_LINES = ["1,10,5,pv,100", "1,10,5,buy,200", "2,11,5,cart,150", "2,10,5,buy,160"]
TSV_LINES = [
    "user\titem\tbehavior\ttimestamp\tsplit",
    "1\t10\tbuy\t\ttrain",
    "1\t11\tcart\t5\ttrain",
    "2\t10\tbuy\t7\ttest",
]


def _write(path, lines, *, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt") as f:
        f.write("\n".join(lines) + ("\n" if lines else ""))
    return str(path)


def _ub(path, **kwargs):
    return config_lib.DataConfig(data_path=str(path), data_format="userbehavior", **kwargs)


def test_userbehavior_reads_every_field(tmp_path):
    log = readers.read_interactions(_ub(_write(tmp_path / "a.csv", UB_LINES)))
    assert log.users.tolist() == [1, 1, 2, 2]
    assert log.items.tolist() == [10, 10, 11, 10]
    assert [log.behavior_names[c] for c in log.behaviors] == ["pv", "buy", "cart", "buy"]
    assert log.timestamps.tolist() == [100, 200, 150, 160]
    assert (log.splits == -1).all()
    assert log.report.records == 4 and log.report.skipped == 0


def test_gzip_and_glob_of_shards_read_in_order(tmp_path):
    _write(tmp_path / "part-0.csv.gz", UB_LINES[:2], gz=True)
    _write(tmp_path / "part-1.csv", UB_LINES[2:])
    log = readers.read_interactions(_ub(tmp_path / "part-*"))
    assert log.users.tolist() == [1, 1, 2, 2]
    assert len(log.report.files) == 2


def test_tsv_layout_with_empty_timestamp_and_split(tmp_path):
    log = readers.read_interactions(
        config_lib.DataConfig(data_path=_write(tmp_path / "i.tsv", TSV_LINES), data_format="tsv")
    )
    assert log.timestamps.tolist() == [-1, 5, 7]
    assert log.splits.tolist() == [0, 0, 2]


def test_csv_with_string_ids_and_column_mapping(tmp_path):
    lines = ["ts;action;uid;iid", "3;buy;alice;book-1", "4;click;bob;book-2"]
    config = config_lib.DataConfig(
        data_path=_write(tmp_path / "c.csv", lines),
        data_format="csv",
        delimiter=";",
        columns=(("user", "uid"), ("item", "iid"), ("behavior", "action"), ("timestamp", "ts")),
    )
    log = readers.read_interactions(config)
    assert log.users.tolist() == [b"alice", b"bob"]
    assert log.items.tolist() == [b"book-1", b"book-2"]
    assert log.timestamps.tolist() == [3, 4]


def test_csv_by_position_without_header(tmp_path):
    config = config_lib.DataConfig(
        data_path=_write(tmp_path / "c.csv", ["u1|i1|buy", "u2|i1|view"]),
        data_format="csv",
        delimiter="|",
        has_header=False,
        columns=(("user", "0"), ("item", "1"), ("behavior", "2")),
    )
    log = readers.read_interactions(config)
    assert log.report.records == 2 and (log.timestamps == -1).all()


BAD_CASES = [
    ("short_line", ["1,10,5,buy,200", "1,10,5,buy"], 2, "wrong number of fields"),
    ("long_line", ["1,10,5,buy,200,9"], 1, "wrong number of fields"),
    ("unknown_behavior", ["1,10,5,buy,200", "1,11,5,clik,201"], 2, "unknown behavior"),
    ("non_numeric_user", ["1,10,5,buy,200", "x1,10,5,buy,200"], 2, "non-numeric user id"),
    ("non_numeric_item", ["1,1O,5,buy,200"], 1, "non-numeric item id"),
    (
        "non_numeric_timestamp",
        ["1,10,5,buy,200", "1,10,5,buy,2017-11-25"],
        2,
        "bad timestamp",
    ),
    ("negative_timestamp", ["1,10,5,buy,200", "1,10,5,buy,-5"], 2, "bad timestamp"),
    ("huge_timestamp", ["1,10,5,buy,200", "1,10,5,buy,9223372036854775808"], 2, "bad timestamp"),
    ("huge_user", ["1,10,5,buy,200", "9223372036854775808,10,5,buy,200"], 2, "non-numeric user id"),
    ("empty_line", ["1,10,5,buy,200", "", "1,10,5,buy,3"], 2, "wrong number of fields"),
]


@pytest.mark.parametrize("name,lines,line_no,reason", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_record_error_names_file_line_and_fix(tmp_path, name, lines, line_no, reason):
    path = _write(tmp_path / f"{name}.csv", lines)
    with pytest.raises(readers.DataError) as error:
        readers.read_interactions(_ub(path))
    message = str(error.value)
    assert f"{path}:{line_no}:" in message
    assert reason in message
    assert "Fix:" in message and "--on_bad_record=skip" in message


@pytest.mark.parametrize("name,lines,line_no,reason", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_skip_counts_bad_records_and_keeps_the_rest(tmp_path, name, lines, line_no, reason):
    lines = lines + ["9,90,5,buy,300"]
    log = readers.read_interactions(
        _ub(_write(tmp_path / f"{name}.csv", lines), on_bad_record="skip")
    )
    assert log.report.bad_records == {reason: 1}
    assert log.report.examples[0][1] == line_no
    assert log.report.lines == len(lines)
    assert log.report.records == len(lines) - 1


def test_missing_column_in_tsv_header(tmp_path):
    path = _write(tmp_path / "i.tsv", ["user\titem\tbehavior\tsplit", "1\t2\tbuy\ttrain"])
    with pytest.raises(readers.DataError, match=r"i.tsv:1: missing column 'timestamp'"):
        readers.read_interactions(config_lib.DataConfig(data_path=path, data_format="tsv"))


def test_unknown_split_value(tmp_path):
    path = _write(tmp_path / "i.tsv", [TSV_LINES[0], "1\t2\tbuy\t3\ttset"])
    with pytest.raises(readers.DataError, match=r"i.tsv:2: unknown split"):
        readers.read_interactions(config_lib.DataConfig(data_path=path, data_format="tsv"))


def test_empty_file_raises_and_skip_reports_it(tmp_path):
    empty = _write(tmp_path / "empty.csv", [])
    with pytest.raises(readers.DataError, match="empty.csv: the file is empty"):
        readers.read_interactions(_ub(empty))
    full = _write(tmp_path / "full.csv", UB_LINES)
    log = readers.read_interactions(_ub(f"{empty},{full}", on_bad_record="skip"))
    assert log.report.empty_files == [empty] and log.report.records == 4


def test_target_behavior_that_never_occurs(tmp_path):
    path = _write(tmp_path / "a.csv", ["1,10,5,pv,100", "1,11,5,cart,100"])
    with pytest.raises(readers.DataError, match=r"'buy' never occurs.*\['cart', 'pv'\]"):
        readers.read_interactions(_ub(path))


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(readers.DataError, match="no such file"):
        readers.read_interactions(_ub(tmp_path / "nope.csv"))


def test_closed_schema_rejects_unlisted_behavior_and_ignores_listed(tmp_path):
    path = _write(tmp_path / "a.csv", UB_LINES)
    with pytest.raises(readers.DataError, match="a.csv:1: unknown behavior"):
        readers.read_interactions(_ub(path, supportive_behaviors=("cart",)))
    log = readers.read_interactions(
        _ub(path, supportive_behaviors=("cart",), ignore_behaviors=("pv",))
    )
    assert log.report.excluded_behaviors == {"pv": 1}
    assert log.report.records == 3


def test_chunk_boundaries_keep_line_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CHUNK_LINES", 3)
    lines = [f"{u},{u},5,buy,{u}" for u in range(1, 8)] + ["8,8,5,buy"]
    with pytest.raises(readers.DataError, match=r"a.csv:8: wrong number of fields"):
        readers.read_interactions(_ub(_write(tmp_path / "a.csv", lines)))
    log = readers.read_interactions(_ub(_write(tmp_path / "b.csv", lines[:7])))
    np.testing.assert_array_equal(log.users, np.arange(1, 8))


def test_real_taobao_cml_reads_without_bad_records(shared_data):
    path = os.path.join(shared_data, "taobao_cml", "interactions.tsv.gz")
    log = readers.read_interactions(config_lib.DataConfig(data_path=path, data_format="tsv"))
    assert log.report.records == 367412 and log.report.skipped == 0
    assert sorted(log.behavior_names) == ["buy", "cart", "fav"]


def _damaged_gzip(tmp_path, how):
    lines = [f"{u},{u % 7},1,buy,{100 + u}" for u in range(3000)]
    whole = _write(tmp_path / "whole.csv.gz", lines, gz=True)
    data = open(whole, "rb").read()
    path = tmp_path / f"{how}.csv.gz"
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # a flipped byte inside the deflate stream: the CRC check fails
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    return whole, str(path)


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_a_damaged_gzip_is_an_error_naming_the_file(tmp_path, how):
    whole, damaged = _damaged_gzip(tmp_path, how)
    assert readers.gzip_problem(whole) is None
    with pytest.raises(readers.DataError, match=rf"{how}\.csv\.gz: the gzip") as error:
        readers.read_interactions(_ub(damaged))
    assert "--on_bad_record=skip" in str(error.value)


def test_skip_leaves_out_a_damaged_gzip_whole_and_counts_it(tmp_path):
    whole, damaged = _damaged_gzip(tmp_path, "truncated")
    log = readers.read_interactions(_ub(f"{whole},{damaged}", on_bad_record="skip"))
    assert log.report.records == 3000  # the intact file only, no half-read tail
    assert [p for p, _ in log.report.damaged_files] == [damaged]
    assert "cut short" in log.report.damaged_files[0][1]
    assert "damaged" in log.report.summary()


def test_a_lone_damaged_gzip_skipped_names_the_damage_not_the_delimiter(tmp_path):
    _, damaged = _damaged_gzip(tmp_path, "truncated")
    with pytest.raises(readers.DataError, match=r"skipped as damaged.*cut short") as error:
        readers.read_interactions(_ub(damaged, on_bad_record="skip"))
    assert "delimiter" not in str(error.value)


def test_a_folder_as_data_path_is_an_error_that_says_so(tmp_path):
    with pytest.raises(readers.DataError, match="is a folder, not a file"):
        readers.read_interactions(_ub(tmp_path))


def test_duplicate_records_are_counted_in_the_report(tmp_path):
    lines = ["1,10,5,buy,200", "1,10,5,buy,200", "1,10,5,buy,201", "2,10,5,buy,200"]
    log = readers.read_interactions(_ub(_write(tmp_path / "d.csv", lines)))
    assert log.report.records == 4 and log.report.duplicate_records == 1
    assert "1 records repeat an earlier one exactly" in log.report.summary()


def test_ids_that_are_not_utf8_are_bad_records_not_one_token(tmp_path):
    path = tmp_path / "b.csv"
    # Two different invalid byte ids would both decode to U+FFFD.
    path.write_bytes(b"uid,iid,action\nu1,\xff1,buy\nu1,\xfe1,buy\nu2,ok,buy\n")
    config = config_lib.DataConfig(
        data_path=str(path),
        data_format="csv",
        columns=(("user", "uid"), ("item", "iid"), ("behavior", "action")),
    )
    with pytest.raises(readers.DataError, match=r"b\.csv:2: id is not valid UTF-8"):
        readers.read_interactions(config)
    log = readers.read_interactions(dataclasses.replace(config, on_bad_record="skip"))
    assert log.items.tolist() == [b"ok"] and log.report.bad_records == {"id is not valid UTF-8": 2}


def _csv(path, text: str, **kwargs):
    """A column-mapped CSV config over `text`, written byte for byte."""
    with open(path, "w", newline="") as f:
        f.write(text)
    columns = (("user", "user"), ("item", "item"), ("behavior", "behavior"), ("timestamp", "ts"))
    return config_lib.DataConfig(data_path=str(path), data_format="csv", columns=columns, **kwargs)


def test_rfc4180_quoted_fields_keep_no_quotes(tmp_path):
    text = (
        '"user","item","behavior","ts"\r\n'
        '"u1","i1","buy","1"\r\n'
        "u1,i2,cart,2\r\n"
        '"u,2","say ""hi""","buy",3\r\n'
        '"u3","multi\nline","buy",4\r\n'
        '"u\r4",i1,buy,5\r\n'
    )
    log = readers.read_interactions(_csv(tmp_path / "q.csv", text))
    # "u1" and u1 are one user; a quoted delimiter, doubled quotes, a line
    # break and a carriage return inside quotes are part of the id.
    assert log.users.tolist() == [b"u1", b"u1", b"u,2", b"u3", b"u\r4"]
    assert log.items.tolist() == [b"i1", b"i2", b'say "hi"', b"multi\nline", b"i1"]
    assert log.timestamps.tolist() == [1, 2, 3, 4, 5]
    assert log.report.records == 5 and log.report.skipped == 0
    assert not any(b'"' in u for u in log.users)


def test_a_bad_quoted_record_names_the_line_it_starts_on(tmp_path):
    text = 'user,item,behavior,ts\nu1,"two\nlines",buy,1\n,i2,buy,2\n'
    with pytest.raises(readers.DataError, match=r"q\.csv:4: empty user or item id"):
        readers.read_interactions(_csv(tmp_path / "q.csv", text))
    # A quote left open: the malformed CSV is named with the fix.
    text = 'user,item,behavior,ts\nu1,"i1,buy,1\n'
    with pytest.raises(readers.DataError, match=r"q2\.csv:2: the CSV is malformed.*RFC 4180"):
        readers.read_interactions(_csv(tmp_path / "q2.csv", text))


def test_quoted_csv_in_gzip_with_skipping_counts_bad_utf8(tmp_path):
    path = tmp_path / "q.csv.gz"
    with gzip.open(path, "wb") as f:
        f.write(b'user,item,behavior,ts\n"u1",i1,buy,1\nu\xff2,i2,buy,2\n"u3","i3",buy,3\n')
    columns = (("user", "user"), ("item", "item"), ("behavior", "behavior"), ("timestamp", "ts"))
    config = config_lib.DataConfig(
        data_path=str(path), data_format="csv", columns=columns, on_bad_record="skip"
    )
    log = readers.read_interactions(config)
    assert log.users.tolist() == [b"u1", b"u3"]
    assert log.report.skipped == 1 and log.report.examples[0][1] == 3

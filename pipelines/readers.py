"""Streams interaction records from delimited files with tf.data.

Three layouts are read: the Taobao UserBehavior CSV (no header;
`user_id,item_id,category_id,behavior_type,timestamp`), the tab-separated
`user item behavior timestamp split` layout with a header, and any CSV/TSV
through a column mapping. Files are read line by line with
`tf.data.TextLineDataset` (plain or gzip, one file or a glob of shards), in
chunks that are parsed and validated with vectorized `tf.strings` ops, so a
log far larger than memory for its text streams through.

Every bad record is either an error that names the file, the line and the fix
(`on_bad_record="error"`), or skipped and counted in a `DataReport`
(`on_bad_record="skip"`). Nothing is dropped silently.
"""

from __future__ import annotations

import csv
import dataclasses
import glob as glob_lib
import gzip
import hashlib
import itertools
import os
import zlib

import numpy as np
import tensorflow as tf

from mmrec_tf import config as config_lib
from mmrec_tf.pipelines import schema

CHUNK_LINES = 1 << 18
_MAX_EXAMPLES = 20

# At most 18 digits: every such integer fits int64 (a longer one would overflow).
_INT_PATTERN = r"\s*-?[0-9]{1,18}\s*"
# Unix seconds: not negative (a negative one would silently change the split).
_STAMP_PATTERN = r"\s*[0-9]{1,18}\s*"
_BEHAVIOR_PATTERN = r"[A-Za-z_][A-Za-z0-9_.\-]*"

# Reasons a record is rejected, with the fix each error message names.
_REASONS = {
    1: ("wrong number of fields", "every line needs {n} fields separated by {sep!r}"),
    2: ("empty user or item id", "give every record a user id and an item id"),
    3: (
        "non-numeric user id",
        "this layout needs integer ids of at most 18 digits; use --data_format=csv for string ids",
    ),
    4: (
        "non-numeric item id",
        "this layout needs integer ids of at most 18 digits; use --data_format=csv for string ids",
    ),
    5: (
        "unknown behavior",
        "use one of the behaviors {known}, or add it to "
        "--supportive_behaviors / --ignore_behaviors",
    ),
    6: (
        "bad timestamp",
        "timestamps must be non-negative integer Unix seconds of at most 18 digits{empty_ok}",
    ),
    7: ("unknown split", "the split column takes train, valid or test"),
    8: ("id is not valid UTF-8", "re-encode the file as UTF-8 (ids are text)"),
}


class DataError(ValueError):
    """Bad input data: the message names the file, the line and the fix."""


@dataclasses.dataclass
class DataReport:
    """What the readers read, kept, skipped and excluded.

    Attributes:
      files: the files read, in order.
      lines: data lines read (headers excluded).
      records: records kept.
      bad_records: skipped records by reason (only with on_bad_record=skip).
      examples: the first skipped records as (file, line, reason, text).
      excluded_behaviors: records of behaviors excluded on purpose.
      empty_files: files that held no records (only with skip).
      damaged_files: gzip files cut short or corrupt, with the reason, skipped
        whole (only with skip; otherwise they are an error).
      duplicate_records: records repeating an earlier one exactly (user,
        item, behavior, timestamp, split). They are kept: ALS confidence and
        pairwise positives count a pair once per behavior anyway, and the
        count says how much of the log repeats itself.
      content_sha256: a hash of the records read, in order (ids, behavior
        names, timestamps, splits; computed during the read): two logs with
        the same counts and vocabularies but other records differ here.
    """

    files: list = dataclasses.field(default_factory=list)
    lines: int = 0
    records: int = 0
    bad_records: dict = dataclasses.field(default_factory=dict)
    examples: list = dataclasses.field(default_factory=list)
    excluded_behaviors: dict = dataclasses.field(default_factory=dict)
    empty_files: list = dataclasses.field(default_factory=list)
    damaged_files: list = dataclasses.field(default_factory=list)
    duplicate_records: int = 0
    content_sha256: str = ""

    @property
    def skipped(self) -> int:
        return int(sum(self.bad_records.values()))

    def to_dict(self) -> dict:
        result = dataclasses.asdict(self)
        result["skipped"] = self.skipped
        return result

    def summary(self) -> str:
        parts = [
            f"read {self.lines} lines from {len(self.files)} file(s), kept {self.records} records"
        ]
        if self.bad_records:
            parts.append(f"skipped {self.skipped} bad records {dict(self.bad_records)}")
        if self.excluded_behaviors:
            parts.append(f"excluded behaviors {dict(self.excluded_behaviors)}")
        if self.empty_files:
            parts.append(f"empty files {self.empty_files}")
        if self.damaged_files:
            parts.append(f"skipped damaged files {self.damaged_files}")
        if self.duplicate_records:
            parts.append(f"{self.duplicate_records} records repeat an earlier one exactly")
        return "; ".join(parts)


@dataclasses.dataclass
class RawLog:
    """Interaction records with raw ids.

    Attributes:
      users: [n] raw user ids (int64, or object strings for string ids).
      items: [n] raw item ids, like `users`.
      behaviors: [n] int16 codes into `behavior_names`.
      behavior_names: behavior name of each code.
      timestamps: [n] int64 Unix seconds, -1 where missing.
      splits: [n] int8 split codes (schema.SPLIT_*), -1 where not given.
      report: what was read and skipped.
    """

    users: np.ndarray
    items: np.ndarray
    behaviors: np.ndarray
    behavior_names: list
    timestamps: np.ndarray
    splits: np.ndarray
    report: DataReport

    def __len__(self) -> int:
        return len(self.users)


@dataclasses.dataclass(frozen=True)
class _Layout:
    delimiter: str
    has_header: bool
    columns: dict  # field -> column name or position
    num_fields: int  # exact field count, or 0 when the header decides
    int_ids: bool
    timestamp_required: bool
    known_behaviors: tuple | None
    # RFC 4180 quoting (the column-mapped CSV): quoted fields, doubled
    # quotes, delimiters and line breaks inside quotes.
    quoted: bool = False


def _layout(config: config_lib.DataConfig) -> _Layout:
    fmt = config.data_format
    if fmt == "userbehavior":
        return _Layout(
            ",",
            False,
            {"user": 0, "item": 1, "behavior": 3, "timestamp": 4},
            5,
            True,
            True,
            schema.USERBEHAVIOR_BEHAVIORS,
        )
    if fmt == "tsv":
        cols = {f: f for f in ("user", "item", "behavior", "timestamp", "split")}
        return _Layout("\t", True, cols, 0, True, False, None)
    columns = {}
    for field, column in config.columns:
        columns[field] = int(column) if str(column).isdigit() else column
    if not config.has_header and any(isinstance(c, str) for c in columns.values()):
        raise ValueError(
            f"columns={config.columns!r} names columns, but has_header=False: "
            "give 0-based positions, or set --has_header."
        )
    return _Layout(config.delimiter, config.has_header, columns, 0, False, False, None, quoted=True)


def list_files(data_path: str) -> list[str]:
    """Expands a file, a comma-separated list or a glob into sorted files.

    Raises:
      DataError: if nothing matches.
    """
    files = []
    for pattern in [p for p in data_path.split(",") if p]:
        matched = sorted(glob_lib.glob(pattern)) if glob_lib.has_magic(pattern) else [pattern]
        files.extend(matched)
    folders = [f for f in files if os.path.isdir(f)]
    if folders:
        raise DataError(
            f"data_path={data_path!r}: {folders[0]} is a folder, not a file. Pass its files, "
            f"e.g. --data_path='{os.path.join(folders[0], '*.csv.gz')}'."
        )
    missing = [f for f in files if not os.path.isfile(f)]
    if not files or missing:
        raise DataError(
            f"data_path={data_path!r}: no such file {missing or [data_path]}. "
            "Pass an existing file or a glob such as 'logs/part-*.csv.gz'."
        )
    return files


def gzip_problem(path: str) -> str | None:
    """Why a gzip file cannot be read whole (cut short, corrupt), or None if it can.

    Decompresses every member to its end, which checks each member's CRC and
    length: TensorFlow's gzip reader stops quietly at a cut and returns the
    cut line as if it were whole.
    """
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    except EOFError:
        return "the gzip stream ends before its end marker (the file was cut short)"
    except (OSError, zlib.error) as error:
        return f"the gzip data is corrupt ({error})"
    return None


def _text_lines(path: str) -> tf.data.Dataset:
    compression = "GZIP" if path.endswith(".gz") else ""
    return tf.data.TextLineDataset(path, compression_type=compression, buffer_size=1 << 20)


def _open_text(path: str):
    """The file as text for the csv module: UTF-8, invalid bytes kept as
    surrogates (so they are found and named, never replaced)."""
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape", newline="")
    return open(path, encoding="utf-8", errors="surrogateescape", newline="")


def _csv_records(path: str, layout: _Layout):
    """(first line number, fields) of each RFC 4180 record of `path`, in order.

    Python's csv module parses: a field may be quoted, a doubled quote inside
    quotes is one quote, and a delimiter or a line break inside quotes is part
    of the field. A quoted field's quotes are not part of the id.
    """
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=layout.delimiter, quotechar='"', strict=True)
        line = 1
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                raise DataError(
                    f"{path}:{line}: the CSV is malformed ({error}). Fix: quote a field that "
                    "holds the delimiter, a quote or a line break, and double the quotes inside "
                    'it ("a ""b"" c"), as RFC 4180 writes them.'
                ) from None
            yield line, fields
            line = reader.line_num + 1


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _csv_chunk(records: list, width: int):
    """A chunk of csv records as ([n, width] fields, [n] field counts, bad UTF-8 rows)."""
    lengths = np.array([len(fields) for _, fields in records], np.int64)
    rows = [(fields + [""] * width)[:width] for _, fields in records]
    bad_text = np.array([any(_has_surrogates(f) for f in fields) for _, fields in records])
    # Invalid bytes (surrogates) become U+FFFD for the tensor; the row is rejected.
    clean = [[f.encode("utf-8", "replace").decode("utf-8") for f in row] for row in rows]
    dense = tf.constant(np.array(clean, dtype=object).reshape(len(rows), max(width, 1)))
    return dense, lengths, bad_text


def _resolve_columns(layout: _Layout, path: str, header) -> tuple[dict, int]:
    """Maps each field to a 0-based position; returns positions and field count.

    `header` is the header line, its fields (a quoted CSV's), or None."""
    if header is None:
        positions = dict(layout.columns)
        width = layout.num_fields or (max(positions.values()) + 1)
        return positions, width
    if isinstance(header, list):
        names = [h.strip() for h in header]
    else:
        names = [h.strip() for h in header.rstrip("\r").split(layout.delimiter)]
    positions = {}
    for field, column in layout.columns.items():
        if isinstance(column, int):
            positions[field] = column
        elif column in names:
            positions[field] = names.index(column)
        elif field in ("timestamp", "split") and layout.num_fields == 0 and not layout.int_ids:
            continue  # optional in a column-mapped CSV
        else:
            raise DataError(
                f"{path}:1: missing column {column!r} (for field {field!r}) in the "
                f"header {names}. Fix the header, or map the field with "
                "--columns=field=column."
            )
    return positions, len(names)


def _split_lines(lines: tf.Tensor, layout: _Layout, width: int):
    """One chunk of unquoted lines as ([n, width] fields, [n] field counts)."""
    lines = tf.strings.regex_replace(lines, "\r$", "")
    parts = tf.strings.split(lines, sep=layout.delimiter)
    return parts.to_tensor(
        default_value="", shape=[None, max(width, 1)]
    ), parts.row_lengths().numpy()


def _check_chunk(
    dense: tf.Tensor,
    lengths: np.ndarray,
    layout: _Layout,
    positions: dict,
    width: int,
    known_behaviors: tuple | None,
):
    """Checks one chunk of split records. Returns (fields, reason codes)."""
    n = len(lengths)
    reason = np.zeros(n, np.int8)
    if layout.num_fields:
        reason[lengths != layout.num_fields] = 1
    else:
        reason[lengths != width] = 1

    def column(field):
        return tf.strings.strip(dense[:, positions[field]])

    users, items = column("user"), column("item")
    empty = (tf.strings.length(users) == 0) | (tf.strings.length(items) == 0)
    _mark(reason, empty.numpy(), 2)
    if layout.int_ids:
        user_ok = tf.strings.regex_full_match(users, _INT_PATTERN).numpy()
        item_ok = tf.strings.regex_full_match(items, _INT_PATTERN).numpy()
        _mark(reason, ~user_ok, 3)
        _mark(reason, ~item_ok, 4)
        users = tf.strings.to_number(tf.where(user_ok, users, "0"), tf.int64).numpy()
        items = tf.strings.to_number(tf.where(item_ok, items, "0"), tf.int64).numpy()
    else:
        # Invalid UTF-8 would collapse into one replacement token per id.
        for ids in (users, items):
            clean = tf.strings.unicode_transcode(
                ids, "UTF-8", "UTF-8", errors="replace", replacement_char=0xFFFD
            )
            _mark(reason, (clean != ids).numpy(), 8)
        users = users.numpy().astype(object)
        items = items.numpy().astype(object)

    behaviors = column("behavior")
    behavior_ok = tf.strings.regex_full_match(behaviors, _BEHAVIOR_PATTERN).numpy()
    behaviors = behaviors.numpy()
    if known_behaviors is not None:
        behavior_ok &= np.isin(behaviors, np.array([b.encode() for b in known_behaviors]))
    _mark(reason, ~behavior_ok, 5)

    if "timestamp" in positions:
        stamps = column("timestamp")
        present = tf.strings.length(stamps) > 0
        stamp_ok = tf.strings.regex_full_match(stamps, _STAMP_PATTERN)
        ok = (stamp_ok | ~present) if not layout.timestamp_required else stamp_ok
        _mark(reason, ~ok.numpy(), 6)
        values = tf.strings.to_number(tf.where(stamp_ok, stamps, "-1"), tf.int64).numpy()
    else:
        values = np.full(n, -1, np.int64)

    if "split" in positions:
        split_text = column("split").numpy()
        splits = np.full(n, schema.SPLIT_NONE, np.int8)
        known = split_text == b""
        for name, code in schema.SPLIT_NAMES.items():
            match = split_text == name.encode()
            splits[match] = code
            known |= match
        _mark(reason, ~known, 7)
    else:
        splits = np.full(n, schema.SPLIT_NONE, np.int8)
    return (users, items, behaviors, values, splits), reason


def _mark(reason: np.ndarray, bad: np.ndarray, code: int) -> None:
    reason[(reason == 0) & bad] = code


def _error_text(code: int, layout: _Layout, width: int, known: tuple | None) -> tuple[str, str]:
    what, fix = _REASONS[code]
    fix = fix.format(
        n=width,
        sep=layout.delimiter,
        known=list(known) if known else "found",
        empty_ok="" if layout.timestamp_required else ", or empty",
    )
    return what, fix


def read_interactions(config: config_lib.DataConfig) -> RawLog:
    """Reads every record of `config.data_path` into a RawLog.

    Args:
      config: the data configuration (layout, behaviors, bad-record policy).
        Records of `config.ignore_behaviors` are excluded and counted.

    Returns:
      The records, in file order, and a DataReport.

    Raises:
      DataError: on a missing or empty file, a bad record (unless
        `on_bad_record="skip"`), or a target behavior that never occurs.
    """
    layout = _layout(config)
    ignore_behaviors = tuple(config.ignore_behaviors)
    files = list_files(config.data_path)
    known = layout.known_behaviors
    if config.supportive_behaviors:
        closed = (config.target_behavior,) + config.supportive_behaviors + ignore_behaviors
        known = tuple(b for b in closed if known is None or b in known)
    skip = config.on_bad_record == "skip"
    report = DataReport()
    behavior_codes: dict[bytes, int] = {}
    chunks = []
    content = _ContentHash()
    for path in files:
        report.files.append(path)
        problem = gzip_problem(path) if path.endswith(".gz") else None
        if problem and not skip:
            raise DataError(
                f"{path}: {problem}. Re-create or re-download the file, or pass "
                "--on_bad_record=skip to skip it (it is counted in data_report.json)."
            )
        if problem:
            report.damaged_files.append((path, problem))
            continue
        chunks_of_path = (
            _quoted_chunks(path, layout, skip, report)
            if layout.quoted
            else _line_chunks(path, layout, skip, report)
        )
        offset = 0
        for dense, lengths, bad_text, line_numbers, texts, positions, width in chunks_of_path:
            fields, reason = _check_chunk(dense, lengths, layout, positions, width, known)
            _mark(reason, bad_text, 8)
            bad = np.flatnonzero(reason)
            if len(bad):
                first = bad[0]
                what, fix = _error_text(int(reason[first]), layout, width, known)
                line_no = int(line_numbers[first])
                text = texts(int(first))
                if not skip:
                    raise DataError(
                        f"{path}:{line_no}: {what} in {text!r}. Fix: {fix}; or pass "
                        "--on_bad_record=skip to skip and count bad records."
                    )
                for index in bad:
                    what, _ = _error_text(int(reason[index]), layout, width, known)
                    report.bad_records[what] = report.bad_records.get(what, 0) + 1
                    if len(report.examples) < _MAX_EXAMPLES:
                        report.examples.append(
                            (path, int(line_numbers[index]), what, texts(int(index)))
                        )
            offset += len(reason)
            keep = reason == 0
            users, items, behaviors, stamps, splits = (f[keep] for f in fields)
            content.update(users, items, behaviors, stamps, splits)
            names, inverse = np.unique(behaviors, return_inverse=True)
            codes = np.array(
                [behavior_codes.setdefault(n, len(behavior_codes)) for n in names], np.int16
            )
            chunks.append((users, items, codes[inverse].astype(np.int16), stamps, splits))
        report.lines += offset
        if offset == 0 and path not in report.empty_files:
            _empty_file(path, skip, report)

    names = [b.decode() for b in behavior_codes]
    if chunks:
        users, items, behaviors, stamps, splits = (np.concatenate(c) for c in zip(*chunks))
    else:
        users = items = np.zeros(0, np.int64)
        behaviors, stamps, splits = (
            np.zeros(0, np.int16),
            np.zeros(0, np.int64),
            np.zeros(0, np.int8),
        )
    if len(users) == 0:
        if report.damaged_files:
            damaged = "; ".join(f"{path}: {problem}" for path, problem in report.damaged_files)
            raise DataError(
                f"{config.data_path}: no valid records: every file read was skipped as "
                f"damaged ({damaged}). Re-create or re-download the files."
            )
        raise DataError(
            f"{config.data_path}: no valid records in {files}. Check the path, the "
            f"--data_format ({config.data_format}) and the delimiter."
        )
    if config.target_behavior not in names:
        raise DataError(
            f"{config.data_path}: the target behavior {config.target_behavior!r} "
            f"never occurs; the behaviors found are {sorted(names)}. Pass "
            "--target_behavior with one of them."
        )
    keep = np.ones(len(users), bool)
    for name in ignore_behaviors:
        if name in names:
            drop = behaviors == names.index(name)
            report.excluded_behaviors[name] = int(drop.sum())
            keep &= ~drop
    if not keep.all():
        users, items, behaviors, stamps, splits = (
            a[keep] for a in (users, items, behaviors, stamps, splits)
        )
    report.records = len(users)
    report.content_sha256 = content.hexdigest()
    report.duplicate_records = count_duplicates(users, items, behaviors, stamps, splits)
    return RawLog(users, items, behaviors, names, stamps, splits, report)


def count_duplicates(*columns: np.ndarray) -> int:
    """Rows equal in every column to an earlier row.

    One sort of the row order and one column compared at a time: about a
    permutation and a column of memory beside the columns (a DataFrame's
    `duplicated` took about three times the log's own size at 100M rows).
    """
    if len(columns[0]) < 2:
        return 0
    order = np.lexsort(columns[::-1])
    same = np.ones(len(order) - 1, bool)
    for column in columns:
        ordered = column[order]
        same &= ordered[1:] == ordered[:-1]
        del ordered
    return int(same.sum())


class _ContentHash:
    """A streaming hash of the records, the same however they are chunked."""

    def __init__(self):
        self._fields = [hashlib.sha256() for _ in range(5)]

    def update(self, *fields) -> None:
        for h, values in zip(self._fields, fields):
            if values.dtype == object or values.dtype.kind == "S":
                h.update(b"".join(bytes(v) + b"\0" for v in values))
            else:
                h.update(np.ascontiguousarray(values, np.int64).tobytes())

    def hexdigest(self) -> str:
        return hashlib.sha256("".join(h.hexdigest() for h in self._fields).encode()).hexdigest()


def _line_chunks(path: str, layout: _Layout, skip: bool, report: DataReport):
    """The chunks of a line-per-record file (split by the delimiter, no quoting):
    (fields, counts, bad text rows, line numbers, text of row k, positions, width)."""
    lines = _text_lines(path)
    header = None
    first_line = 1
    if layout.has_header:
        head = list(lines.take(1).as_numpy_iterator())
        if not head:
            _empty_file(path, skip, report)
            return
        header = head[0].decode("utf-8", "replace")
        lines = lines.skip(1)
        first_line = 2
    positions, width = _resolve_columns(layout, path, header)
    offset = 0
    for chunk in lines.batch(CHUNK_LINES).prefetch(1):
        dense, lengths = _split_lines(chunk, layout, width)
        numbers = first_line + offset + np.arange(len(lengths))
        offset += len(lengths)
        yield (
            dense,
            lengths,
            np.zeros(len(lengths), bool),
            numbers,
            lambda k, c=chunk: c[k].numpy().decode("utf-8", "replace"),
            positions,
            width,
        )


def _quoted_chunks(path: str, layout: _Layout, skip: bool, report: DataReport):
    """The chunks of an RFC 4180 CSV, as `_line_chunks` gives them; a record's
    line number is the line it starts on."""
    records = _csv_records(path, layout)
    header = None
    if layout.has_header:
        first = next(records, None)
        if first is None:
            _empty_file(path, skip, report)
            return
        header = first[1]
    positions, width = _resolve_columns(layout, path, header)
    while True:
        chunk = list(itertools.islice(records, CHUNK_LINES))
        if not chunk:
            return
        dense, lengths, bad_text = _csv_chunk(chunk, width)
        numbers = np.array([line for line, _ in chunk], np.int64)

        def text(k, c=chunk):
            return layout.delimiter.join(c[k][1]).encode("utf-8", "replace").decode("utf-8")

        yield dense, lengths, bad_text, numbers, text, positions, width


def _empty_file(path: str, skip: bool, report: DataReport) -> None:
    if not skip:
        raise DataError(
            f"{path}: the file is empty (no records). Remove it from --data_path, "
            "or pass --on_bad_record=skip to skip it."
        )
    report.empty_files.append(path)

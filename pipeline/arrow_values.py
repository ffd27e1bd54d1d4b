"""Arrow values as Python values, with nothing cut off: a time64[ns] value as a `NanoTime`.

Arrow makes a time64[ns] value a `datetime.time`, which holds microseconds: 00:00:01.000000001 came back as 00:00:01,
and a pass-through column of that type was written with its nanoseconds gone, silently. Timestamps and durations in
nanoseconds come back whole (as pandas' Timestamp and Timedelta), so only times of day need this.
"""

from __future__ import annotations

import datetime
from typing import Any

import pyarrow as pa

_NS_PER_SECOND = 1_000_000_000


class NanoTime(int):
    """A time of day in nanoseconds since midnight: the Python form of a time64[ns] value. It is an int, so Arrow
    builds a time64[ns] column from it as it was read; its text is the time's ISO form, nanoseconds written only where
    they are not whole microseconds (so the text is what `datetime.time` gives wherever that one holds the value)."""

    def isoformat(self) -> str:
        seconds, ns = divmod(int(self), _NS_PER_SECOND)
        if ns % 1000 == 0:
            return self.as_time().isoformat()
        minutes, second = divmod(seconds, 60)
        return f"{minutes // 60:02d}:{minutes % 60:02d}:{second:02d}.{ns:09d}"

    def as_time(self) -> datetime.time:
        """The `datetime.time` of this time, cut to the microsecond."""
        seconds, ns = divmod(int(self), _NS_PER_SECOND)
        minutes, second = divmod(seconds, 60)
        return datetime.time(minutes // 60, minutes % 60, second, ns // 1000)

    def __str__(self) -> str:
        return self.isoformat()

    def __repr__(self) -> str:
        return f"NanoTime({self.isoformat()!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return NanoTime, (int(self),)


def _is_time_ns(t: pa.DataType) -> bool:
    return pa.types.is_time64(t) and t.unit == "ns"


def _holds_time_ns(t: pa.DataType) -> bool:
    if _is_time_ns(t):
        return True
    if pa.types.is_struct(t):
        return any(_holds_time_ns(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return _holds_time_ns(t.key_type) or _holds_time_ns(t.item_type)
    if _is_list(t):
        return _holds_time_ns(t.value_type)
    return False


def _is_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
            or pa.types.is_list_view(t) or pa.types.is_large_list_view(t))


def _as_ints(t: pa.DataType) -> pa.DataType:
    """`t` with every time64[ns] in it an int64 (nanoseconds since midnight), which Python holds whole."""
    if _is_time_ns(t):
        return pa.int64()
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(_as_ints(t.field(i).type)) for i in range(t.num_fields)])
    if pa.types.is_map(t):
        return pa.map_(_as_ints(t.key_type), t.item_field.with_type(_as_ints(t.item_type)), t.keys_sorted)
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(_as_ints(t.value_type)), t.list_size)
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_as_ints(t.value_type)))
    if pa.types.is_list_view(t):
        return pa.list_view(t.value_field.with_type(_as_ints(t.value_type)))
    if pa.types.is_large_list_view(t):
        return pa.large_list_view(t.value_field.with_type(_as_ints(t.value_type)))
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_as_ints(t.value_type)))
    return t


def _with_times(value: Any, t: pa.DataType) -> Any:
    """A Python value of type `_as_ints(t)` with its time64[ns] places made NanoTime."""
    if value is None:
        return None
    if _is_time_ns(t):
        return NanoTime(value)
    if pa.types.is_struct(t):
        return {f.name: _with_times(value[f.name], f.type) for f in t} if _unique_names(t) else value
    if pa.types.is_map(t):
        return [(_with_times(k, t.key_type), _with_times(v, t.item_type)) for k, v in value]
    if _is_list(t):
        return [_with_times(v, t.value_type) for v in value]
    return value


def _unique_names(t: pa.StructType) -> bool:
    names = [f.name for f in t]
    return len(set(names)) == len(names)


def python_values(values: pa.Array | pa.ChunkedArray) -> list[Any]:
    """`values.to_pylist()`, with every time64[ns] value in it (at any depth) a NanoTime instead of a time cut to the
    microsecond. A type Arrow cannot cast to its int form is read as Arrow reads it."""
    t = values.type
    if not _holds_time_ns(t):
        return values.to_pylist()
    try:
        ints = values.cast(_as_ints(t))
    except (pa.ArrowException, TypeError, ValueError):
        return values.to_pylist()
    return [_with_times(v, t) for v in ints.to_pylist()]


def python_rows(table: pa.Table | pa.RecordBatch) -> list[dict[str, Any]]:
    """`table.to_pylist()` (a dict per row), its time64[ns] values NanoTime (`python_values`)."""
    if not any(_holds_time_ns(f.type) for f in table.schema):
        return table.to_pylist()
    names = table.column_names
    if len(set(names)) != len(names):  # to_pylist keeps one of a repeated name: so does this
        return table.to_pylist()
    columns = [python_values(table.column(i)) for i in range(table.num_columns)]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)] if columns else [
        {} for _ in range(table.num_rows)]


def times_as_text(value: Any) -> Any:
    """`value` with each NanoTime in it (at any depth) its ISO text, as JSON must be given it: json.dumps writes an
    int's subclass as its number."""
    if isinstance(value, NanoTime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: times_as_text(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [times_as_text(v) for v in value]
    return value

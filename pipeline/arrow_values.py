"""Arrow values as Python values, with nothing cut off, that Arrow builds back into the type they came from.

- A time64[ns] value is a `NanoTime`: Arrow makes it a `datetime.time`, which holds microseconds, and a pass-through
  column of that type was written with its nanoseconds gone (00:00:01.000000001 as 00:00:01), silently. Timestamps
  and durations in nanoseconds come back whole (as pandas' Timestamp and Timedelta), so only times of day need this.
- A column of an extension type is its storage's values (`extension_storage`): Ray Data writes a numpy column as its
  tensor type, whose Python values are numpy arrays; Arrow cannot build the type back from arrays of two or more
  dimensions (boxes of shape (n, 4), masks), so such a column was written as the arrays' printed text, which numpy
  cuts to "[[0. 0. ... 0.]]" past 1,000 values. Storage values build back into the type whatever its shape.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import numpy as np
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


def python_values(values: pa.Array | pa.ChunkedArray, extension_storage: bool = True) -> list[Any]:
    """`values.to_pylist()`, with every time64[ns] value in it (at any depth) a NanoTime instead of a time cut to the
    microsecond, and, with `extension_storage`, the values of an extension type's storage (`pa.array(them, type)`
    builds the column back). A type Arrow cannot cast to its int form is read as Arrow reads it."""
    t = values.type
    if extension_storage and isinstance(t, pa.BaseExtensionType):
        values = (values.storage if isinstance(values, pa.Array)
                  else pa.chunked_array([chunk.storage for chunk in values.chunks], t.storage_type))
        t = values.type
    if not _holds_time_ns(t):
        return values.to_pylist()
    try:
        ints = values.cast(_as_ints(t))
    except (pa.ArrowException, TypeError, ValueError):
        return values.to_pylist()
    return [_with_times(v, t) for v in ints.to_pylist()]


def python_rows(table: pa.Table | pa.RecordBatch, extension_storage: bool = True) -> list[dict[str, Any]]:
    """`table.to_pylist()` (a dict per row), its values as `python_values` gives them."""
    if not any(_holds_time_ns(f.type) or extension_storage and isinstance(f.type, pa.BaseExtensionType)
               for f in table.schema):
        return table.to_pylist()
    names = table.column_names
    if len(set(names)) != len(names):  # to_pylist keeps one of a repeated name: so does this
        return table.to_pylist()
    columns = [python_values(table.column(i), extension_storage) for i in range(table.num_columns)]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)] if columns else [
        {} for _ in range(table.num_rows)]


def _leaves_mapped(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """`value` with `leaf` applied to each value in it that is no dict, list or tuple (a tuple made a list)."""
    if isinstance(value, dict):
        return {k: _leaves_mapped(v, leaf) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_leaves_mapped(v, leaf) for v in value]
    return leaf(value)


def times_as_text(value: Any) -> Any:
    """`value` with each NanoTime in it (at any depth) its ISO text, as JSON must be given it: json.dumps writes an
    int's subclass as its number."""
    return _leaves_mapped(value, lambda v: v.isoformat() if isinstance(v, NanoTime) else v)


def _plain_leaf(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value.item() if isinstance(value, np.generic) else value


def plain(value: Any) -> Any:
    """`value` with each numpy array in it (at any depth) nested lists and each numpy scalar its Python number: the
    form JSON and Arrow's type inference take (numpy prints an array cut to "[0. 0. ... 0.]" past 1,000 values)."""
    return _leaves_mapped(value, _plain_leaf)


def extension_python(value: Any, t: pa.DataType) -> Any:
    """The storage value `value` of extension type `t` as that type's own Python value, made `plain`: a Ray tensor's
    flat storage as its nested lists of the tensor's shape. `value` as it is where Arrow cannot build it."""
    if value is None or not isinstance(t, pa.BaseExtensionType):
        return value
    try:
        return plain(pa.array([value], t).to_pylist()[0])
    except (pa.ArrowException, TypeError, ValueError):
        return value


def text_ready_values(values: pa.Array | pa.ChunkedArray) -> list[Any]:
    """The values of a column that is to be made text: an extension type's as its own Python values, `plain` (a Ray
    tensor's nested lists in its shape, not its flat storage); any other's as `python_values` gives them."""
    if isinstance(values.type, pa.BaseExtensionType):
        return [plain(v) for v in python_values(values, extension_storage=False)]
    return python_values(values)

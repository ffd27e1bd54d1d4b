"""The `tf.train.Example` records of a TFRecord file (`tfrecord_files`), parsed from protobuf's wire format by a small
parser of our own: no TensorFlow, and no generated protobuf classes (the installed `protobuf` is Ray's, of whatever
version Ray takes).

An Example is one field, `features` (1): a Features message, a map<string, Feature> held as repeated entries (1) of a
key (1) and a Feature (2). A Feature holds one of bytes_list (1), float_list (2) or int64_list (3), each a repeated
`value` (1): bytes, float32 or int64, numbers packed or not (a writer may do either; both are read). A record that is
not such a message (wire format broken, a field of the wrong type, or a top-level field an Example does not have) is an
`ExampleProblem`: its record's reject says why; a tf.train.SequenceExample's names it (`_sequence_example`)."""

from __future__ import annotations

import struct
from typing import Any

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
FEATURE_KINDS = {1: "bytes_list", 2: "float_list", 3: "int64_list"}


class ExampleProblem(ValueError):
    """A record that is not a serialized tf.train.Example, and why."""


def _varint(buf: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(buf):
            raise ExampleProblem("it ends inside a number")
        b = buf[at]
        at += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, at
        shift += 7
        if shift >= 70:
            raise ExampleProblem("a number longer than ten bytes")


def _fields(buf: memoryview) -> list[tuple[int, int, Any]]:
    """A message's fields in order: (number, wire type, value): an int for a varint or a fixed number, a memoryview
    for a length-delimited field."""
    out = []
    at = 0
    while at < len(buf):
        key, at = _varint(buf, at)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ExampleProblem("a field numbered 0")
        if wire == VARINT:
            value, at = _varint(buf, at)
        elif wire == FIXED64:
            if at + 8 > len(buf):
                raise ExampleProblem("it ends inside a 64-bit field")
            value, at = int.from_bytes(buf[at : at + 8], "little"), at + 8
        elif wire == FIXED32:
            if at + 4 > len(buf):
                raise ExampleProblem("it ends inside a 32-bit field")
            value, at = int.from_bytes(buf[at : at + 4], "little"), at + 4
        elif wire == LENGTH:
            length, at = _varint(buf, at)
            if at + length > len(buf):
                raise ExampleProblem(f"a field of {length} bytes runs past its message's end")
            value, at = buf[at : at + length], at + length
        else:  # groups (3, 4) are long deprecated, and no Example holds one
            raise ExampleProblem(f"field {number} has wire type {wire}, which an Example does not use")
        out.append((number, wire, value))
    return out


def _signed64(value: int) -> int:
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >= 1 << 63 else value


def _values(kind: str, buf: memoryview) -> list[Any]:
    """The values of a BytesList, FloatList or Int64List message."""
    values: list[Any] = []
    for number, wire, value in _fields(buf):
        if number != 1:
            continue  # a field this version of the message does not have: protobuf readers skip it
        if kind == "bytes_list":
            if wire != LENGTH:
                raise ExampleProblem("a bytes_list value that is not bytes")
            values.append(bytes(value))
        elif kind == "float_list":
            if wire == FIXED32:
                values.append(struct.unpack("<f", value.to_bytes(4, "little"))[0])
            elif wire == LENGTH and len(value) % 4 == 0:  # packed
                values.extend(x for (x,) in struct.iter_unpack("<f", value))
            else:
                raise ExampleProblem("a float_list value that is not 32-bit floats")
        elif wire == VARINT:
            values.append(_signed64(value))
        elif wire == LENGTH:  # packed
            at = 0
            while at < len(value):
                n, at = _varint(value, at)
                values.append(_signed64(n))
        else:
            raise ExampleProblem("an int64_list value that is not an integer")
    return values


def _expect_message(wire: int, what: str) -> None:
    """A field of an Example's messages (a map entry, its name or Feature, a Feature's list) of the wrong wire type is
    damage, as a value of the wrong type is: skipped, it left a feature unnamed, empty or missing, the record read."""
    if wire != LENGTH:
        raise ExampleProblem(f"{what} of wire type {wire}, where a length-delimited field is")


def _sequence_example(fields: list[tuple[int, int, Any]]) -> bool:
    """Whether a record's top-level `fields` are a tf.train.SequenceExample's: its context (1, a Features message, as an
    Example's features are) and its feature lists (2, a FeatureLists message); each a map, of entries (1) holding a name
    (1) and a Feature or FeatureList (2)."""
    if not any(number == 2 for number, _, _ in fields) or any(wire != LENGTH for _, wire, _ in fields):
        return False
    try:
        return all(number in (1, 2) and n == 1 and w == LENGTH and all(k in (1, 2) and kw == LENGTH
                                                                     for k, kw, _ in _fields(entry))
                   for number, _, value in fields for n, w, entry in _fields(value))
    except ExampleProblem:
        return False


def parse_example(data: bytes | memoryview) -> dict[str, tuple[str | None, list[Any]]]:
    """A serialized tf.train.Example's features: name -> (kind, values), kind one of 'bytes_list', 'float_list',
    'int64_list', or None for a Feature holding none of them (no values). A name given twice keeps its last Feature,
    as protobuf's own map reading does. Raises ExampleProblem for a record that is no Example."""
    features: dict[str, tuple[str | None, list[Any]]] = {}
    fields = _fields(memoryview(data))
    if _sequence_example(fields):
        raise ExampleProblem("it is a tf.train.SequenceExample (a context, field 1, and feature lists, field 2), which "
                             "is not read: its feature lists' steps (a video's frames) are no one image of one row; "
                             "write each image as a tf.train.Example")
    for number, wire, value in fields:
        if number != 1 or wire != LENGTH:
            raise ExampleProblem(f"it has a field {number} (wire type {wire}), where an Example has only its features "
                                 "(field 1): a tf.train.SequenceExample, or another message, is not read")
        for entry_number, entry_wire, entry in _fields(value):
            if entry_number != 1:
                continue  # a field Features does not have: skipped, as protobuf's readers skip it
            _expect_message(entry_wire, "a feature")
            key, feature = b"", memoryview(b"")
            for n, w, v in _fields(entry):
                if n == 1:
                    _expect_message(w, "a feature's name")
                    key = bytes(v)
                elif n == 2:
                    _expect_message(w, "a feature's value")
                    feature = v
            try:
                name = key.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ExampleProblem(f"a feature name that is not UTF-8 text ({key!r})") from err
            kind, values = None, []
            for n, w, v in _fields(feature):
                if n in FEATURE_KINDS:  # a oneof: the last one given is the one it holds
                    _expect_message(w, f"a feature's {FEATURE_KINDS[n]}")
                    kind, values = FEATURE_KINDS[n], _values(FEATURE_KINDS[n], v)
            features[name] = (kind, values)
    return features

"""The tf.train.Example parser (`pipeline.sources.tf_examples`) on the wire encodings a writer may choose and on records
damaged in their structure (framed with a good CRC, as a faulty writer leaves them): what a user sees of each, through
the TFRecord reading. The records are built here byte by byte, so that each encoding is the one meant. Each test kills
mutants of that module that the TFRecord reading tests let live (a mutation audit)."""

from __future__ import annotations

import struct

from pipeline.sources import discover, read_unit
from pipeline.sources.crc32c import masked_crc32c
from pipeline.sources.tf_examples import parse_example
from tests.jobutil import image_bytes

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


def varint(n: int) -> bytes:
    n &= 2**64 - 1  # a negative int64 as protobuf writes it: ten bytes
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def field(number: int, data: bytes) -> bytes:
    """A length-delimited field."""
    return key(number, LENGTH) + varint(len(data)) + data


def entry(name: bytes, feature: bytes) -> bytes:
    """A Features map entry: its key (1) and its Feature (2)."""
    return field(1, field(1, name) + field(2, feature))


def example(*entries: bytes) -> bytes:
    return field(1, b"".join(entries))


def image_entry(i: int = 0) -> bytes:
    return entry(b"image", field(1, field(1, image_bytes(16, 16, i))))


def framed(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def _read(tmp_path, records: list[bytes]) -> list[dict]:
    (tmp_path / "s.tfrecord").write_bytes(b"".join(map(framed, records)))
    return [r for r in read_unit(discover(str(tmp_path))[0]) if r["kind"] in ("image", "reject")]


def test_numbers_in_each_encoding_a_writer_may_use_are_read_as_written(tmp_path) -> None:
    int64_list, float_list = 3, 2
    record = example(
        image_entry(),
        entry(b"negative", field(int64_list, key(1, VARINT) + varint(-3))),  # unpacked: one varint of ten bytes
        entry(b"lowest", field(int64_list, key(1, VARINT) + varint(-(2**63)))),
        entry(b"packed", field(int64_list, field(1, varint(-1) + varint(300) + varint(-(2**63)) + varint(2**63 - 1)))),
        entry(b"unpacked_floats", field(float_list, key(1, FIXED32) + struct.pack("<f", 0.25)
                                        + key(1, FIXED32) + struct.pack("<f", -1.5))),
        entry(b"packed_floats", field(float_list, field(1, struct.pack("<2f", 2.5, -0.125)))),
        # a field a later version of Int64List might add: skipped, as protobuf's readers skip it
        entry(b"newer", field(int64_list, key(1, VARINT) + varint(7) + key(2, VARINT) + varint(9))),
    )
    (image,) = _read(tmp_path, [record])
    assert image["kind"] == "image" and image["data"] == image_bytes(16, 16, 0)
    assert image["meta"] == {"negative": -3, "lowest": -(2**63), "packed": [-1, 300, -(2**63), 2**63 - 1],
                             "unpacked_floats": [0.25, -1.5], "packed_floats": [2.5, -0.125], "newer": 7}


def test_a_feature_map_is_read_as_protobuf_reads_one() -> None:
    # A name given twice keeps its last Feature, and a Feature given two kinds its last (a oneof); a field an
    # Example's messages do not have (of any wire type) is skipped, not read as another.
    unknown = key(6, FIXED64) + struct.pack("<d", 1.0) + key(7, FIXED32) + struct.pack("<f", 1.0) + field(8, b"x")
    features = parse_example(example(
        entry(b"dup", field(3, field(1, varint(1)))),
        entry(b"dup", field(3, field(1, varint(2)) + unknown)),
        entry(b"oneof", field(1, field(1, b"text")) + field(3, field(1, varint(5)))),
        field(2, field(1, b"ghost") + field(2, field(3, field(1, varint(1))))),  # Features field 2: no such field
        field(1, field(1, b"extra") + field(2, field(3, field(1, varint(4))) + unknown) + unknown),
    ))
    assert features == {"dup": ("int64_list", [2]), "oneof": ("int64_list", [5]), "extra": ("int64_list", [4])}


def test_a_record_damaged_in_its_structure_is_its_own_reject_and_the_records_after_it_are_read(tmp_path) -> None:
    features = image_entry(1)
    damaged = {
        "cut inside a number": b"\x0a\x80",
        "a number of eleven bytes": example(features, entry(b"n", field(3, key(1, VARINT) + b"\xff" * 10 + b"\x01"))),
        "features longer than the record": key(1, LENGTH) + varint(len(features) + 5) + features,
        "a field numbered 0": example(features, key(0, LENGTH) + varint(0)),
        "a 64-bit field cut short": example(features, entry(b"n", field(3, key(2, FIXED64) + b"\x01\x02\x03"))),
        "a 32-bit field cut short": example(features, entry(b"n", field(2, key(2, FIXED32) + b"\x01\x02"))),
        "a group": example(features, key(5, 3) + key(5, 4)),
        "features given as a number": key(1, VARINT) + varint(1),
        "a SequenceExample's feature lists": example(features) + field(2, b""),
        "an image that is a number": example(entry(b"image", field(1, key(1, VARINT) + varint(5)))),
        "floats of six bytes": example(features, entry(b"f", field(2, field(1, b"\x00" * 6)))),
        "an int64 of 32 bits": example(features, entry(b"n", field(3, key(1, FIXED32) + b"\x00" * 4))),
        "a name that is not UTF-8": example(features, entry(b"caf\xe9", field(3, field(1, varint(1))))),
        # a field an Example's messages declare, of another wire type: read as damage, not skipped (which left a
        # feature unnamed, empty or missing, and the record an image)
        "a feature entry that is a number": example(features, key(1, VARINT) + varint(3)),
        "a feature name that is a number": example(features, field(1, key(1, VARINT) + varint(7)
                                                                   + field(2, field(3, field(1, varint(4)))))),
        "a Feature that is a number": example(features, field(1, field(1, b"n") + key(2, VARINT) + varint(3))),
        "a bytes_list that is a number": example(features, entry(b"n", key(1, VARINT) + varint(5))),
    }
    records = [example(image_entry(0)), *damaged.values(), example(image_entry(2))]
    out = _read(tmp_path, records)
    assert [r["kind"] for r in out] == ["image", *["reject"] * len(damaged), "image"]
    assert out[-1]["id"] == f"s.tfrecord#{len(records) - 1}" and out[-1]["data"] == image_bytes(16, 16, 2)
    for what, reject in zip(damaged, out[1:-1], strict=True):
        assert "is not a tf.train.Example" in reject["error"], what

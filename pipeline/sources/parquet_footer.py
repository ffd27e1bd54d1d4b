"""Whether a Parquet file's plain footer says its columns are encrypted (Parquet modular encryption with a plaintext
footer), read from the footer's own bytes: Arrow opens such a file, but asking for a column chunk's metadata (its
statistics, as the dry run's count of rows without an image does) ends the whole process ('terminate called after
throwing an instance of parquet::ParquetException: Cannot decrypt ColumnMetadata'), and reading a row group fails. The
footer is a FileMetaData struct in Thrift's compact protocol; field 8, `encryption_algorithm`, is set only in such a
file. Only the top level is walked: the nested fields are skipped by their types, none of their values kept."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

ENCRYPTION_ALGORITHM = 8  # FileMetaData's field: set in a file with encrypted columns and a plaintext footer
STOP, TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(13)
# The most nesting a FileMetaData has is a few levels (row groups, their column chunks, their metadata, statistics):
# deeper is no footer of Parquet's
MAX_DEPTH = 32


class FooterProblem(ValueError):
    """Bytes that are no compact Thrift struct (cut short, a type no field has, nested too deep)."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def byte(self) -> int:
        if self.at >= len(self.data):
            raise FooterProblem("it ends inside a field")
        self.at += 1
        return self.data[self.at - 1]

    def varint(self) -> int:
        value = shift = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 70:
                raise FooterProblem("a number longer than ten bytes")

    def skip(self, n: int) -> None:
        if self.at + n > len(self.data):
            raise FooterProblem("a field runs past its end")
        self.at += n

    def skip_value(self, kind: int, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise FooterProblem("nested too deep")
        if kind in (TRUE, FALSE):
            return  # a field's boolean is in its type; a list's element reads a byte (`_skip_elements`)
        if kind == BYTE:
            self.skip(1)
        elif kind in (I16, I32, I64):
            self.varint()
        elif kind == DOUBLE:
            self.skip(8)
        elif kind == BINARY:
            self.skip(self.varint())
        elif kind in (LIST, SET):
            head = self.byte()
            size = head >> 4 if head >> 4 != 15 else self.varint()
            self._skip_elements(head & 0x0F, size, depth)
        elif kind == MAP:
            size = self.varint()
            if size:
                types = self.byte()
                for _ in range(size):
                    self._skip_elements(types >> 4, 1, depth)
                    self._skip_elements(types & 0x0F, 1, depth)
        elif kind == STRUCT:
            for _ in self.fields(depth + 1):
                pass
        else:
            raise FooterProblem(f"a field of type {kind}, which compact Thrift has not")

    def _skip_elements(self, kind: int, size: int, depth: int) -> None:
        for _ in range(size):
            if kind in (TRUE, FALSE):
                self.skip(1)  # an element's boolean is a byte of its own
            else:
                self.skip_value(kind, depth + 1)

    def fields(self, depth: int = 0) -> Iterator[int]:
        """The field ids of the struct at the reader's place, each value skipped once yielded, to its STOP."""
        last = 0
        while True:
            head = self.byte()
            kind = head & 0x0F
            if kind == STOP:
                return
            delta = head >> 4
            if delta:
                last += delta
            else:
                raw = self.varint()
                last = (raw >> 1) ^ -(raw & 1)  # zigzag
            yield last
            self.skip_value(kind, depth)


def columns_encrypted(footer: bytes) -> bool:
    """Whether `footer`, a Parquet file's FileMetaData as its last bytes but eight hold it, sets `encryption_algorithm`
    (its columns encrypted, its footer plain). Raises FooterProblem where the bytes are no such struct."""
    return any(field == ENCRYPTION_ALGORITHM for field in _Reader(footer).fields())


def footer_of(f: Any) -> bytes:
    """The footer of the Parquet file `f` (seekable, binary): the bytes its length before the closing 'PAR1' gives."""
    f.seek(-8, 2)
    (length,) = struct.unpack("<I", f.read(4))
    f.seek(-8 - length, 2)
    return f.read(length)

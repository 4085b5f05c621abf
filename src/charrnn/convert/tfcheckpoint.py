"""Read a TensorFlow checkpoint (`ckpt_10.index` + `ckpt_10.data-00000-of-00001`) without TensorFlow.

A checkpoint is a "tensor bundle" (tensorflow/core/util/tensor_bundle): the `.index` file is a
LevelDB-format table (google/leveldb doc/table_format.md, TensorFlow's copy in tensorflow/core/lib/io)
mapping each tensor's name to a BundleEntryProto (dtype, shape, shard, offset, size, masked CRC-32C); the
key "" holds the BundleHeaderProto (number of shards, endianness). The tensors are raw bytes in the
`.data-SSSSS-of-NNNNN` shards. TensorFlow writes the index without compression, so plain Python reads it:
blocks of prefix-compressed entries, each block followed by a type byte and a masked CRC-32C, an index
block of block handles, and a 48-byte footer ending in the table magic number.

Only what a Keras model checkpoint holds is supported: whole (unsliced) numeric tensors. Nothing here
runs code from the file; every length and offset is checked against the file before it is used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from charrnn.errors import CharRNNError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the 8-byte magic
BLOCK_TRAILER = 5  # compression type (0 = none) and masked CRC-32C of contents + type
# tensorflow/core/framework/types.proto: the numeric types a Keras model stores.
DTYPES = {
    1: "<f4",
    2: "<f8",
    3: "<i4",
    4: "u1",
    5: "<i2",
    6: "i1",
    9: "<i8",
    10: "?",
    17: "<u2",
    19: "<f2",
    22: "<u4",
    23: "<u8",
}


class BadCheckpoint(CharRNNError):
    """The file is not a readable tensor bundle; the message says why (the caller adds the file)."""


# -- CRC-32C (Castagnoli), as TensorFlow and LevelDB use it -----------------------------------------
def _crc_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1).astype(np.uint32)
    return table


_TABLE = _crc_table()
_TABLE_LIST = _TABLE.tolist()
_LANES = 4096  # bytes processed side by side by numpy, so a 16 MB tensor takes milliseconds, not seconds


def _crc_register(data: bytes, register: int) -> int:
    """The raw CRC register after feeding `data` (no final inversion), one byte at a time."""
    for byte in data:
        register = _TABLE_LIST[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


def _shift_tables(length: int) -> list[list[int]]:
    # The register is linear in its input bits: advancing it over `length` zero bytes is a linear map,
    # tabulated per byte of the register so that applying it costs four look-ups.
    columns = [_crc_register(bytes(length), 1 << bit) for bit in range(32)]
    tables = []
    for shift in (0, 8, 16, 24):
        table = []
        for value in range(256):
            out = 0
            for bit in range(8):
                if value >> bit & 1:
                    out ^= columns[shift + bit]
            table.append(out)
        tables.append(table)
    return tables


def crc32c(data: bytes) -> int:
    """CRC-32C of `data`. Long inputs: _LANES equal chunks advance together (numpy), each from a zero
    register (the first from the usual all-ones one), and are chained by the shift map, since the CRC
    of a concatenation is the first part's register advanced over the second's length, XOR the second's."""
    view = np.frombuffer(data, dtype=np.uint8)
    chunk = len(view) // _LANES
    if chunk < 64:
        return _crc_register(data, 0xFFFFFFFF) ^ 0xFFFFFFFF
    lanes = view[: chunk * _LANES].reshape(_LANES, chunk)
    registers = np.zeros(_LANES, dtype=np.uint32)
    registers[0] = 0xFFFFFFFF
    for column in range(chunk):
        registers = _TABLE[(registers ^ lanes[:, column]) & 0xFF] ^ (registers >> 8)
    tables = _shift_tables(chunk)
    register = 0
    for lane in registers.tolist():
        register = (
            tables[0][register & 0xFF]
            ^ tables[1][register >> 8 & 0xFF]
            ^ tables[2][register >> 16 & 0xFF]
            ^ tables[3][register >> 24]
        ) ^ lane
    return _crc_register(view[chunk * _LANES :].tobytes(), register) ^ 0xFFFFFFFF


def unmask(masked: int) -> int:
    """Undo LevelDB's CRC masking (rotate right 15 after subtracting the delta)."""
    rotated = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF


# -- varints, protobuf and the table ----------------------------------------------------------------
def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise BadCheckpoint("a number in it is cut short")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _fields(message: bytes) -> list[tuple[int, int | bytes]]:
    """A protobuf message's (field number, value) pairs: integers for varint/fixed, bytes for nested."""
    fields, pos = [], 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(message, pos)
        elif wire == 1 or wire == 5:
            width = 8 if wire == 1 else 4
            value, pos = int.from_bytes(message[pos : pos + width], "little"), pos + width
        elif wire == 2:
            length, pos = _varint(message, pos)
            value, pos = message[pos : pos + length], pos + length
        else:
            raise BadCheckpoint(f"an entry has protobuf wire type {wire}")
        if pos > len(message):
            raise BadCheckpoint("an entry is cut short")
        fields.append((number, value))
    return fields


def _block(data: bytes, handle: bytes, what: str) -> bytes:
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if offset + size + BLOCK_TRAILER > len(data):
        raise BadCheckpoint(f"its {what} block lies beyond the end of the file")
    contents, kind = data[offset : offset + size], data[offset + size]
    stored = int.from_bytes(data[offset + size + 1 : offset + size + 5], "little")
    if unmask(stored) != crc32c(contents + bytes([kind])):
        raise BadCheckpoint(f"its {what} block fails its checksum")
    if kind != 0:
        raise BadCheckpoint(f"its {what} block is compressed (type {kind}); TensorFlow writes checkpoints uncompressed")
    return contents


def _entries(block: bytes) -> list[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise BadCheckpoint("a block is too short")
    restarts = int.from_bytes(block[-4:], "little")
    end = len(block) - 4 - 4 * restarts
    if end < 0:
        raise BadCheckpoint("a block's restart array is damaged")
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + length > end:
            raise BadCheckpoint("a block entry is damaged")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        entries.append((key, block[pos : pos + length]))
        pos += length
    return entries


def read_index(path: Path) -> dict[str, bytes]:
    """Every (name, serialized entry) of a bundle's .index table."""
    data = Path(path).read_bytes()
    if len(data) < FOOTER_SIZE or int.from_bytes(data[-8:], "little") != TABLE_MAGIC:
        raise BadCheckpoint("it is not a TensorFlow checkpoint index (no table magic number at its end)")
    footer = data[-FOOTER_SIZE:]
    _, pos = _varint(footer, 0)  # the metaindex handle (offset, size): no meta blocks in a bundle
    _, pos = _varint(footer, pos)
    index = _block(data, footer[pos:], "index")
    table = {}
    for _, handle in _entries(index):
        for key, value in _entries(_block(data, handle, "data")):
            table[key.decode("utf-8", "replace")] = value
    return table


def read_checkpoint(prefix: Path) -> dict[str, np.ndarray]:
    """All numeric tensors of the checkpoint `prefix` (PREFIX.index + PREFIX.data-*), by name."""
    prefix = Path(prefix)
    table = read_index(prefix.with_name(prefix.name + ".index"))
    header = dict(_fields(table.pop("", b"")))
    shards, endianness = header.get(1, 1), header.get(2, 0)
    if endianness != 0:
        raise BadCheckpoint("it was written big-endian; re-save it on a little-endian machine")
    data: dict[int, bytes] = {}
    tensors = {}
    for name, value in table.items():
        entry = {}
        for number, field in _fields(value):
            entry.setdefault(number, field)
        if 7 in entry or entry.get(1) not in DTYPES:
            continue  # sliced (partitioned) variables and strings: never part of a tutorial model's weights
        shape = [dict(_fields(dim)).get(1, 0) for number, dim in _fields(entry.get(2, b"")) if number == 2]
        shard, offset, size = entry.get(3, 0), entry.get(4, 0), entry.get(5, 0)
        if shard >= shards:
            raise BadCheckpoint(f"tensor {name} is in shard {shard} of {shards}")
        if shard not in data:
            shard_path = prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{shards:05d}")
            if not shard_path.is_file():
                raise BadCheckpoint(f"its data file {shard_path.name} is missing beside it")
            data[shard] = shard_path.read_bytes()
        dtype = np.dtype(DTYPES[entry[1]])
        if size != int(np.prod(shape)) * dtype.itemsize or offset + size > len(data[shard]):
            raise BadCheckpoint(f"tensor {name} does not fit its data file (damaged or cut short)")
        raw = data[shard][offset : offset + size]
        if 6 in entry and unmask(entry[6]) != crc32c(raw):
            raise BadCheckpoint(f"tensor {name} fails its checksum (damaged data file)")
        tensors[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    return tensors

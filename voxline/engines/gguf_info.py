"""The hyper-parameters of a GGUF model file, read from its header without the weights.

GGUF (llama.cpp's format) starts with ``GGUF``, a version, the tensor count, the
number of metadata pairs and then the pairs: a length-prefixed key, a value type
and the value (numbers, strings, or arrays of them). Only numbers are kept; the
long tokenizer arrays are skipped over.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
"""GGUF value types with a fixed size, as struct formats (little-endian)."""
_STRING, _ARRAY = 8, 9


class GGUFError(ValueError):
    """The file is not a GGUF model llama.cpp can read."""


def _read(stream: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = stream.read(size)
    if len(data) != size:
        raise GGUFError("the file ends inside its header")
    return struct.unpack(fmt, data)[0]


def _string(stream: BinaryIO) -> str:
    length = _read(stream, "<Q")
    return stream.read(length).decode("utf-8", errors="replace")


def _value(stream: BinaryIO, kind: int) -> float | int | None:
    if kind in _SCALARS:
        return _read(stream, _SCALARS[kind])
    if kind == _STRING:
        _string(stream)
        return None
    if kind == _ARRAY:
        item_kind, count = _read(stream, "<I"), _read(stream, "<Q")
        if item_kind in _SCALARS:
            stream.seek(count * struct.calcsize(_SCALARS[item_kind]), 1)
        else:
            for _ in range(count):
                _value(stream, item_kind)
        return None
    raise GGUFError(f"unknown metadata value type {kind}")


def gguf_numbers(path: Path) -> dict[str, float | int]:
    """Every numeric metadata value of a GGUF file by key (``llama.block_count``, ...).

    Raises:
        GGUFError: not a GGUF file, or a damaged header.
    """
    with open(path, "rb") as stream:
        if stream.read(4) != b"GGUF":
            raise GGUFError(f"{path} is not a GGUF file")
        version = _read(stream, "<I")
        if version < 2:
            raise GGUFError(f"{path}: GGUF version {version} is too old")
        _read(stream, "<Q")  # tensors
        pairs = _read(stream, "<Q")
        numbers: dict[str, float | int] = {}
        architecture = None
        for _ in range(pairs):
            key, kind = _string(stream), _read(stream, "<I")
            if key == "general.architecture" and kind == _STRING:
                architecture = _string(stream)
                continue
            value = _value(stream, kind)
            if value is not None:
                numbers[key] = value
        if architecture is not None:
            prefix = f"{architecture}."
            numbers = {key.replace(prefix, "model.", 1): v for key, v in numbers.items()}
        return numbers


def kv_bytes(layers: int, kv_heads: int, head_dim: int, value_bytes: int = 2) -> int:
    """Bytes of KV cache one token of context takes: its keys and values in every layer,
    ``value_bytes`` each (2 for f16 and bfloat16)."""
    return 2 * layers * kv_heads * head_dim * value_bytes


def kv_bytes_per_token(path: Path) -> int:
    """Bytes of f16 KV cache one token of context takes in llama.cpp for this model.

    Raises:
        GGUFError: the file lacks the hyper-parameters (block count, heads, width).
    """
    numbers = gguf_numbers(path)
    try:
        layers = int(numbers["model.block_count"])
        heads = int(numbers["model.attention.head_count"])
        width = int(numbers["model.embedding_length"])
    except KeyError as missing:
        raise GGUFError(f"{path}: no {missing.args[0]} in its metadata") from None
    kv_heads = int(numbers.get("model.attention.head_count_kv", heads))
    return kv_bytes(layers, kv_heads, width // heads)

"""A tiny safetensors reader/writer in numpy, for the Python reference scripts under tests/ref.

Format (https://github.com/huggingface/safetensors): u64 little-endian header length N, N bytes of
JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}, then the
raw little-endian tensor bytes; offsets are relative to the start of the data section.

    tensors, metadata = st.load(path)          # {name: np.ndarray}, {str: str}
    st.save(path, {"x": np.zeros((2, 3))}, metadata={"k": "v"})

BF16 has no numpy type: it is read as float32 (exactly) and cannot be written.
"""

import json
import os
import struct

import numpy as np

_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_MAX_HEADER = 100 << 20


def _dtype_name(dt):
    dt = np.dtype(dt).newbyteorder("<") if np.dtype(dt).byteorder == ">" else np.dtype(dt)
    for name, d in _DTYPES.items():
        if d == dt:
            return name
    raise ValueError(f"safetensors: unsupported numpy dtype {dt}")


def load(path):
    """Returns ({name: np.ndarray}, metadata). Checks sizes and offsets; raises ValueError."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: not a safetensors file ({len(blob)} bytes)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > _MAX_HEADER or 8 + n > len(blob):
        raise ValueError(f"{path}: header length {n} does not fit in {len(blob)} bytes")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = memoryview(blob)[8 + n:]
    metadata = header.pop("__metadata__", None) or {}
    out = {}
    for name, e in header.items():
        begin, end = e["data_offsets"]
        shape = tuple(int(d) for d in e["shape"])
        if not 0 <= begin <= end <= len(data):
            raise ValueError(f"{path}: tensor '{name}' lies outside the data section")
        count = int(np.prod(shape, dtype=np.int64))
        if e["dtype"] == "BF16":
            if end - begin != 2 * count:
                raise ValueError(f"{path}: tensor '{name}' has {end - begin} bytes, need {2 * count}")
            u16 = np.frombuffer(data[begin:end], dtype="<u2").astype(np.uint32)
            out[name] = (u16 << 16).view(np.float32).reshape(shape).copy()
            continue
        if e["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor '{name}' has unsupported dtype {e['dtype']}")
        dt = _DTYPES[e["dtype"]]
        if end - begin != dt.itemsize * count:
            raise ValueError(f"{path}: tensor '{name}' has {end - begin} bytes, "
                             f"need {dt.itemsize * count}")
        out[name] = np.frombuffer(data[begin:end], dtype=dt).reshape(shape).copy()
    return out, metadata


def save(path, tensors, metadata=None):
    """Writes {name: array-like} atomically (temporary file, then rename)."""
    header = {}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(np.asarray(tensors[name]))
        dname = _dtype_name(a.dtype)
        raw = a.astype(_DTYPES[dname], copy=False).tobytes()
        header[name] = {"dtype": dname, "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)  # the data section starts 8-byte aligned
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for c in chunks:
            f.write(c)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

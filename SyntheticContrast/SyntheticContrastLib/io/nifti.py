"""NIfTI files checked from their own bytes before ITK reads them: a header that declares more voxels than the file
holds (a truncated file, or a few bytes claiming gigabytes), NaN or infinite voxels (ITK reads them as 0 HU), zero or
non-finite voxel spacing (ITK reads it as 1 mm), and an sform and qform that disagree. Also NIfTI-1's header
extensions: a synthetic output carries its provenance in one, so the file says what it is even without its sidecar."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import rules

HEADER_BYTES = 348
#: NIfTI-1 datatype code -> numpy dtype (the codes a CT can have).
DATATYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8", 1280: "u8"}
CHUNK_BYTES = 1 << 22
#: NIFTI_ECODE_COMMENT: free ASCII text, which every NIfTI reader keeps or skips safely. Our provenance JSON goes here.
COMMENT_ECODE = 6


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_header(path: Path) -> bytes:
    with _open(path) as fh:
        return fh.read(HEADER_BYTES)


def _byte_order(header: bytes) -> str:
    """'<' or '>': the order in which sizeof_hdr reads as 348, as NIfTI-1 defines it."""
    return "<" if struct.unpack_from("<i", header, 0)[0] == HEADER_BYTES else ">"


def _layout(header: bytes, extender: bytes) -> tuple[str, int, bool]:
    order = _byte_order(header)
    return order, int(struct.unpack_from(order + "f", header, 108)[0]), bool(extender[:1]) and extender[0] != 0


def add_comment_extension(plain: Path, target: Path, text: str, compress: bool) -> None:
    """Copy the uncompressed NIfTI-1 file ``plain`` to ``target`` with one more comment extension holding ``text``
    after the header: the extension flag set, vox_offset moved past it (a multiple of 16, as the format asks), the
    voxels copied as they are, gzip-compressed when ``compress``."""
    import shutil

    data = text.encode("ascii")  # NIFTI_ECODE_COMMENT is ASCII: callers escape the rest (json.dumps does)
    with open(plain, "rb") as src:
        header = bytearray(src.read(HEADER_BYTES))
        extender = src.read(4)
        order, offset, has_extensions = _layout(bytes(header), extender)
        kept = src.read(offset - HEADER_BYTES - 4) if has_extensions else b""
        src.seek(offset)
        size = -(-(8 + len(data)) // 16) * 16
        extension = struct.pack(order + "ii", size, COMMENT_ECODE) + data + b"\0" * (size - 8 - len(data))
        struct.pack_into(order + "f", header, 108, float(HEADER_BYTES + 4 + len(kept) + size))
        # Level 3: with SimpleITK's uncompressed write first, 2x faster than its own .nii.gz and 15 % larger
        # (benchmarks/nifti_extension.py); level 6 took twice SimpleITK's time.
        opener = (lambda p: gzip.open(p, "wb", compresslevel=3)) if compress else (lambda p: open(p, "wb"))
        with opener(target) as out:
            out.write(bytes(header) + b"\x01\0\0\0" + kept + extension)
            shutil.copyfileobj(src, out, CHUNK_BYTES)


def comment_extensions(path: Path) -> list[str]:
    """The texts of a NIfTI-1 file's comment extensions, in order; none for a file without extensions."""
    with _open(Path(path)) as fh:
        header, extender = fh.read(HEADER_BYTES), fh.read(4)
        if len(header) < HEADER_BYTES or len(extender) < 4 or struct.unpack_from("<i", header, 0)[0] not in (HEADER_BYTES, 0x5C010000):
            return []
        order, offset, has_extensions = _layout(header, extender)
        block = fh.read(max(0, offset - HEADER_BYTES - 4)) if has_extensions else b""
    texts, at = [], 0
    while at + 8 <= len(block):
        size, code = struct.unpack_from(order + "ii", block, at)
        if size < 16 or size % 16 or at + size > len(block):
            break  # a malformed extension: stop, as niftilib does, and keep what was read
        if code == COMMENT_ECODE:
            texts.append(block[at + 8:at + size].rstrip(b"\0").decode("ascii", "replace"))
        at += size
    return texts


def check_nifti(path: Path) -> None:
    """Refuse, naming the file and the field, what ITK would read into wrong voxels; memory stays bounded by one chunk
    whatever the header declares."""
    path = Path(path)
    try:
        header = read_header(path)
    except (OSError, EOFError) as exc:
        raise InputError(path, f"cannot be read as an image (corrupt or truncated?): {exc}") from exc
    if len(header) < HEADER_BYTES:
        raise InputError(path, f"is truncated: its NIfTI header has {len(header)} of {HEADER_BYTES} bytes")
    endian = _byte_order(header)
    if struct.unpack_from(endian + "i", header, 0)[0] != HEADER_BYTES:
        return  # not NIfTI-1 (NIfTI-2 or ANALYZE): ITK's own checks apply
    dims = struct.unpack_from(endian + "8h", header, 40)
    datatype, bitpix = struct.unpack_from(endian + "2h", header, 70)
    pixdim = struct.unpack_from(endian + "8f", header, 76)
    vox_offset = struct.unpack_from(endian + "f", header, 108)[0]
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1:ndim + 1]):
        raise InputError(path, f"has an invalid NIfTI dim field {list(dims)}")
    shape = [int(d) for d in dims[1:ndim + 1]]
    voxels = int(np.prod(shape, dtype=np.int64))
    for axis, spacing in zip("xyz", pixdim[1:min(ndim, 3) + 1]):
        if not np.isfinite(spacing) or spacing <= 0:
            raise InputError(path, f"has voxel spacing {spacing} along {axis} (NIfTI pixdim); a CT needs a positive spacing")
    rules.check_voxel_budget(path, voxels)
    dtype = DATATYPES.get(datatype)
    _check_data(path, voxels * max(bitpix, 8) // 8, int(vox_offset), np.dtype(endian + dtype) if dtype and dtype.startswith("f") else None)


def nifti_form_disagreement(path: Path) -> str | None:
    """When a NIfTI file carries both an sform and a qform that place it differently: by how much. ITK and
    Slicer use the sform, so this tool does too, but one of the two is wrong and the user should know.
    Read from the header itself: ITK's metadata drops qfac, the sign that makes a qform left-handed."""
    header = read_header(path)
    if len(header) < HEADER_BYTES:
        return None
    endian = _byte_order(header)
    qform_code, sform_code = struct.unpack_from(endian + "2h", header, 252)
    if qform_code <= 0 or sform_code <= 0:
        return None
    qfac = struct.unpack_from(endian + "f", header, 76)[0]
    b, c, d, *q_origin = struct.unpack_from(endian + "6f", header, 256)
    srows = np.array(struct.unpack_from(endian + "12f", header, 280), float).reshape(3, 4)
    a = np.sqrt(max(0.0, 1.0 - b * b - c * c - d * d))
    rotation = np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                         [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
                         [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])  # NIfTI-1 qform
    if qfac < 0:
        rotation[:, 2] *= -1
    s_axes = srows[:, :3] / np.linalg.norm(srows[:, :3], axis=0)
    origin_off = float(np.abs(srows[:, 3] - np.asarray(q_origin)).max())
    axes_off = float(np.abs(s_axes - rotation).max())
    tolerance = rules.NIFTI_FORM_TOLERANCE
    if origin_off <= tolerance["origin_mm"] and axes_off <= tolerance["direction"]:
        return None
    return (f"sform and qform differ (origin by {origin_off:.2f} mm, axes by {axes_off:.3f}); read with the sform, "
            "as ITK and 3D Slicer do")


def _truncated(path: Path, declared: int, held: int) -> InputError:
    return InputError(path, f"is truncated: its header declares {declared} bytes of image data, the file holds {max(held, 0)}")


def _check_data(path: Path, declared: int, offset: int, float_dtype) -> None:
    """Stream the file once: it must hold ``declared`` bytes of voxels after ``offset``; float voxels must be finite."""
    if float_dtype is None and not path.name.lower().endswith(".gz"):
        held = path.stat().st_size - offset  # integer voxels uncompressed: the size says it all, nothing need be read
        if held < declared:
            raise _truncated(path, declared, held)
        return
    got, bad, carry = 0, 0, b""
    try:
        with _open(path) as fh:
            while True:
                chunk = fh.read(CHUNK_BYTES)
                if not chunk:
                    break
                start = got
                got += len(chunk)
                if float_dtype is None:
                    continue
                data = chunk[max(0, offset - start):] if start < offset else chunk
                if start + len(chunk) <= offset:
                    continue
                data = carry + data
                usable = len(data) - len(data) % float_dtype.itemsize
                bad += int((~np.isfinite(np.frombuffer(data[:usable], float_dtype))).sum())
                carry = data[usable:]
    except (OSError, EOFError, gzip.BadGzipFile) as exc:  # a cut .nii.gz ends before its gzip trailer
        raise InputError(path, f"is truncated or corrupt: the compressed data ends after {got} bytes ({exc})") from exc
    if got - offset < declared:
        raise _truncated(path, declared, got - offset)
    if bad:
        raise InputError(path, f"has {bad} NaN or infinite voxels")

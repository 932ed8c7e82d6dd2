"""NIfTI (``.nii``, ``.nii.gz``) read header first: the voxels cost what the header describes, not what the file holds.

The header is read first and its claimed size checked against the file and the available memory before the voxels
are allocated (once); data after the image in a ``.gz`` stream is refused. The image keeps the file's header (qform,
sform and their codes), with the scaling applied to the array.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path

import numpy as np

from satseg.errors import InputError
from satseg.io._common import _fmt, _fmt_bytes, _one_line, _volume_index
from satseg.io.memory import _check_memory
from satseg.io.volume import Volume

try:  # ISA-L's gzip reader: the same bytes and CRC check as the standard library's, faster
    # (benchmarks/RESULTS.md §5, "After the measured runs")
    from isal import igzip as _gzip_reader
    from isal.isal_zlib import error as _isal_error
except ImportError:  # pragma: no cover - isal is a dependency, but the standard library still reads
    _gzip_reader, _isal_error = gzip, zlib.error
_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, _isal_error, gzip.BadGzipFile, RuntimeError, MemoryError)
# A .nii.gz stream may hold a few padding bytes after the image its header describes (nibabel writes none); more
# than this is refused: the image is not what the header says, and decompressing it all could fill the memory.
GZIP_TRAILING_MARGIN = 64 * 1024
# Voxel data are decompressed straight into the image's buffer in pieces of this size (the only large allocation).
_READ_CHUNK = 4 * 1024 * 1024


def _read_nifti(path: Path, volume: int | None) -> Volume:
    """Header first, then only as many voxel bytes as the header describes (see :func:`_read_nifti_voxels`)."""
    import nibabel as nib

    with _open_nifti(path) as fobj:
        try:
            header, stored = _read_nifti_header(path, fobj)
            shape = header.get_data_shape()
        except nib.spatialimages.HeaderDataError as exc:
            raise InputError(f"{path.name}: not a NIfTI file ({_one_line(exc)})") from exc
        except _READ_ERRORS as exc:
            raise InputError(f"{path.name}: cannot read the file, corrupt or truncated ({_one_line(exc)})") from exc

        if int(stored["sform_code"]) == 0:  # the voxel size comes from pixdim
            pixdim = np.asarray(stored["pixdim"][1:4], dtype=np.float64)[: len(shape)]
            if np.any(~np.isfinite(pixdim)) or np.any(pixdim <= 0):
                raise InputError(f"{path.name}: voxel spacing (pixdim) {_fmt(pixdim)} is not positive")
        spatial = shape[:3]
        extra = shape[3:]
        if len(spatial) < 3 or min(spatial) < 2:
            raise InputError(f"{path.name}: the scan is 2D (shape {shape}); a 3D volume is needed")
        if len(extra) > 1 and any(s > 1 for s in extra[1:]):
            raise InputError(
                f"{path.name}: {len(shape)}D image with shape {shape}; only 3D and 4D scans are supported"
            )
        n_volumes = extra[0] if extra else 1
        index = _volume_index(path.name, n_volumes, volume)

        try:
            raw = _read_nifti_voxels(path, fobj, header, index if extra else None)
        except (*_READ_ERRORS, nib.spatialimages.HeaderDataError) as exc:  # HeaderDataError: a broken extension
            raise InputError(
                f"{path.name}: cannot read the voxel data, file truncated or corrupt ({_one_line(exc)})"
            ) from exc

    # scl_slope / scl_inter applied by nibabel's own rule (the array stays as stored when the scan is unscaled)
    slope, inter = header.get_slope_inter()
    data = nib.volumeutils.apply_read_scaling(raw, slope, inter)
    # the image built as nibabel's loader builds it: header passed through, affine from the header
    klass = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    img = klass(data, None, header)
    affine = header.get_best_affine()
    header = img.header.copy()
    header.set_data_shape(data.shape)
    header.set_slope_inter(None, None)  # the array already holds scaled values
    meta = {
        "format": "nifti",
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
    }
    if extra:
        meta["volume"] = index
        meta["n_volumes"] = n_volumes
    return Volume(array=data, affine=np.asarray(affine, dtype=np.float64), header=header, source=path, meta=meta)


def _open_nifti(path: Path):
    """The file's NIfTI byte stream: decompressed on the fly for ``.gz`` (ISA-L), else the file itself."""
    try:
        if path.name.lower().endswith(".gz"):
            return _gzip_reader.open(path, "rb")
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path.name}: cannot open the file ({_one_line(exc)})") from exc


def _read_nifti_header(path: Path, fobj):
    """Read the NIfTI-1 (348 bytes) or NIfTI-2 (540 bytes) header at the start of ``fobj``, either byte order.

    Returns ``(header, stored)``: the header as nibabel's loader checks and fixes it, and the header as stored
    (nibabel silently 'fixes' zero or negative pixdim; the stored values are checked). Refuses a header whose
    dimensions or data offset cannot describe an image in this file, before anything is allocated.
    ``fobj`` is left at the end of the header, where the extension flag or the extensions begin.
    """
    import nibabel as nib

    head = fobj.read(4)  # read(n) returns fewer than n bytes only where the stream ends
    for byte_order in ("<", ">"):
        size = int.from_bytes(head, "little" if byte_order == "<" else "big")
        if size in (348, 540):
            break
    else:
        raise InputError(f"{path.name}: not a NIfTI file (header size field {head!r}; expected 348 or 540)")
    header_class = nib.Nifti1Header if size == 348 else nib.Nifti2Header
    head += fobj.read(size - 4)
    if len(head) < size:
        raise OSError(f"the file ends inside the {size}-byte NIfTI header, after {len(head)} bytes")

    stored = header_class(head, endianness=byte_order, check=False)
    magic = bytes(stored["magic"]).rstrip(b"\x00")
    if magic not in (header_class.single_magic, header_class.pair_magic):
        raise InputError(f"{path.name}: not a NIfTI file (magic {magic!r})")
    n_dims = int(stored["dim"][0])
    if not 1 <= n_dims <= 7:
        raise InputError(f"{path.name}: not a NIfTI file (dim[0] = {n_dims}; expected 1 to 7 dimensions)")
    dims = tuple(int(d) for d in stored["dim"][1 : n_dims + 1])
    if any(d < 0 for d in dims):
        raise InputError(f"{path.name}: the header's dimensions {dims} are negative")
    vox_offset = float(stored["vox_offset"])
    if not math.isfinite(vox_offset) or vox_offset < 0:
        raise InputError(f"{path.name}: the header's data offset (vox_offset) {vox_offset:g} is not usable")
    if vox_offset < size + 4:  # nibabel would read the header itself as voxels
        if magic == header_class.pair_magic:
            raise InputError(
                f"{path.name}: the header is one of a .hdr/.img pair (magic {magic!r}); its voxels are in another file"
            )
        raise InputError(
            f"{path.name}: the header's data offset (vox_offset) {vox_offset:g} lies inside the {size}-byte header"
        )
    header = header_class(head, endianness=byte_order, check=True)
    return header, stored


def _read_nifti_voxels(path: Path, fobj, header, index: int | None) -> np.ndarray:
    """The voxels the header describes, as stored (dtype and byte order of the file, Fortran order); the volume
    ``index`` of a 4D scan, or the whole image when it is None. Also reads the header extensions into ``header``.

    Memory is bounded by the header, not by the file: the claimed size is checked against the memory available
    and (uncompressed) against the file's size before anything is allocated; the buffer is allocated once and
    filled in place, so a header that lies costs only the bytes that really arrive. A ``.gz`` stream is read to
    its end (its CRC and length checked) but no further than :data:`GZIP_TRAILING_MARGIN` past the image: more
    data after the image is refused, it would otherwise be decompressed for nothing.
    """
    from nibabel.volumeutils import native_code

    header_size = header.sizeof_hdr
    offset = header.get_data_offset()
    dtype = header.get_data_dtype()
    shape = header.get_data_shape()
    image_bytes = math.prod(shape) * dtype.itemsize
    if index is None:
        start, count = 0, image_bytes
    else:  # 4D: one volume, contiguous in Fortran order
        shape = shape[:3]
        count = math.prod(shape) * dtype.itemsize
        start = index * count
    what = f"a {'×'.join(map(str, header.get_data_shape()))} {dtype.name} image of {_fmt_bytes(image_bytes)}"
    _check_memory(path, what, offset + count)
    compressed = isinstance(fobj, gzip.GzipFile)
    if not compressed:
        file_bytes = os.fstat(fobj.fileno()).st_size
        if file_bytes < offset + image_bytes:
            raise InputError(
                f"{path.name}: the file is truncated: its header describes {_fmt_bytes(image_bytes)} of voxels "
                f"from byte {offset} on, the file holds {file_bytes:,} bytes"
            )

    # header extensions (between the header and the voxels), read as nibabel's Nifti1Header.from_fileobj does
    between = fobj.read(offset - header_size)
    if len(between) < offset - header_size:
        raise InputError(f"{path.name}: the file is truncated: it ends before the voxel data (offset {offset})")
    if len(between) >= 4 and between[:1] != b"\x00":
        swapped = header.endianness != native_code
        header.extensions = header.exts_klass.from_fileobj(io.BytesIO(between[4:]), len(between) - 4, swapped)

    buffer = np.empty(count, dtype=np.uint8)  # untouched pages cost no memory until the data arrive
    if compressed:  # a stream cannot seek: the volumes before and after the one wanted are decompressed and dropped
        got = _skip(fobj, start)
        if got == start:
            got += _read_into(fobj, buffer)
        if got == start + count:
            got += _skip(fobj, image_bytes - start - count)
        if got < image_bytes:
            raise InputError(
                f"{path.name}: the stream is truncated: it ends after {_fmt_bytes(got)} of the "
                f"{_fmt_bytes(image_bytes)} of voxel data its header describes"
            )
        # the end of the stream must follow within the margin; reading up to it checks the gzip CRC and length
        trailing = len(fobj.read(GZIP_TRAILING_MARGIN + 1))
        if trailing > GZIP_TRAILING_MARGIN:
            raise InputError(
                f"{path.name}: more than {_fmt_bytes(GZIP_TRAILING_MARGIN)} of data after the image the header "
                f"describes ({image_bytes:,} bytes of voxels); the file is not what its header says"
            )
    else:
        fobj.seek(offset + start)
        if _read_into(fobj, buffer) < count:  # the file shrank since it was measured
            raise OSError(f"the file ends before the {_fmt_bytes(image_bytes)} of voxel data its header describes")
    return buffer.view(dtype).reshape(shape, order="F")


def _read_into(fobj, buffer: np.ndarray) -> int:
    """Fill the uint8 ``buffer`` from ``fobj`` piece by piece; returns the bytes read (fewer where the stream ends)."""
    view = memoryview(buffer)
    done = 0
    while done < len(view):
        n = fobj.readinto(view[done : done + _READ_CHUNK])
        if not n:
            break
        done += n
    return done


def _skip(fobj, n_bytes: int) -> int:
    """Read and drop ``n_bytes`` (a compressed stream cannot seek); returns how many there were."""
    scratch = memoryview(bytearray(min(n_bytes, _READ_CHUNK)))
    done = 0
    while done < n_bytes:
        n = fobj.readinto(scratch[: n_bytes - done])
        if not n:
            break
        done += n
    return done

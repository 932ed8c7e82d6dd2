"""Reader limits: what a file is allowed to cost before it is refused.

Only regular files and folders are opened (a FIFO or a device would block or never end), and the memory a NIfTI read
takes is bounded by what its header describes, not by how much the file or its gzip stream holds: data after the
image is refused, a header that claims more than the file holds or than the machine has is refused before the
voxels are allocated. Files are written by nibabel / SimpleITK first, then altered the way a broken or hostile file
would be. Memory is measured as the peak RSS of a child process that does only the read.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from isal import isal_zlib

from pipeline_helpers import error_lines, run_cli, tiny_model_env
from satseg.errors import EXIT_USAGE, InputError
from satseg.io import read_volume
from satseg.io.readers import GZIP_TRAILING_MARGIN

MiB = 1 << 20
# The peak RSS allowed to a child that reads one small scan; importing numpy, nibabel and satseg takes ~100 MiB.
RSS_LIMIT_MiB = 300


def assert_one_line(info, *fragments: str) -> str:
    message = str(info.value)
    assert "\n" not in message and 0 < len(message) < 400, message
    assert info.value.exit_code == EXIT_USAGE
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def nifti_bytes(path: Path) -> bytes:
    """The NIfTI byte stream of a .nii or .nii.gz file."""
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.name.endswith(".gz") else raw


def gzip_stream(dest: Path, content: bytes, n_zeros: int = 0) -> Path:
    """``content`` followed by ``n_zeros`` zero bytes, as ONE gzip stream (ISA-L level 1: 600 MiB of zeros in
    ~0.1 s, compressed to ~600 KiB), as a tool that appends to the decompressed data before compressing would."""
    compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)  # wbits 31: gzip header and trailer
    zeros = memoryview(bytes(min(n_zeros, 16 * MiB)))
    with open(dest, "wb") as out:
        out.write(compressor.compress(content))
        left = n_zeros
        while left:
            piece = zeros[: min(left, len(zeros))]
            out.write(compressor.compress(piece))
            left -= len(piece)
        out.write(compressor.flush())
    return dest


def claiming_header(shape, dtype) -> bytes:
    """A nibabel NIfTI-1 header (with the 4-byte extension flag) claiming an image of ``shape`` and ``dtype``."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    return header.binaryblock + b"\x00" * 4


def read_in_child(path: Path) -> dict:
    """Read ``path`` in a fresh interpreter; returns its error (or shape) and its peak RSS in MiB."""
    if not Path("/proc/self/status").exists():
        pytest.skip("peak RSS is read from /proc (Linux)")
    script = textwrap.dedent(
        f"""
        import json
        from satseg.errors import InputError
        from satseg.io import read_volume
        try:
            result = {{"shape": list(read_volume({str(path)!r}).array.shape)}}
        except InputError as exc:
            result = {{"error": str(exc)}}
        # VmHWM, not getrusage's ru_maxrss: Linux carries the forking parent's peak (pytest's, with torch) into
        # ru_maxrss across exec, while VmHWM belongs to this process image alone
        with open("/proc/self/status") as status:
            peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        result["max_rss_mib"] = peak_kib / 1024
        print(json.dumps(result))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


# --- item 5: only regular files and folders are opened ----------------------------------------------------------


@pytest.mark.timeout(20)  # without the check, opening the FIFO blocks forever
@pytest.mark.parametrize("name", ["scan.nii.gz", "scan"])
def test_a_fifo_is_refused_without_opening_it(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with pytest.raises(InputError) as info:
        read_volume(fifo)
    assert_one_line(info, "not a regular file or folder (a FIFO)", name)


@pytest.mark.timeout(20)
def test_a_symlink_to_a_fifo_is_refused_and_a_symlink_to_a_scan_reads(tmp_path, reference_files):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "via_link.nii.gz").symlink_to(tmp_path / "fifo")
    with pytest.raises(InputError) as info:
        read_volume(tmp_path / "via_link.nii.gz")
    assert_one_line(info, "(a FIFO)")

    (tmp_path / "ct.nii.gz").symlink_to(reference_files / "example_ct_sm.nii.gz")
    assert read_volume(tmp_path / "ct.nii.gz").array.shape == (122, 101, 30)


@pytest.mark.timeout(20)  # /dev/zero never ends
@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
@pytest.mark.parametrize("name", ["scan.nii.gz", "scan.nii", "scan"])
def test_a_character_device_is_refused(tmp_path, device, name):
    if not Path(device).exists():
        pytest.skip(f"no {device} here")
    (tmp_path / name).symlink_to(device)
    for path in (tmp_path / name, Path(device)):
        with pytest.raises(InputError) as info:
            read_volume(path)
        assert_one_line(info, "not a regular file or folder (a character device)")


@pytest.mark.timeout(20)
def test_a_socket_is_refused(tmp_path):
    path = tmp_path / "s.nii"
    if len(str(path)) > 100:  # AF_UNIX paths are limited to ~108 bytes
        pytest.skip("temporary path too long for a Unix socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        with pytest.raises(InputError) as info:
            read_volume(path)
    assert_one_line(info, "(a socket)")


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory, mpnet_dir):
    return tiny_model_env(tmp_path_factory.mktemp("satseg-home"), mpnet_dir)


def test_the_cli_refuses_a_fifo_with_one_line_and_exit_2(cli_env, tmp_path):
    os.mkfifo(tmp_path / "scan.nii.gz")
    done = run_cli(str(tmp_path / "scan.nii.gz"), "-p", "liver", "-o", str(tmp_path / "out"),
                   "--model", "tiny-test", env=cli_env, timeout=120)  # a hang ends in TimeoutExpired
    assert done.returncode == EXIT_USAGE, done.stderr
    lines = error_lines(done.stderr)
    assert len(lines) == 1 and "not a regular file or folder (a FIFO)" in lines[0], done.stderr


# --- item 6: gzip data after the image ---------------------------------------------------------------------------


def test_megabytes_of_data_after_the_image_are_refused(tmp_path, reference_files):
    content = nifti_bytes(reference_files / "example_ct_sm.nii.gz")
    path = gzip_stream(tmp_path / "trailing.nii.gz", content, n_zeros=4 * MiB)
    with pytest.raises(InputError) as info:
        read_volume(path)
    assert_one_line(info, "trailing.nii.gz", "of data after the image the header describes")


def test_padding_within_the_margin_is_accepted_and_reads_the_same(tmp_path, reference_files):
    source = reference_files / "example_ct_sm.nii.gz"
    padded = gzip_stream(tmp_path / "padded.nii.gz", nifti_bytes(source), n_zeros=1000)
    at_margin = gzip_stream(tmp_path / "at_margin.nii.gz", nifti_bytes(source), n_zeros=GZIP_TRAILING_MARGIN)
    expected = read_volume(source).array
    np.testing.assert_array_equal(read_volume(padded).array, expected)
    np.testing.assert_array_equal(read_volume(at_margin).array, expected)
    over = gzip_stream(tmp_path / "over.nii.gz", nifti_bytes(source), n_zeros=GZIP_TRAILING_MARGIN + 1)
    with pytest.raises(InputError, match="after the image"):
        read_volume(over)


def test_600_mib_of_trailing_zeros_are_refused_in_bounded_memory(tmp_path, reference_files):
    # the outside trial: a valid scan followed by GiBs of compressed zeros used to be decompressed whole
    n_zeros = 600 * MiB
    path = gzip_stream(tmp_path / "bomb.nii.gz", nifti_bytes(reference_files / "example_ct_sm.nii.gz"), n_zeros)
    assert path.stat().st_size < 4 * MiB  # the whole point: a small file
    result = read_in_child(path)
    assert "of data after the image the header describes" in result.get("error", ""), result
    assert result["max_rss_mib"] < RSS_LIMIT_MiB, result


def test_damaged_gzip_trailer_is_still_refused(tmp_path, reference_files):
    # the stream ends right after the image, so its CRC and length must still be checked
    good = reference_files / "example_ct_sm.nii.gz"
    raw = good.read_bytes()
    crc, length = struct.unpack("<II", raw[-8:])
    for name, trailer in (("bad_crc", struct.pack("<II", crc ^ 1, length)),
                          ("bad_length", struct.pack("<II", crc, length + 1))):
        path = tmp_path / f"{name}.nii.gz"
        path.write_bytes(raw[:-8] + trailer)
        with pytest.raises(InputError) as info:
            read_volume(path)
        assert_one_line(info, f"{name}.nii.gz")


def test_a_stream_cut_inside_the_voxels_is_refused_as_truncated(tmp_path, reference_files):
    content = nifti_bytes(reference_files / "example_ct_sm.nii.gz")
    path = gzip_stream(tmp_path / "cut.nii.gz", content[: len(content) // 2])  # a complete stream, half the data
    with pytest.raises(InputError) as info:
        read_volume(path)
    assert_one_line(info, "cut.nii.gz", "truncated")


# --- item 6: the header's claim, checked against the file and the memory -----------------------------------------


@pytest.mark.parametrize("compressed", [True, False])
def test_a_small_file_claiming_gigabytes_is_refused_before_allocating(tmp_path, compressed):
    shape, dtype = (1024, 1024, 512), np.int32  # 2 GiB claimed
    if os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") < 8 << 30:
        pytest.skip("needs a machine where a 2 GiB claim passes the memory check (8 GiB or more)")
    content = claiming_header(shape, dtype) + bytes(1000)
    if compressed:
        path = tmp_path / "liar.nii.gz"
        path.write_bytes(gzip.compress(content))
    else:
        path = tmp_path / "liar.nii"
        path.write_bytes(content)
    assert path.stat().st_size < 1500
    result = read_in_child(path)
    assert "truncated" in result.get("error", ""), result
    assert "2,147,483,648 bytes" in result["error"], result  # names the claimed size of the voxel data
    assert result["max_rss_mib"] < RSS_LIMIT_MiB, result


@pytest.mark.parametrize("compressed", [True, False])
def test_a_header_claiming_more_than_the_machines_memory_is_refused_with_the_size(tmp_path, compressed):
    shape, dtype = (32767, 32767, 32767), np.float64  # the largest NIfTI-1 3D image: 256 TiB
    claimed = int(np.prod(shape, dtype=np.int64)) * 8
    assert claimed > os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    content = claiming_header(shape, dtype) + bytes(1000)
    path = tmp_path / ("huge.nii.gz" if compressed else "huge.nii")
    path.write_bytes(gzip.compress(content) if compressed else content)
    with pytest.raises(InputError) as info:
        read_volume(path)
    assert_one_line(info, "huge.nii", f"{claimed:,} bytes", "memory available")


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_itk_header_claiming_more_than_the_memory_is_refused_before_reading(tmp_path, suffix):
    # written compressed by SimpleITK, then the header's size line is raised to 90000×70000×50000 int16 (573 TiB)
    image = sitk.GetImageFromArray(np.arange(5 * 7 * 9, dtype=np.int16).reshape(5, 7, 9))
    small = tmp_path / f"small{suffix}"
    sitk.WriteImage(image, str(small), useCompression=True)
    raw = small.read_bytes()
    size_line = b"DimSize = 9 7 5" if suffix == ".mha" else b"sizes: 9 7 5"
    assert size_line in raw
    huge = tmp_path / f"huge{suffix}"
    huge.write_bytes(raw.replace(size_line, size_line.replace(b"9 7 5", b"90000 70000 50000")))
    claimed = 90000 * 70000 * 50000 * 2
    assert read_volume(small).array.shape == (9, 7, 5)
    with pytest.raises(InputError) as info:
        read_volume(huge)
    assert_one_line(info, f"huge{suffix}", f"{claimed:,} bytes", "memory available")


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"vox_offset": 0.0}, "lies inside the 348-byte header"),  # nibabel read the header as voxels
        ({"dim0": 9}, "dim[0] = 9"),
        ({"dim1": -5}, "negative"),
        ({"datatype": 999}, "not a NIfTI file"),  # was an uncaught HeaderDataError
        ({"magic": b"xyz\x00"}, "not a NIfTI file"),
    ],
)
@pytest.mark.parametrize("compressed", [True, False])
def test_a_header_that_cannot_describe_the_file_is_a_one_line_error(tmp_path, patch, fragment, compressed):
    img = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), np.eye(4))
    nib.save(img, tmp_path / "good.nii")
    raw = bytearray((tmp_path / "good.nii").read_bytes())
    for field, value in patch.items():
        offset, fmt = {"vox_offset": (108, "<f"), "dim0": (40, "<h"), "dim1": (42, "<h"),
                       "datatype": (70, "<h"), "magic": (344, "4s")}[field]
        raw[offset: offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path = tmp_path / ("bad.nii.gz" if compressed else "bad.nii")
    path.write_bytes(gzip.compress(bytes(raw)) if compressed else bytes(raw))
    with pytest.raises(InputError) as info:
        read_volume(path)
    assert_one_line(info, path.name, fragment)


# --- what works must keep working: same voxels, header and affine as nibabel ------------------------------------


@pytest.mark.parametrize("name", ["example_ct.nii.gz", "example_ct_sm.nii.gz", "example_mr_sm.nii.gz",
                                  "example_seg.nii.gz"])
def test_real_scans_read_the_same_as_nibabel(reference_files, name):
    path = reference_files / name
    expected = nib.load(path)
    vol = read_volume(path)
    reference = np.asanyarray(expected.dataobj)
    assert vol.array.dtype == reference.dtype
    np.testing.assert_array_equal(vol.array, reference)
    np.testing.assert_array_equal(vol.affine, expected.affine)
    assert [(e.get_code(), e.get_content()) for e in vol.header.extensions] == [
        (e.get_code(), e.get_content()) for e in expected.header.extensions
    ]


def test_the_real_segmentation_keeps_its_header_extension(reference_files):
    # example_seg.nii.gz stores its label names in a 12.8 KB extension between the header and the voxels
    vol = read_volume(reference_files / "example_seg.nii.gz")
    assert len(vol.header.extensions) == 1 and len(vol.header.extensions[0].get_content()) > 10_000


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("header_class", [nib.Nifti1Header, nib.Nifti2Header])
@pytest.mark.parametrize("endianness", ["<", ">"])
def test_written_scans_read_the_same_as_nibabel(tmp_path, suffix, header_class, endianness):
    # NIfTI-1 and -2, both byte orders, scaled integers, and a comment extension
    image_class = nib.Nifti1Image if header_class is nib.Nifti1Header else nib.Nifti2Image
    data = np.random.default_rng(0).integers(-1000, 2000, (20, 18, 16)).astype(np.int16)
    img = image_class(data, np.diag([0.8, 0.9, 2.5, 1.0]), header=header_class(endianness=endianness))
    img.set_data_dtype(np.int16)
    img.header.set_slope_inter(0.5, -1024.0)
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"written by the reader-limit tests"))
    path = tmp_path / f"scan{suffix}"
    nib.save(img, path)
    expected = nib.load(path)
    assert expected.header.endianness == endianness
    vol = read_volume(path)
    reference = np.asanyarray(expected.dataobj)
    assert vol.array.dtype == reference.dtype
    np.testing.assert_array_equal(vol.array, reference)
    np.testing.assert_array_equal(vol.affine, expected.affine)
    assert vol.header.extensions[0].get_content() == b"written by the reader-limit tests"


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_each_4d_volume_reads_the_same_as_nibabel(tmp_path, suffix):
    data = np.random.default_rng(1).integers(0, 100, (10, 9, 8, 4)).astype(np.int16)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_slope_inter(2.0, 1.0)
    nib.save(img, tmp_path / f"dyn{suffix}")
    expected = nib.load(tmp_path / f"dyn{suffix}")
    for index in range(4):
        vol = read_volume(tmp_path / f"dyn{suffix}", volume=index)
        np.testing.assert_array_equal(vol.array, np.asanyarray(expected.dataobj[..., index]))
        assert vol.meta["volume"] == index and vol.meta["n_volumes"] == 4


def test_a_4d_stream_cut_in_its_last_volume_is_refused_even_for_volume_0(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((10, 9, 8, 4), np.int16), np.eye(4)), tmp_path / "dyn.nii")
    content = (tmp_path / "dyn.nii").read_bytes()
    path = gzip_stream(tmp_path / "cut.nii.gz", content[:-100])
    with pytest.raises(InputError) as info:
        read_volume(path, volume=0)
    assert_one_line(info, "truncated")

"""The sliding-window loop's pieces (identical windows found exactly, only the box decoded, conv weights in the
autocast dtype), and fast, parallel gzip writes."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch

from satseg.inference.sliding_window import (
    accumulation_place,
    crop_per_pixel,
    group_identical_windows,
    window_slices,
)
from satseg.io import nifti_write
from satseg.io.volume import Volume
from satseg.model import build_sat
from satseg.outputs.masks import write_mask, write_masks

WINDOW, STRIDE = (8, 8, 4), (4, 4, 2)


def test_windows_with_identical_padded_content_are_grouped_in_order_of_first_appearance():
    volume = torch.full((24, 8, 4), -1.5)  # "air" everywhere...
    volume[:8] = torch.randn(8, 8, 4)  # ...except the first window
    boxes = window_slices(volume.shape, WINDOW, STRIDE)  # starts 0, 4, 8, 12, 16 along the first axis
    groups = group_identical_windows(volume, boxes, WINDOW)
    assert [len(g) for g in groups] == [1, 1, 3]
    assert groups[0][0] == boxes[0] and groups[2] == boxes[2:]
    assert [box for group in groups for box in group] == boxes


@pytest.mark.parametrize("row, col", [(14, 3), (15, 0)])
def test_windows_differing_in_one_voxel_are_not_grouped(row, col):
    # (14, 3): off the fingerprint's voxel lattice in both windows, so only the exact comparison separates them;
    # (15, 0): on the lattice in the window starting at row 8
    volume = torch.full((24, 8, 4), -1.5)
    volume[row, col, 0 if col == 0 else 1] = -1.4999  # one voxel, inside the windows starting at rows 8 and 12 only
    groups = group_identical_windows(volume, window_slices(volume.shape, WINDOW, STRIDE), WINDOW)
    assert [[box[0].start for box in g] for g in groups] == [[0, 4, 16], [8], [12]]


def test_a_zero_padded_short_box_matches_a_full_window_only_when_that_one_ends_in_zeros():
    volume = torch.zeros(12, 8, 4)
    volume[:6] = -1.5
    short = (slice(0, 6), slice(0, 8), slice(0, 4))  # padded with zeros to 8 rows: equals rows 0..8 here
    full = (slice(0, 8), slice(0, 8), slice(0, 4))
    assert group_identical_windows(volume, [short, full], WINDOW) == [[short, full]]
    volume[6] = 0.25
    assert group_identical_windows(volume, [short, full], WINDOW) == [[short], [full]]


def test_decoding_only_the_box_leaves_the_logits_inside_the_box_unchanged():
    torch.manual_seed(0)
    model = build_sat("tiny").eval()
    with torch.inference_mode():
        features = model.encode_image(torch.randn(1, 3, *model.config.window))
        queries = torch.randn(2, model.config.query_dim)
        full = model.decode(features, queries)
        box = (slice(0, 40), slice(10, 74), slice(0, 20))  # 40 × 64 × 20 of a 64 × 64 × 32 window
        cropped = model.decode(crop_per_pixel(features, [box]), queries)
    assert cropped.shape == (1, 2, 40, 64, 20)
    torch.testing.assert_close(cropped, full[:, :, :40, :64, :20], rtol=0, atol=1e-5)


def test_without_a_gpu_the_sums_stay_on_the_cpu_in_float32():
    assert accumulation_place(torch.device("cpu"), 100, (512, 512, 300)) == (torch.device("cpu"), torch.float32)


def _volume(shape=(40, 30, 20)) -> Volume:
    affine = np.diag([0.8, 0.8, 1.5, 1.0])
    affine[:3, 3] = [-10, 5, 30]
    return Volume(array=np.zeros(shape, np.int16), affine=affine, header=nib.Nifti1Image(np.zeros(shape, np.int16), affine).header)


def _backends() -> list[str]:
    names = ["zlib"]
    for module, name in (("isal", "isal"), ("zlib_ng", "zlib-ng")):
        try:
            __import__(module)
            names.append(name)
        except ImportError:
            pass
    return names


@pytest.mark.parametrize("backend", _backends())
def test_masks_compressed_by_each_available_gzip_are_standard_gzip_with_the_nibabel_payload(backend, tmp_path,
                                                                                         monkeypatch):
    monkeypatch.setattr(nifti_write, "_COMPRESSOR", nifti_write._make_compressor(backend))
    volume = _volume()
    mask = np.zeros(volume.shape, bool)
    mask[5:20, 3:17, 2:9] = True
    out = write_mask(mask, volume, tmp_path / "liver.nii.gz")
    payload = gzip.decompress(out.read_bytes())  # the standard library reads it
    reference = nib.load(write_mask(mask, volume, tmp_path / "liver.nii"))
    assert payload == (tmp_path / "liver.nii").read_bytes()
    back = nib.load(out)
    assert np.array_equal(np.asanyarray(back.dataobj), mask.astype(np.uint8))
    assert np.allclose(back.affine, reference.affine)
    assert nifti_write.gzip_backend() == backend


def test_parallel_writing_gives_the_same_files_as_writing_one_at_a_time(tmp_path):
    volume = _volume()
    rng = np.random.default_rng(0)
    masks = {f"organ_{i}": rng.random(volume.shape) > 0.7 for i in range(6)}
    paths = write_masks(masks, volume, tmp_path / "parallel", workers=3)
    assert [p.name for p in paths] == [f"organ_{i}.nii.gz" for i in range(6)]
    for name, mask in masks.items():
        one = write_mask(mask, volume, tmp_path / "serial" / f"{name}.nii.gz")
        assert gzip.decompress(one.read_bytes()) == gzip.decompress((tmp_path / "parallel" / one.name).read_bytes())


def test_convolutions_stored_in_the_autocast_dtype_give_bit_identical_results():
    """cast_conv_weights (what the Predictor does on CUDA) under autocast vs float32 weights under autocast,
    here with the CPU's bfloat16 autocast; restore_weights brings the float32 originals back exactly."""
    from satseg.inference.runtime import cast_conv_weights, restore_weights

    torch.manual_seed(0)
    model = build_sat("tiny").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    image = torch.randn(1, 3, *model.config.window)
    queries = torch.randn(3, model.config.query_dim)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(image, queries)
    originals = cast_conv_weights(model, torch.bfloat16)
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    assert convs and all(m.weight.dtype == torch.bfloat16 for m in convs)
    assert model.transformer_decoder.layers[0].linear1.weight.dtype == torch.float32
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(image, queries)
    assert torch.equal(got, expected)
    restore_weights(model, originals)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in before.items())


def test_a_failure_part_way_through_casting_leaves_every_weight_in_float32(monkeypatch):
    """An out-of-memory error while the Predictor casts its convolutions must not leave some of them in
    half precision (the CPU fallback would then fail on mixed dtypes)."""
    from satseg.inference.predictor import Predictor

    torch.manual_seed(0)
    from satseg.inference.runtime import DeviceState

    predictor = Predictor.__new__(Predictor)
    predictor.model = build_sat("tiny").eval()
    predictor.state = DeviceState(device=torch.device("cpu"), autocast=None)
    before = {k: v.clone() for k, v in predictor.model.state_dict().items()}
    real_to, calls = torch.Tensor.to, []

    def failing_to(self, *args, **kwargs):
        if torch.bfloat16 in args or kwargs.get("dtype") == torch.bfloat16:
            calls.append(1)
            if len(calls) == 3:
                raise torch.cuda.OutOfMemoryError("simulated")
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", failing_to)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        predictor._set_conv_dtype(torch.bfloat16)
    monkeypatch.undo()
    after = predictor.model.state_dict()
    assert len(calls) == 3
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    predictor._set_conv_dtype(None)  # nothing left to undo
    with torch.inference_mode():
        predictor.model(torch.randn(1, 3, *predictor.model.config.window),
                        torch.randn(2, predictor.model.config.query_dim))


def test_reduced_precision_logits_become_the_same_probabilities_in_a_reused_buffer():
    from satseg.inference.sliding_window.loop import _probabilities

    logits = (torch.randn(2, 3, 8, 7, 5) * 4).to(torch.bfloat16)
    probs, spare = _probabilities(logits.clone(), None)
    assert probs.dtype == torch.float32 and torch.equal(probs, torch.sigmoid(logits.float()))
    smaller = logits[:1, :2].clone()
    again, same_spare = _probabilities(smaller, spare)
    assert same_spare is spare and again.data_ptr() == spare.data_ptr()  # reused, not reallocated
    assert torch.equal(again, torch.sigmoid(smaller.float()))
    bigger = torch.randn(3, 3, 8, 7, 5).to(torch.bfloat16)
    grown, new_spare = _probabilities(bigger, spare)
    assert new_spare.numel() == bigger.numel() and torch.equal(grown, torch.sigmoid(bigger.float()))
    own = torch.randn(2, 3, 4, 4, 4)
    expected = torch.sigmoid(own)
    in_place, untouched = _probabilities(own, None)
    assert in_place is own and untouched is None and torch.equal(in_place, expected)  # float32: in place


def _thp_mode() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "absent"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "absent"


@pytest.mark.skipif(_thp_mode() not in ("always", "madvise"), reason="no transparent huge pages on this kernel")
def test_importing_satseg_first_puts_large_cpu_tensors_on_huge_pages():
    """satseg turns on PyTorch's THP_MEM_ALLOC_ENABLE before torch starts: a large tensor's memory is then
    backed by 2 MiB pages (AnonHugePages grows), not faulted in 4 KiB at a time; off again with the variable at 0."""
    import os
    import subprocess
    import sys

    probe = (
        "import satseg, torch, re\n"
        "def huge():\n"
        "    return int(re.search(r'AnonHugePages:\\s+(\\d+)', open('/proc/self/smaps_rollup').read()).group(1))\n"
        "before = huge()\n"
        "x = torch.ones(64 * 2**20 // 4)\n"
        "print(huge() - before)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}

    def grown(extra):
        out = subprocess.run([sys.executable, "-c", probe], env={**env, **extra}, capture_output=True, text=True,
                             check=True)
        return int(out.stdout.split()[-1])

    assert grown({}) >= 32 * 1024  # kB: at least half of the 64 MiB tensor on huge pages
    if _thp_mode() == "madvise":  # with "always" the kernel uses huge pages whatever PyTorch asks
        assert grown({"THP_MEM_ALLOC_ENABLE": "0"}) < 32 * 1024

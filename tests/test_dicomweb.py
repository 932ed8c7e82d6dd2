"""DICOMweb in and out against a real Orthanc (tests/orthanc.py): WADO-RS fetch, STOW-RS store, and the errors."""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pydicom
import pytest
from orthanc import free_port, orthanc_factory, require_orthanc, with_uids  # noqa: F401  (orthanc_factory: fixture)
from pydicom.uid import generate_uid

from satseg.errors import InputError, SatsegError
from satseg.io import read_volume
from satseg.io.dicomweb import (
    PASSWORD_ENV,
    TOKEN_ENV,
    USER_ENV,
    _credentials_from_env,
    credentials_source,
    fetch_series,
    is_dicomweb_url,
    parse_series_url,
    parse_store_url,
    store_instances,
)

PASSWORD = "pw-Zq81-never-shown"
TOKEN = "tok-8Hh2kLq-never-shown"
BASIC = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch):
    for name in (TOKEN_ENV, USER_ENV, PASSWORD_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def ct_series(reference_files, tmp_path_factory) -> tuple[Path, str, str]:
    """The TotalSegmentator DICOM CT with UIDs (the test copy has none): (folder, study UID, series UID)."""
    folder = tmp_path_factory.mktemp("ct") / "series"
    study, series = with_uids(reference_files / "example_ct_dicom", folder)
    return folder, study, series


@pytest.fixture(scope="module")
def pacs(orthanc_factory, ct_series):
    server = orthanc_factory()
    assert server.upload_series(ct_series[0]) == ct_series[1:]
    return server


@pytest.fixture(scope="module")
def locked_pacs(orthanc_factory, ct_series):
    server = orthanc_factory(users={"alice": PASSWORD})
    server.upload_series(ct_series[0])
    return server


def _by_sop(folder: Path) -> dict[str, pydicom.Dataset]:
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    return {ds.SOPInstanceUID: ds for ds in datasets}


def _assert_secret_free(text: str) -> None:
    for secret in (PASSWORD, TOKEN, BASIC):
        assert secret not in text


# --- fetch --------------------------------------------------------------------------------------------------


def test_fetch_series_gives_the_stored_instances_and_the_same_volume(pacs, ct_series, reference_files, tmp_path):
    folder, study, series = ct_series
    dest = fetch_series(pacs.series_url(study, series), tmp_path / "fetched")
    assert dest == tmp_path / "fetched"
    assert [p.name for p in tmp_path.iterdir()] == ["fetched"]  # no partial folder left beside it
    sent, got = _by_sop(folder), _by_sop(dest)
    assert sorted(got) == sorted(sent) and len(got) == 20
    assert {p.name for p in dest.iterdir()} == {f"{uid}.dcm" for uid in sent}
    for uid, ds in got.items():
        assert ds.file_meta.TransferSyntaxUID == sent[uid].file_meta.TransferSyntaxUID  # as stored, not transcoded
        assert ds.PixelData == sent[uid].PixelData
    original, fetched = read_volume(reference_files / "example_ct_dicom"), read_volume(dest)
    np.testing.assert_array_equal(fetched.array, original.array)
    np.testing.assert_array_equal(fetched.affine, original.affine)


def test_fetch_into_an_existing_empty_folder_and_a_trailing_slash(pacs, ct_series, tmp_path):
    _, study, series = ct_series
    (tmp_path / "in").mkdir()
    assert len(list(fetch_series(pacs.series_url(study, series) + "/", tmp_path / "in").iterdir())) == 20


def test_unknown_series_is_an_input_error_and_leaves_no_folder(pacs, ct_series, tmp_path):
    _, study, _ = ct_series
    missing = generate_uid()
    with pytest.raises(InputError, match=f"no instances in series {missing} at {pacs.dicomweb}") as err:
        fetch_series(pacs.series_url(study, missing), tmp_path / "fetched")
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_fetch_refuses_a_folder_that_is_not_empty(pacs, ct_series, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "old.dcm").write_bytes(b"x")
    with pytest.raises(InputError, match="exists and is not empty"):
        fetch_series(pacs.series_url(*ct_series[1:]), tmp_path / "in")


# --- store --------------------------------------------------------------------------------------------------


def _segmentation(ct_folder: Path, dest: Path) -> Path:
    """A small DICOM-SEG made with highdicom: a box on the CT's slices, referencing the CT series."""
    import highdicom as hd

    sources = sorted((pydicom.dcmread(p) for p in ct_folder.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    mask = np.zeros((len(sources), sources[0].Rows, sources[0].Columns), dtype=bool)
    mask[5:15, 100:200, 100:200] = True
    algorithm = hd.AlgorithmIdentificationSequence(
        name="satseg-test", version="0", family=hd.sr.CodedConcept("123109", "DCM", "Manual Processing")
    )
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="box", segmented_property_category=hd.sr.CodedConcept("91723000", "SCT",
        "Anatomical Structure"), segmented_property_type=hd.sr.CodedConcept("10200004", "SCT", "Liver"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
    )
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=generate_uid(), series_number=99,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="satseg", manufacturer_model_name="test",
        software_versions="0", device_serial_number="0",
    )
    path = dest / "segmentation.seg.dcm"
    seg.save_as(path)
    return path


def test_store_a_segmentation_lands_in_orthanc_next_to_its_series(pacs, ct_series, tmp_path):
    folder, study, series = ct_series
    path = _segmentation(folder, tmp_path)
    seg = pydicom.dcmread(path)
    answer = store_instances(pacs.dicomweb, [path])
    assert [s["sop_instance_uid"] for s in answer["stored"]] == [seg.SOPInstanceUID]
    assert answer["stored"][0]["sop_class_uid"] == seg.SOPClassUID
    assert answer["retrieve_url"] == f"{pacs.dicomweb}/studies/{study}"  # built from our Host header, port kept
    in_study = {s["0020000E"]["Value"][0] for s in pacs.get(f"/dicom-web/studies/{study}/series")}
    assert in_study == {series, seg.SeriesInstanceUID}
    stored = pacs.get(f"/dicom-web/studies/{study}/series/{seg.SeriesInstanceUID}/metadata")
    assert len(stored) == 1 and stored[0]["00080016"]["Value"] == [seg.SOPClassUID]
    referenced = stored[0]["00081115"]["Value"][0]["0020000E"]["Value"]  # ReferencedSeriesSequence
    assert referenced == [series]


def test_store_to_a_study_url(pacs, ct_series, tmp_path):
    folder, study, _ = ct_series
    copy = tmp_path / "copy"
    with_uids(folder, copy, study=study)
    paths = sorted(copy.iterdir())[:2]
    answer = store_instances(f"{pacs.dicomweb}/studies/{study}", paths)
    assert answer["study"] == study
    assert {s["sop_instance_uid"] for s in answer["stored"]} == {pydicom.dcmread(p).SOPInstanceUID for p in paths}
    series = pydicom.dcmread(paths[0]).SeriesInstanceUID
    assert len(pacs.get(f"/dicom-web/studies/{study}/series/{series}/instances")) == 2


def test_store_of_another_study_to_a_study_url_is_refused_before_sending(pacs, ct_series, tmp_path):
    folder, study, _ = ct_series
    other = tmp_path / "other"
    other_study, _ = with_uids(folder, other)
    with pytest.raises(InputError, match=f"belongs to study {other_study}, not to {study}"):
        store_instances(f"{pacs.dicomweb}/studies/{study}", sorted(other.iterdir())[:1])
    assert other_study not in pacs.get("/dicom-web/studies").__repr__()


def test_a_store_the_server_refuses_raises_with_its_status_and_answer(pacs, reference_files):
    no_uids = sorted((reference_files / "example_ct_dicom").iterdir())[:1]  # Orthanc refuses instances without UIDs
    before = pacs.get("/statistics")["CountInstances"]
    with pytest.raises(SatsegError) as err:
        store_instances(pacs.dicomweb, no_uids)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"the DICOMweb server at 127.0.0.1:{pacs.url.rsplit(':', 1)[1]} did not store 1 of 1 "
                              "instance(s) (without SOPInstanceUID); its answer: {")
    assert '"00081199": {"Value": [], "vr": "SQ"}' in message  # Orthanc's empty ReferencedSOPSequence, quoted
    assert pacs.get("/statistics")["CountInstances"] == before


def test_store_refuses_a_file_that_is_not_dicom(pacs, tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(InputError, match="notes.txt: cannot be stored, not a readable DICOM file"):
        store_instances(pacs.dicomweb, [tmp_path / "notes.txt"])


# --- credentials --------------------------------------------------------------------------------------------


def test_basic_credentials_from_the_environment_open_a_locked_server(locked_pacs, ct_series, tmp_path, monkeypatch):
    monkeypatch.setenv(USER_ENV, "alice")
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    assert len(list(fetch_series(locked_pacs.series_url(*ct_series[1:]), tmp_path / "in").iterdir())) == 20


@pytest.mark.parametrize("setting", ["none", "wrong password", "token"])
def test_refused_credentials_are_an_input_error_that_never_shows_them(
    setting, locked_pacs, ct_series, tmp_path, monkeypatch, caplog
):
    if setting == "wrong password":
        monkeypatch.setenv(USER_ENV, "alice")
        monkeypatch.setenv(PASSWORD_ENV, PASSWORD + "x")
    elif setting == "token":
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(InputError, match=r"the DICOMweb server refused the credentials \(HTTP 401\)") as err:
        fetch_series(locked_pacs.series_url(*ct_series[1:]), tmp_path / "in")
    assert ("none were given" in str(err.value)) == (setting == "none")
    with pytest.raises(InputError, match=r"refused the credentials \(HTTP 401\)") as err_store:
        store_instances(locked_pacs.dicomweb, sorted(ct_series[0].iterdir())[:1])
    for text in (str(err.value), str(err_store.value), repr(err.value), caplog.text):
        _assert_secret_free(text)
        assert PASSWORD + "x" not in text
    assert list(tmp_path.iterdir()) == []


class _Echo(BaseHTTPRequestHandler):
    """Answers every request with its Authorization value, request line and headers, like a debug proxy."""

    status = 500
    content_type = "text/plain"
    body = b""  # when set, the answer instead of the echo

    def log_message(self, format, *args):
        pass

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = self.body or f"{self.headers.get('Authorization')}\n{self.requestline}\n{self.headers}".encode()
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer


@pytest.fixture()
def echo_server():
    def start(status: int, content_type: str = "text/plain", body: bytes = b"") -> str:
        handler = type("Handler", (_Echo,), {"status": status, "content_type": content_type, "body": body})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/dicom-web"

    servers: list[ThreadingHTTPServer] = []
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [400, 401, 500])
@pytest.mark.parametrize("scheme", ["token", "basic", "argument"])
def test_a_server_that_echoes_the_headers_never_gets_them_into_messages(
    status, scheme, echo_server, ct_series, tmp_path, monkeypatch, caplog
):
    base = echo_server(status)
    token = None
    if scheme == "token":
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
    elif scheme == "basic":
        monkeypatch.setenv(USER_ENV, "alice")
        monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    else:
        token = TOKEN
    caplog.set_level(logging.DEBUG)
    messages = []
    for call in (lambda: fetch_series(f"{base}/studies/1.2/series/1.2.3", tmp_path / "in", token=token),
                 lambda: store_instances(base, sorted(ct_series[0].iterdir())[:1], token=token)):
        with pytest.raises(SatsegError) as err:
            call()
        messages.append(str(err.value))
    if status != 401:
        assert f"(HTTP {status}): *** POST /dicom-web/studies " in messages[1]  # the echo quoted, credentials masked
    for text in (*messages, caplog.text):
        assert "\n" not in text.strip() or text is caplog.text
        _assert_secret_free(text)


def test_instances_a_server_lists_as_failed_are_a_one_line_error(echo_server, ct_series):
    """STOW-RS answers HTTP 202 with a FailedSOPSequence when it stores some instances and not others."""
    paths = sorted(ct_series[0].iterdir())[:2]
    uids = [pydicom.dcmread(p).SOPInstanceUID for p in paths]
    answer = pydicom.Dataset()
    answer.FailedSOPSequence = [pydicom.Dataset()]
    answer.FailedSOPSequence[0].ReferencedSOPInstanceUID, answer.FailedSOPSequence[0].FailureReason = uids[1], 0xA700
    answer.ReferencedSOPSequence = [pydicom.Dataset()]
    answer.ReferencedSOPSequence[0].ReferencedSOPInstanceUID = uids[0]
    base = echo_server(202, "application/dicom+json", answer.to_json().encode())
    with pytest.raises(SatsegError, match=rf"^the DICOMweb server at 127\.0\.0\.1:\d+ refused 1 of 2 instance\(s\): "
                       rf"{uids[1]}: reason 0xA700$"):
        store_instances(base, paths)


def test_an_answer_that_is_not_dicom_is_a_clear_error(echo_server, tmp_path):
    base = echo_server(200, "text/html")
    with pytest.raises(InputError, match="did not answer series 1.2.3 with DICOM; is .* its DICOMweb root"):
        fetch_series(f"{base}/studies/1.2/series/1.2.3", tmp_path / "in")
    assert list(tmp_path.iterdir()) == []


# --- unreachable servers ------------------------------------------------------------------------------------


def test_an_unreachable_port_is_a_quick_one_line_input_error(ct_series, tmp_path):
    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(InputError) as err:
        fetch_series(f"http://127.0.0.1:{port}/dicom-web/studies/1.2/series/1.2.3", tmp_path / "in", timeout=2)
    assert time.monotonic() - start < 5
    assert str(err.value) == f"cannot reach the DICOMweb server at 127.0.0.1:{port} (connection refused)"
    with pytest.raises(InputError, match=f"^cannot reach the DICOMweb server at 127.0.0.1:{port} "):
        store_instances(f"http://127.0.0.1:{port}/dicom-web", sorted(ct_series[0].iterdir())[:1], timeout=2)
    assert list(tmp_path.iterdir()) == []


def test_a_server_that_never_answers_times_out(tmp_path):
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(InputError, match=f"the DICOMweb server at 127.0.0.1:{port} did not answer in time"):
            fetch_series(f"http://127.0.0.1:{port}/dicom-web/studies/1.2/series/1.2.3", tmp_path / "in", timeout=1)
        assert time.monotonic() - start < 5


def test_an_unknown_host_names_only_the_host(tmp_path):
    with pytest.raises(InputError, match=r"^cannot reach the DICOMweb server at pacs\.invalid:8042 \("):
        fetch_series("http://pacs.invalid:8042/dicom-web/studies/1.2/series/1.2.3", tmp_path / "in", timeout=2)


# --- URLs and settings --------------------------------------------------------------------------------------


def test_series_urls_are_parsed_into_base_study_and_series():
    url = "https://pacs.example.org:8443/dcm4chee-arc/aets/DCM4CHEE/rs/studies/1.2.840.1/series/1.2.840.1.2/"
    assert parse_series_url(url) == ("https://pacs.example.org:8443/dcm4chee-arc/aets/DCM4CHEE/rs", "1.2.840.1",
                                     "1.2.840.1.2")
    assert parse_series_url("http://h/studies/1/series/2") == ("http://h", "1", "2")
    assert parse_store_url("http://127.0.0.1:8042/dicom-web/") == ("http://127.0.0.1:8042/dicom-web", None)
    assert parse_store_url("http://127.0.0.1:8042/dicom-web/studies/1.2") == ("http://127.0.0.1:8042/dicom-web", "1.2")
    assert is_dicomweb_url("HTTPS://x/studies/1") and is_dicomweb_url("http://x")
    assert not is_dicomweb_url("scan.nii.gz") and not is_dicomweb_url("/data/http://x")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:8042/dicom-web/studies/1.2", "is a study URL; give the series to segment"),
        ("http://h:8042/dicom-web/studies/1.2/series/3.4/instances/5.6", "points inside the series"),
        ("http://h:8042/dicom-web", "is not a DICOMweb series URL"),
        ("http://h:8042/dicom-web/studies/1.2/series/abc", "'abc' is not a DICOM UID"),
        ("http://h:8042/dicom-web/studies/1.2/series/3.4?token=abc", "takes no query string"),
        ("ftp://h/dicom-web/studies/1.2/series/3.4", "is not an http:// or https:// URL"),
        ("http://h:99999/dicom-web/studies/1.2/series/3.4", "is not a valid URL"),
        ("http:///studies/1.2/series/3.4", "names no host"),
    ],
)
def test_bad_series_urls_are_refused_in_one_line(url, message):
    with pytest.raises(InputError, match=message) as err:
        parse_series_url(url)
    assert "\n" not in str(err.value)
    assert "token=abc" not in str(err.value)


def test_a_series_url_is_not_a_store_url():
    with pytest.raises(InputError, match="not to a series or an instance"):
        parse_store_url("http://h/dicom-web/studies/1.2/series/3.4")


@pytest.mark.parametrize("url", [f"http://alice:{PASSWORD}@127.0.0.1:8042/dicom-web/studies/1.2/series/3.4",
                                 f"https://{TOKEN}@pacs.example.org/dicom-web/studies/1.2/series/3.4"])
def test_credentials_in_a_url_are_refused_without_repeating_them(url, tmp_path):
    for call in (lambda: parse_series_url(url), lambda: fetch_series(url, tmp_path / "in"),
                 lambda: store_instances(url.split("/studies")[0], [tmp_path / "x.dcm"])):
        with pytest.raises(InputError, match="credentials in the URL for .* are not accepted") as err:
            call()
        _assert_secret_free(str(err.value))
        assert "alice" not in str(err.value)


def test_credential_settings_are_checked_without_showing_values():
    assert credentials_source({}) is None
    assert credentials_source({TOKEN_ENV: TOKEN}) == TOKEN_ENV
    assert credentials_source({USER_ENV: "alice", PASSWORD_ENV: PASSWORD}) == f"{USER_ENV}/{PASSWORD_ENV}"
    assert _credentials_from_env({TOKEN_ENV: f" {TOKEN}\n"}) == (f"Bearer {TOKEN}", TOKEN_ENV)
    assert _credentials_from_env({TOKEN_ENV: f"Bearer {TOKEN}"})[0] == f"Bearer {TOKEN}"
    assert _credentials_from_env({USER_ENV: "alice", PASSWORD_ENV: PASSWORD})[0] == f"Basic {BASIC}"
    for env, message in [
        ({TOKEN_ENV: TOKEN, USER_ENV: "alice", PASSWORD_ENV: PASSWORD}, "not both"),
        ({USER_ENV: "alice"}, f"{PASSWORD_ENV} is not set"),
        ({PASSWORD_ENV: PASSWORD}, f"{USER_ENV} is not set"),
        ({TOKEN_ENV: f"{TOKEN[:5]}\n{TOKEN[5:]}"}, "characters an HTTP header cannot carry"),
        ({TOKEN_ENV: f"{TOKEN}é"}, "characters an HTTP header cannot carry"),
    ]:
        with pytest.raises(InputError, match=message) as err:
            credentials_source(env)
        _assert_secret_free(str(err.value))


def test_a_missing_orthanc_skips_but_fails_under_ci(monkeypatch, tmp_path):
    monkeypatch.setenv("ORTHANC_BINARY", str(tmp_path / "no-orthanc"))
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="no-orthanc is not an executable"):
        require_orthanc()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but .*no-orthanc is not an executable"):
        require_orthanc()

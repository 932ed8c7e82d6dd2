"""DICOMweb in and out: fetch a series with WADO-RS, send written SEG / RTSTRUCT objects back with STOW-RS.

URLs (``http://`` or ``https://``; the DICOMweb *base* is what the server documents as its DICOMweb root, e.g.
Orthanc's ``http://host:8042/dicom-web``, dcm4chee's ``http://host:8080/dcm4chee-arc/aets/DCM4CHEE/rs``):

- input, a series URL: ``<base>/studies/<StudyInstanceUID>/series/<SeriesInstanceUID>``. A study URL, an instance
  URL, a query string or a fragment is refused (a study can hold several series; say which one).
- ``--store-to``: the base, or a study URL ``<base>/studies/<StudyInstanceUID>`` (the objects must belong to that
  study).

Credentials come from the environment only, never from the command line, and never appear in a message, an
exception or a log line (a server that echoes them back has them masked as ``***``):

- ``SATSEG_DICOMWEB_TOKEN``: an OAuth2 / OpenID Connect access token, sent as ``Authorization: Bearer <token>``
  (Google Cloud Healthcare, Azure DICOM service, dcm4chee or Orthanc behind Keycloak). A value that already starts
  with ``Bearer `` is accepted as it is.
- ``SATSEG_DICOMWEB_USER`` and ``SATSEG_DICOMWEB_PASSWORD``: HTTP Basic authentication (Orthanc's
  ``RegisteredUsers``, a reverse proxy with a password file). User and password are encoded as UTF-8 (RFC 7617).

Setting both schemes is refused as ambiguous. Credentials written into the URL (``http://user:pass@host``) are
refused without repeating them. Sending credentials over plain ``http://`` to a host other than this machine logs a
warning. TLS certificates are checked against the system / certifi store; a hospital CA bundle is given the usual
way (``REQUESTS_CA_BUNDLE=/path/ca.pem``), and proxies with ``HTTPS_PROXY`` / ``NO_PROXY``.

Errors are one line: an unreachable server (connection refused, unknown host, timeout) or a refused credential
(HTTP 401 / 403) or an empty series is an :class:`~satseg.errors.InputError`; a store the server refuses (wholly
or for some instances) is a :class:`~satseg.errors.SatsegError` with the HTTP status and the server's answer.

``dicomweb-client`` (and ``requests``) are imported when a function needs them, so importing this module is cheap.
The credentials (environment, Authorization header, masking) are read in :mod:`satseg.io.dicomweb_auth`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from satseg.errors import InputError, SatsegError
from satseg.io.dicomweb_auth import (  # noqa: F401 - the credential names are part of this module's API too
    PASSWORD_ENV,
    TOKEN_ENV,
    USER_ENV,
    _bearer,
    _credentials_from_env,
    _HeaderAuth,
    _mask,
    _secret_forms,
    credentials_source,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
ANSWER_CHARS = 300  # how much of a server's answer a message quotes

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_PATH = re.compile(r"^(?P<base>.*?)/studies/(?P<study>[^/]+)(?:/series/(?P<series>[^/]+))?(?P<rest>/.+)?$")
_SERIES_FORM = "http(s)://host/<DICOMweb root>/studies/<StudyInstanceUID>/series/<SeriesInstanceUID>"
_RETRIEVE_ANY_SYNTAX = (("application/dicom", "*"),)  # the instances as stored, no transcoding by the server


def is_dicomweb_url(text: str) -> bool:
    """Whether an input names a DICOMweb resource rather than a local path: any ``http://`` / ``https://`` text.

    Every such text goes to :func:`parse_series_url`, which accepts series URLs only and explains what is wrong with
    anything else (a study URL, credentials in the URL), instead of a "no such file" for a URL.
    """
    return str(text).strip().lower().startswith(("http://", "https://"))


def parse_series_url(url: str) -> tuple[str, str, str]:
    """``<base>/studies/<study>/series/<series>`` → ``(base, study_uid, series_uid)``; anything else: InputError."""
    base, study, series, rest = _split(url)
    if study is None:
        raise InputError(f"{_shown(url)} is not a DICOMweb series URL; expected {_SERIES_FORM}")
    if series is None or rest:
        what = "a study URL" if series is None else "not a series URL (it points inside the series)"
        raise InputError(f"{_shown(url)} is {what}; give the series to segment: {_SERIES_FORM}")
    return base, study, series


def parse_store_url(url: str) -> tuple[str, str | None]:
    """A ``--store-to`` URL → ``(base, study_uid or None)``: the DICOMweb base, or ``<base>/studies/<uid>``."""
    base, study, series, rest = _split(url)
    if series is not None or rest:
        raise InputError(
            f"{_shown(url)}: store to the DICOMweb base (e.g. http://host:8042/dicom-web) or to a study URL "
            "(<base>/studies/<StudyInstanceUID>), not to a series or an instance"
        )
    return base, study


def fetch_series(url: str, dest: str | os.PathLike, *, token: str | None = None, timeout: float = 60.0) -> Path:
    """Retrieve every instance of the series at ``url`` (WADO-RS, as stored) into ``dest`` as DICOM Part-10 files.

    Files are named by SOPInstanceUID (``<uid>.dcm``). They are written into a hidden folder beside ``dest`` that is
    renamed to ``dest`` only when the whole series has arrived, so a failure leaves no ``dest`` (or the empty one it
    was). ``token`` (a bearer token) overrides the environment's credentials; ``timeout`` bounds each wait for the
    server in seconds (connecting: at most :data:`CONNECT_TIMEOUT_S`).

    Returns:
        ``dest``, a folder of ``n ≥ 1`` files ready for :func:`satseg.io.read_volume`.

    Raises:
        InputError: bad URL or credentials setting, ``dest`` not empty, server unreachable, credentials refused,
            no such series, or an answer that is not DICOM.
        SatsegError: another refusal by the server (HTTP status and its answer).
    """
    base, study, series = parse_series_url(url)
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise InputError(f"{dest}: the folder to fetch the series into exists and is not empty")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        with _client(base, token, timeout) as (client, secrets), _server_errors(base, f"series {series}", secrets):
            retrieved = client.iter_series(study, series, media_types=_RETRIEVE_ANY_SYNTAX)
            count = _write_instances(retrieved, partial, series, base)
        if count == 0:
            raise InputError(f"no instances in series {series} at {_shown(base)}")
        if dest.exists():
            dest.rmdir()
        os.replace(partial, dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log.info("fetched %d instance(s) of series %s from %s", count, series, _shown(base))
    return dest


def store_instances(url: str, paths: Iterable[str | os.PathLike], *, token: str | None = None,
                    timeout: float = 120.0) -> dict:
    """Send DICOM files (written SEG / RTSTRUCT objects) to a DICOMweb server with STOW-RS.

    ``url`` is the DICOMweb base or a study URL (see :func:`parse_store_url`); ``token`` as in :func:`fetch_series`.

    Returns:
        What the server answered: ``{"url": base, "study": uid or None, "stored": [{"sop_instance_uid",
        "sop_class_uid", "retrieve_url"}], "retrieve_url": str or None}`` (a server that answers without a body
        gives an empty ``stored``).

    Raises:
        InputError: bad URL or credentials setting, a file that is not DICOM or not of the URL's study, server
            unreachable, credentials refused.
        SatsegError: the server refused the store or some of the instances (HTTP status, failed SOP Instance UIDs
            and reasons, the answer's text), in one line.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    base, study = parse_store_url(url)
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("nothing to store: no DICOM files were given")
    datasets = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path)
        except (OSError, InvalidDicomError) as exc:
            raise InputError(f"{path}: cannot be stored, not a readable DICOM file ({type(exc).__name__})") from None
        if study is not None and ds.get("StudyInstanceUID") != study:
            raise InputError(f"{path.name}: belongs to study {ds.get('StudyInstanceUID')}, not to {study} of the URL")
        datasets.append(ds)
    what = f"the store of {len(datasets)} instance(s)"
    with _client(base, token, timeout) as (client, secrets), _server_errors(base, what, secrets, store=True):
        answer = client.store_instances(datasets, study_instance_uid=study)
    failed = [(str(item.get("ReferencedSOPInstanceUID", "?")), item.get("FailureReason"))
              for item in answer.get("FailedSOPSequence", [])]
    if failed:
        listed = "; ".join(f"{uid}: reason {_reason(code)}" for uid, code in failed)
        raise SatsegError(f"the DICOMweb server at {_host(base)} refused {len(failed)} of {len(datasets)} "
                          f"instance(s): {_clip(listed, secrets)}")
    stored = [{"sop_instance_uid": str(item.get("ReferencedSOPInstanceUID", "")),
               "sop_class_uid": str(item.get("ReferencedSOPClassUID", "")),
               "retrieve_url": item.get("RetrieveURL")}
              for item in answer.get("ReferencedSOPSequence", [])]
    if "ReferencedSOPSequence" in answer or "FailedSOPSequence" in answer:
        confirmed = {item["sop_instance_uid"] for item in stored}
        missing = [str(ds.get("SOPInstanceUID") or "without SOPInstanceUID") for ds in datasets
                   if str(ds.get("SOPInstanceUID", "")) not in confirmed]
        if missing:  # Orthanc answers 200 with empty sequences for an instance it could not index
            raise SatsegError(f"the DICOMweb server at {_host(base)} did not store {len(missing)} of {len(datasets)} "
                              f"instance(s) ({', '.join(missing)}); its answer: "
                              f"{_clip(answer.to_json(), secrets)}")
    else:
        log.warning("the DICOMweb server at %s stored without listing the instances; not checked", _host(base))
    log.info("stored %d instance(s) at %s", len(datasets), _shown(base))
    return {"url": base, "study": study, "stored": stored, "retrieve_url": answer.get("RetrieveURL")}


# --- helpers ------------------------------------------------------------------------------------------------


def _split(url: str) -> tuple[str, str | None, str | None, str | None]:
    text = str(url).strip()
    if not is_dicomweb_url(text):
        raise InputError(f"{_shown(text)} is not an http:// or https:// URL")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise InputError(f"{_shown(text)} is not a valid URL (host or port)") from None
    if "@" in parts.netloc:
        raise InputError(
            f"credentials in the URL for {_host_of(parts.hostname, port)} are not accepted (they would show in "
            f"process lists and logs); set {TOKEN_ENV}, or {USER_ENV} and {PASSWORD_ENV}, instead"
        )
    if not parts.hostname:
        raise InputError(f"{_shown(text)} names no host")
    if parts.query or parts.fragment:
        raise InputError(f"{_shown(text)}: a DICOMweb URL takes no query string or fragment ('?' or '#')")
    path = parts.path.rstrip("/")
    origin = f"{parts.scheme.lower()}://{parts.netloc}"
    match = _PATH.match(path)
    if match is None:
        return origin + path, None, None, None
    study, series = unquote(match["study"]), match["series"] and unquote(match["series"])
    for uid in (study, series):
        if uid is not None and (len(uid) > 64 or not _UID.match(uid)):
            raise InputError(f"{_shown(text)}: {uid[:70]!r} is not a DICOM UID (digits and dots, at most 64)")
    return origin + match["base"], study, series, match["rest"]


def _shown(url: str) -> str:
    """The URL as messages may show it: scheme, host, port and path, never userinfo, query or fragment."""
    try:
        parts = urlsplit(str(url).strip())
        host = _host_of(parts.hostname, parts.port)
    except ValueError:
        return "the URL"
    if not parts.scheme or not parts.hostname:
        return repr(_clip(str(url).split("@")[-1].split("?")[0], ()))
    return f"{parts.scheme}://{host}{parts.path}"


def _host_of(hostname: str | None, port: int | None) -> str:
    host = f"[{hostname}]" if hostname and ":" in hostname else (hostname or "?")
    return f"{host}:{port}" if port else host


def _host(base: str) -> str:
    parts = urlsplit(base)
    return _host_of(parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme))


@contextlib.contextmanager
def _client(base: str, token: str | None, timeout: float) -> Iterator[tuple]:
    """A DICOMwebClient for ``base`` with the credentials in its session, and the secrets to mask; the session's
    connections are closed on exit."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    credentials = (_bearer(token.strip(), "the token"), "token") if token else _credentials_from_env()
    with requests.Session() as session:
        secrets: tuple[str, ...] = ()
        if credentials is not None:
            session.auth = _HeaderAuth(credentials[0])
            secrets = _secret_forms(credentials[0], token)
            host = urlsplit(base).hostname or ""
            if base.startswith("http://") and host not in ("localhost", "127.0.0.1", "::1"):
                log.warning("credentials from %s are sent unencrypted (http://) to %s", credentials[1], _host(base))
        try:
            client = DICOMwebClient(base, session=session, timeout=(min(CONNECT_TIMEOUT_S, timeout), timeout))
        except ValueError:
            raise InputError(f"{_shown(base)}: dicomweb-client cannot use this URL (host or port)") from None
        client.host = urlsplit(base).netloc  # the Host header with its port (dicomweb-client drops it; RFC 9110)
        # One retry after 1 s (connection errors, timeouts, HTTP 408/429/503/504); retrying's own warnings are
        # multi-line tracebacks, so they are dropped: the one-line error below says what failed.
        client.set_http_retry_params(max_attempts=2, wait_exponential_multiplier=500)
        _quiet_retrying()
        yield client, secrets


def _quiet_retrying() -> None:
    logger = logging.getLogger("retrying")
    if not any(isinstance(f, _BelowWarning) for f in logger.filters):
        logger.addFilter(_BelowWarning())


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def _write_instances(datasets: Iterator, folder: Path, series: str, base: str) -> int:
    count = 0
    for ds in datasets:
        if ds.get("SeriesInstanceUID") != series:
            raise SatsegError(f"the DICOMweb server at {_host(base)} sent an instance of series "
                              f"{ds.get('SeriesInstanceUID')} when asked for series {series}")
        uid = re.sub(r"[^0-9A-Za-z.]", "_", str(ds.get("SOPInstanceUID", ""))).strip(".")[:120]
        path = folder / f"{uid or f'instance-{count:05d}'}.dcm"
        if path.exists():
            path = folder / f"{path.stem}-{count:05d}.dcm"
        try:
            ds.save_as(path, enforce_file_format=True)
        except OSError as exc:
            raise SatsegError(f"{folder}: cannot write the fetched instances ({exc.strerror or exc})") from None
        count += 1
    return count


@contextlib.contextmanager
def _server_errors(base: str, what: str, secrets: tuple[str, ...], *, store: bool = False) -> Iterator[None]:
    """Turn what requests / dicomweb-client / pydicom raise into one-line InputError / SatsegError."""
    import requests
    from pydicom.errors import InvalidDicomError
    from retrying import RetryError

    host = _host(base)
    try:
        yield
    except requests.exceptions.HTTPError as exc:
        raise _http_error(exc.response, base, what, secrets, store) from None
    except RetryError as exc:  # still HTTP 408/429/503/504 after the retry
        raise _http_error(exc.last_attempt.value, base, what, secrets, store) from None
    except requests.exceptions.SSLError:
        raise InputError(f"the TLS certificate of {host} could not be verified (a hospital CA bundle is "
                         "given with REQUESTS_CA_BUNDLE=/path/ca.pem)") from None
    except requests.exceptions.Timeout:
        raise InputError(f"the DICOMweb server at {host} did not answer in time") from None
    except requests.exceptions.ConnectionError as exc:
        raise InputError(f"cannot reach the DICOMweb server at {host} ({_connection_reason(exc)})") from None
    except requests.exceptions.RequestException as exc:
        raise SatsegError(f"the request to the DICOMweb server at {host} failed ({type(exc).__name__})") from None
    except (ValueError, KeyError, InvalidDicomError) as exc:
        raise InputError(f"the server at {host} did not answer {what} with DICOM; is {_shown(base)} its DICOMweb "
                         f"root? ({_clip(str(exc), secrets)})") from None


def _http_error(response, base: str, what: str, secrets: tuple[str, ...], store: bool) -> SatsegError:
    status = response.status_code
    if status in (401, 403):
        given = "" if secrets else f"; none were given (set {TOKEN_ENV}, or {USER_ENV} and {PASSWORD_ENV})"
        return InputError(f"the DICOMweb server refused the credentials (HTTP {status}) at {_host(base)}{given}")
    answer = _clip(response.text, secrets) if response.content else "(no answer text)"
    if status == 404 and not store:
        return InputError(f"no instances in {what} at {_shown(base)} (HTTP 404: {answer})")
    verb = "refused" if 400 <= status < 500 else "failed on"
    return SatsegError(f"the DICOMweb server at {_host(base)} {verb} {what} (HTTP {status}): {answer}")


def _connection_reason(exc: Exception) -> str:
    text = str(exc)
    if "NameResolution" in text or "Name or service not known" in text or "nodename nor servname" in text:
        return "unknown host name"
    if "refused" in text.lower():
        return "connection refused"
    return "no connection"


def _reason(code) -> str:
    try:
        return f"0x{int(code):04X}"
    except (TypeError, ValueError):
        return str(code)


def _clip(text: str, secrets: Iterable[str]) -> str:
    """One line of at most :data:`ANSWER_CHARS` characters with every secret masked."""
    line = _mask(" ".join(str(text).split()), secrets)
    return line if len(line) <= ANSWER_CHARS else line[: ANSWER_CHARS - 3] + "..."

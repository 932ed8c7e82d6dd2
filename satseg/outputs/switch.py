"""How a result folder switches from an earlier result to a new one, so that every later run sees one or the other.

1. **Stage.** Every file is written (and fsynced) into a staging folder inside the output folder, created in one
   ``mkdir`` under a name that carries its owner: ``.satseg-staging-<pid>-<start>-<random>-<host>``. No two runs
   ever share one, and a run removes another's staging folder only when that owner is gone (same host: the pid is
   not running, or runs a process started at another time; other hosts: untouched for a day).
2. **Journal.** Under an exclusive lock on the folder, ``.satseg-commit.json`` is written atomically: the staging
   folder, each file it installs with its size and sha256, the earlier outputs it retires and the completion record
   to write. From this point the switch is decided.
3. **Switch.** The earlier completion marker is removed, the earlier outputs that the new result does not rewrite
   are removed when they came from another scan or model, the staged files are renamed into place, the new marker
   (``.satseg-complete.json``) is written and the journal removed.

A run killed before the journal leaves the earlier result untouched (and a staging folder that the next run
removes). A run killed after it leaves a journal: every later satseg run into the folder first finishes the switch
from the staged files (:func:`recover`), and :func:`is_complete` never trusts a folder with a journal in it. A
folder counts as finished only when its marker records the same request (prompts, model, outputs, input file) and
every file it lists is there with its recorded size and sha256.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from stat import S_ISREG

from satseg.io.atomic import write_text_atomic

log = logging.getLogger(__name__)

COMPLETE_MARKER = ".satseg-complete.json"
JOURNAL = ".satseg-commit.json"
STAGING_PREFIX = ".satseg-staging-"
REPORT_STAGED = ".report.json"
"""Where a report bound for a path outside the folder waits in the staging folder."""
MARKER_FORMAT = 2
FOREIGN_STAGING_STALE_S = 24 * 3600
"""A staging folder of another host counts as abandoned when nothing in it changed for this long."""


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``folder`` (flock on the folder itself; no lock file is left behind).

    Where the filesystem has no such locks (some network filesystems) the switch runs unlocked: it is still
    journalled, so a kill is recovered; only two hosts switching the same folder at the same moment are not
    serialised."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks; switches are still journalled
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            log.debug("no lock on %s (%s): switching without one", folder, exc.strerror or exc)
        yield
    finally:
        os.close(fd)  # releases the lock


# -- staging folders and their owners ------------------------------------------------------------------


def _process_start(pid: int) -> int:
    """The start time of process ``pid`` in clock ticks since boot (0 where /proc is not available)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fobj:
            fields = fobj.read().rsplit(b")", 1)[1].split()
        return int(fields[19])  # field 22 of proc(5); fields[0] is field 3
    except (OSError, IndexError, ValueError):
        return 0


def _host() -> str:
    """This host's name, with the pid namespace where there is one (containers sharing a host name have their own
    pids: a pid is only meaningful within its namespace)."""
    name = "".join(c if c.isalnum() or c in "._" else "_" for c in socket.gethostname())[:64] or "host"
    try:
        return f"{name}.ns{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return name


def _new_staging(out_dir: Path) -> Path:
    """Claim a staging folder in one atomic mkdir, its owner (pid, start time, host) in its name."""
    pid = os.getpid()
    while True:
        staging = out_dir / f"{STAGING_PREFIX}{pid}-{_process_start(pid)}-{secrets.token_hex(4)}-{_host()}"
        try:
            staging.mkdir()
            return staging
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue


def _owner_gone(entry: Path) -> bool:
    """Whether the run that made staging folder ``entry`` can no longer be writing to it."""
    try:
        pid_text, start_text, _token, host = entry.name[len(STAGING_PREFIX):].split("-", 3)
        pid, start = int(pid_text), int(start_text)
    except ValueError:
        return _untouched_for(entry, FOREIGN_STAGING_STALE_S)  # not a name this version makes
    if host != _host():
        return _untouched_for(entry, FOREIGN_STAGING_STALE_S)
    if pid == os.getpid():
        return start != _process_start(pid)  # this process's own folders are its own business
    if not _pid_running(pid):
        return True
    return bool(start) and _process_start(pid) not in (0, start)  # the pid was reused by a newer process


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _untouched_for(entry: Path, seconds: float) -> bool:
    try:
        newest = max([entry.stat().st_mtime] + [p.stat().st_mtime for p in entry.rglob("*")])
    except OSError:
        return False
    return time.time() - newest > seconds


def clean_stale_staging(out_dir: Path) -> None:
    """Remove staging folders whose owners are gone (never one that a journal still needs: call
    :func:`recover` first)."""
    if not Path(out_dir).is_dir():
        return
    for entry in Path(out_dir).iterdir():
        if entry.name.startswith(STAGING_PREFIX) and entry.is_dir() and _owner_gone(entry):
            shutil.rmtree(entry, ignore_errors=True)


def _file_record(path: Path) -> dict:
    """Size and sha256 of a file (what a finished folder promises about it)."""
    from satseg.weights.verification import sha256_file

    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def _with_identity(path: Path, record: dict) -> dict:
    """``record`` plus the installed file's inode, mtime and ctime: while all are unchanged the file is the one
    that was hashed (no process can set a ctime), so a skip check need not read it again."""
    stat = os.lstat(path)
    return dict(record, ino=stat.st_ino, mtime_ns=stat.st_mtime_ns, ctime_ns=stat.st_ctime_ns)


def _matches(path: Path, record: dict) -> bool:
    """``path`` is a regular file with the recorded content (the identity shortcut, else its sha256)."""
    try:
        stat = os.lstat(path)
        if not S_ISREG(stat.st_mode) or stat.st_size != record["size"]:
            return False
        if (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns) == (record.get("ino"), record.get("mtime_ns"),
                                                                 record.get("ctime_ns")):
            return True
        return _file_record(path) == {"size": record["size"], "sha256": record["sha256"]}
    except (OSError, KeyError, TypeError):
        return False


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError):
        return {}


def finished_record(out_dir: Path) -> dict | None:
    """The completion record of a finished folder, else None: no interrupted switch, a record of this format,
    and every file it lists present with its recorded size and sha256."""
    out_dir = Path(out_dir)
    if (out_dir / JOURNAL).exists():
        return None  # a switch was interrupted: recover() finishes it
    marker = _read_json(out_dir / COMPLETE_MARKER)
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return None
    outputs = marker.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return None
    if not all(isinstance(rec, dict) and _within(out_dir, rel) and _matches(out_dir / rel, rec)
               for rel, rec in outputs.items()):
        return None
    return marker


def is_complete(out_dir: Path, request: dict | None = None) -> bool:
    """True when ``out_dir`` holds a finished result (:func:`finished_record`), made for ``request`` when given."""
    marker = finished_record(out_dir)
    return marker is not None and (request is None or marker.get("request") == request)


def _within(out_dir: Path, rel) -> bool:
    """``rel`` names a place inside ``out_dir`` reached without following a link (a journal or marker found in
    the folder is data anyone with write access could have written: it must not reach anywhere else)."""
    if not isinstance(rel, str) or not rel or "\0" in rel:
        return False
    path = Path(rel)
    if path.is_absolute() or any(part in ("..", ".", "") for part in rel.split("/")):
        return False
    folder = out_dir
    for part in path.parts[:-1]:
        folder = folder / part
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            return False
    return True


# -- the switch -------------------------------------------------------------------------------------------


def _valid_journal(journal) -> bool:
    if not isinstance(journal, dict):
        return False
    staging, files, retire = journal.get("staging"), journal.get("files"), journal.get("retire", [])
    report, marker = journal.get("report"), journal.get("marker")
    return (isinstance(staging, str) and staging.startswith(STAGING_PREFIX) and "/" not in staging
            and "\\" not in staging and isinstance(files, dict) and isinstance(retire, list)
            and all(isinstance(r, dict) and isinstance(r.get("size"), int) and isinstance(r.get("sha256"), str)
                    for r in files.values())
            and (report is None or (isinstance(report, dict) and report.get("staged") == REPORT_STAGED
                                    and isinstance(report.get("target"), str)))
            and isinstance(marker, dict))


def recover(out_dir: Path) -> bool:
    """Finish a switch that a killed run left half done (see the module doc); True if there was one.

    Call with the folder's lock held, or through :func:`write_segmentation` / :func:`recover_folder`.
    """
    out_dir = Path(out_dir)
    journal = _read_json(out_dir / JOURNAL)
    if journal is None:
        return False
    if not _valid_journal(journal):
        log.warning("%s: unreadable switch record; the folder's result is not trusted and will be redone", out_dir)
        with contextlib.suppress(FileNotFoundError):
            (out_dir / COMPLETE_MARKER).unlink()
        (out_dir / JOURNAL).unlink()
        return True
    _apply(out_dir, out_dir / journal["staging"], journal, owner=False)
    return True


def recover_folder(out_dir: Path) -> bool:
    """:func:`recover` under the folder's lock (for callers that only read the folder, such as ``batch``'s skip
    check); nothing happens to a folder without a journal."""
    out_dir = Path(out_dir)
    if not (out_dir / JOURNAL).exists():
        return False
    with _folder_lock(out_dir):
        return recover(out_dir)


def _apply(out_dir: Path, staging: Path, journal: dict, *, owner: bool) -> None:
    """Carry out a journal: retire, install, mark complete (each step can be repeated after a kill).

    A report bound for a path outside the folder is delivered by the run that made it (``owner``), never by a
    recovering run: a journal is data that must not move files anywhere else."""
    with contextlib.suppress(FileNotFoundError):
        (out_dir / COMPLETE_MARKER).unlink()
    for rel in journal.get("retire", []):
        if _within(out_dir, rel):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                (out_dir / rel).unlink()
    installed = True
    for rel, record in journal["files"].items():
        if not _within(out_dir, rel):
            installed = False
            continue
        source, target = staging / rel, out_dir / rel
        if source.is_file() and not source.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        elif not _matches(target, record):  # neither staged nor in place: this switch cannot be finished
            installed = False
    report = journal.get("report")
    if report and owner:
        target = Path(report["target"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging / REPORT_STAGED), str(target))
    elif report:
        log.info("%s: the interrupted run's report for %s is not delivered", out_dir, report["target"])
    if installed:
        marker = dict(journal["marker"])
        marker["outputs"] = {rel: _with_identity(out_dir / rel, rec) for rel, rec in journal["files"].items()}
        write_text_atomic(out_dir / COMPLETE_MARKER, json.dumps(marker, indent=1))
    else:
        log.warning("%s: an interrupted write could not be finished; the case is not marked done", out_dir)
    (out_dir / JOURNAL).unlink()
    shutil.rmtree(staging, ignore_errors=True)


def _same_source(old: dict, new: dict) -> bool:
    """Two requests read the same scan the same way with the same model (they may differ in prompts and outputs)."""
    return all(old.get(key) == new.get(key) for key in ("input", "model", "modality", "orientation"))


def _previous_outputs(out_dir: Path, request: dict, new_outputs: dict) -> tuple[list[str], dict]:
    """(earlier outputs to remove, earlier outputs kept beside the new result).

    Outputs of a result made from another scan, model or reading of the scan are removed unless the new result
    rewrites them; those of the same scan and model (other prompts) stay, and the new marker remembers them so
    that a later switch to another scan removes them too."""
    marker = _read_json(out_dir / COMPLETE_MARKER)
    if not isinstance(marker, dict):
        return [], {}
    earlier = {}
    for key in ("kept", "outputs"):
        listed = marker.get(key)
        if isinstance(listed, dict):
            earlier.update(listed)
        elif isinstance(listed, list):  # markers of earlier satseg versions
            earlier.update({rel: {} for rel in listed if isinstance(rel, str)})
    earlier = {rel: rec for rel, rec in earlier.items() if rel not in new_outputs and _within(out_dir, rel)}
    old_request = marker.get("request")
    if marker.get("format") == MARKER_FORMAT and isinstance(old_request, dict) and _same_source(old_request, request):
        return [], earlier
    return list(earlier), {}


def install(out_dir: Path, staging: Path, files: dict, request: dict, *, report: dict | None = None,
            structures: dict | None = None) -> None:
    """Switch ``out_dir`` to the result staged in ``staging`` (``files``: relative path → size and sha256), under
    the folder's lock: journal, retire, install, mark complete. ``report``: a report bound for a path outside the
    folder; ``structures``: per-structure numbers kept in the completion record."""
    with _folder_lock(out_dir):
        recover(out_dir)  # another run may have been killed mid-switch meanwhile
        retire, kept = _previous_outputs(out_dir, request, files)
        marker = {"format": MARKER_FORMAT, "request": request, "outputs": files, "kept": kept,
                  "written_at": time.time()}
        if structures is not None:
            marker["structures"] = structures
        journal = {"staging": staging.name, "files": files, "retire": retire, "report": report, "marker": marker}
        write_text_atomic(out_dir / JOURNAL, json.dumps(journal, indent=1))
        _apply(out_dir, staging, journal, owner=True)


def prepare_folder(out_dir: Path) -> Path:
    """Before staging into ``out_dir``: finish an interrupted switch, remove abandoned staging folders, and claim a
    staging folder of this process."""
    with _folder_lock(out_dir):
        recover(out_dir)
        clean_stale_staging(out_dir)
    return _new_staging(out_dir)


def release_staging(out_dir: Path, staging: Path) -> None:
    """Remove ``staging`` unless an interrupted switch's journal still needs it (the next run finishes it)."""
    journal = _read_json(out_dir / JOURNAL)
    if not (isinstance(journal, dict) and journal.get("staging") == staging.name):
        shutil.rmtree(staging, ignore_errors=True)

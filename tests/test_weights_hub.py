"""The hub path end to end: the real huggingface_hub client against a loopback hub (tests/hub_server.py).

Each test gets its own HF cache and SATSEG_HOME; HF_ENDPOINT points at the loopback server, and a
``SATSEG_MANIFEST`` names a tiny model (official-format tiny checkpoints written by the test) with its
sizes and sha256 computed here from the served bytes.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from hub_server import COMMIT, HubServer

from satseg import weights
from satseg.errors import WeightsError

from pipeline_helpers import make_tiny_official

REPO = "satseg-test/tiny"
TOKENIZER_REPO = "satseg-test/tokenizer"
TOKENIZER_FILES = ("tokenizer_config.json", "vocab.txt", "tokenizer.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict[str, bytes]:
    """Bytes of a tiny SAT model in the official layout: segmentation and paired text checkpoint."""
    seg, text = make_tiny_official(tmp_path_factory.mktemp("tiny"))
    return {"tiny/tiny.pth": seg.read_bytes(), "tiny/tiny_text.pth": text.read_bytes()}


@pytest.fixture()
def hub(isolated_home, monkeypatch, tiny_files, mpnet_dir):
    with HubServer() as server:
        for path, data in tiny_files.items():
            server.add_file(REPO, path, data)
        for name in TOKENIZER_FILES:
            server.add_file(TOKENIZER_REPO, name, (mpnet_dir / name).read_bytes())
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def write_manifest(folder: Path, files: dict[str, bytes], *, sha256: dict[str, str] | None = None,
                   record_hash: bool = True) -> Path:
    """A SATSEG_MANIFEST naming ``test-tiny`` on the loopback hub; hashes from ``files`` unless overridden."""
    roles = dict(zip(weights.FILE_ROLES, files))
    spec = {
        "variant": "tiny", "format": "sat-official", "hub": {"repo": REPO, "revision": "main"},
        "files": {role: {"path": path, "size": len(files[path]),
                         "sha256": ((sha256 or {}).get(path) or hashlib.sha256(files[path]).hexdigest())
                         if record_hash else None}
                  for role, path in roles.items()},
        "tokenizer": {"hub": {"repo": TOKENIZER_REPO, "revision": "main"},
                      "files": ["tokenizer_config.json", "vocab.txt"], "optional_files": ["tokenizer.json"]},
    }
    path = folder / "extra_manifest.json"
    path.write_text(json.dumps({"schema_version": 1, "models": {"test-tiny": spec}}))
    return path


@pytest.fixture()
def manifest(isolated_home, monkeypatch, tiny_files):
    path = write_manifest(isolated_home, tiny_files)
    monkeypatch.setenv("SATSEG_MANIFEST", str(path))
    return path


def test_download_puts_verified_files_in_the_hf_cache(hub, manifest, isolated_home, tiny_files):
    files = weights.resolve_model("test-tiny")

    assert files.verified is True
    assert files.commit == COMMIT
    assert files.variant == "tiny" and files.format == "sat-official"
    hf_cache = isolated_home / "hf" / "hub"
    assert files.checkpoint.is_relative_to(hf_cache) and files.text_checkpoint.is_relative_to(hf_cache)
    assert files.checkpoint.read_bytes() == tiny_files["tiny/tiny.pth"]
    assert files.text_checkpoint.read_bytes() == tiny_files["tiny/tiny_text.pth"]
    assert (files.tokenizer / "vocab.txt").is_file() and (files.tokenizer / "tokenizer.json").is_file()
    assert all(r.path.startswith(f"/{REPO}/resolve/") or r.path.startswith(f"/{TOKENIZER_REPO}/resolve/")
               for r in hub.requests)


def test_downloaded_files_load_strictly_as_the_tiny_architecture(hub, manifest):
    from satseg.model.checkpoint import validate_official_files

    files = weights.resolve_model("test-tiny")
    validate_official_files(files.variant, files.checkpoint, files.text_checkpoint)


def test_second_resolve_is_a_cache_hit_without_downloading_again(hub, manifest):
    first = weights.resolve_model("test-tiny")
    second = weights.resolve_model("test-tiny")

    assert second == first
    assert len(hub.body_requests("tiny/tiny.pth")) == 1
    assert len(hub.body_requests("tiny/tiny_text.pth")) == 1


def test_verified_hash_is_remembered_so_the_file_is_not_hashed_again(hub, manifest, weights_log):
    weights.resolve_model("test-tiny")
    hashed_first = [m for m in weights_log if "computing sha256" in m]
    weights_log.clear()
    weights.resolve_model("test-tiny")

    assert len(hashed_first) == 2
    assert not [m for m in weights_log if "computing sha256" in m]


def test_sha256_mismatch_is_refused_and_the_file_removed_from_the_cache(hub, isolated_home, monkeypatch, tiny_files):
    wrong = {"tiny/tiny.pth": hashlib.sha256(b"something else").hexdigest()}
    monkeypatch.setenv("SATSEG_MANIFEST", str(write_manifest(isolated_home, tiny_files, sha256=wrong)))

    with pytest.raises(WeightsError, match="does not match the manifest.*sha256.*deleted it") as info:
        weights.resolve_model("test-tiny")
    assert "\n" not in str(info.value)
    # Not used afterwards: the bad file is gone from the cache, so an offline resolve cannot pick it up.
    assert not list((isolated_home / "hf" / "hub").rglob("tiny.pth"))
    with pytest.raises(WeightsError, match="not in the Hugging Face cache"):
        weights.resolve_model("test-tiny", download=False)


def test_size_mismatch_is_refused(hub, isolated_home, monkeypatch, tiny_files):
    path = write_manifest(isolated_home, tiny_files)
    document = json.loads(path.read_text())
    document["models"]["test-tiny"]["files"]["text_checkpoint"]["size"] += 1
    path.write_text(json.dumps(document))
    monkeypatch.setenv("SATSEG_MANIFEST", str(path))

    with pytest.raises(WeightsError, match=r"text checkpoint .* does not match the manifest \(size"):
        weights.resolve_model("test-tiny")


def test_interrupted_download_is_resumed_with_a_range_request(hub, isolated_home, monkeypatch, tiny_files):
    # huggingface_hub writes what it received in 10 MiB pieces and resumes from the last whole piece, so
    # the interrupted file must be larger than that: a 24 MiB checkpoint stands in for a released one.
    large = random.Random(0).randbytes(24 * 2**20)
    files = {"large/model.pth": large, "tiny/tiny_text.pth": tiny_files["tiny/tiny_text.pth"]}
    hub.add_file(REPO, "large/model.pth", large)
    monkeypatch.setenv("SATSEG_MANIFEST", str(write_manifest(isolated_home, files)))
    cut = 15 * 2**20
    hub.drop_once(REPO, "large/model.pth", after_bytes=cut)

    resolved = weights.resolve_model("test-tiny")

    assert resolved.verified is True
    assert resolved.checkpoint.read_bytes() == large
    gets = hub.body_requests("large/model.pth")
    assert len(gets) == 2
    assert "range" not in gets[0].headers
    resumed_from = int(gets[1].headers["range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_from <= cut


def test_offline_mode_uses_the_cache_without_any_request(hub, manifest, monkeypatch):
    online = weights.resolve_model("test-tiny")
    seen = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    offline = weights.resolve_model("test-tiny")

    assert offline == online
    assert len(hub.requests) == seen


def test_offline_mode_without_cached_files_says_how_to_get_them(hub, manifest, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(WeightsError) as info:
        weights.resolve_model("test-tiny")
    message = str(info.value)
    assert "HF_HUB_OFFLINE" in message
    assert "satseg weights download test-tiny" in message and "satseg weights import" in message
    assert hub.requests == []


def test_published_model_without_recorded_hash_is_used_with_an_unverified_warning(hub, tiny_files, mpnet_dir,
                                                                                   weights_log):
    hub.add_file("zzh99/SAT", "Nano/nano.pth", tiny_files["tiny/tiny.pth"])
    hub.add_file("zzh99/SAT", "Nano/nano_text_encoder.pth", tiny_files["tiny/tiny_text.pth"])
    for name in ("tokenizer_config.json", "vocab.txt", "tokenizer.json", "special_tokens_map.json"):
        hub.add_file("FremyCompany/BioLORD-2023-C", name, (mpnet_dir / name).read_bytes())

    files = weights.resolve_model("sat-nano")

    assert files.verified is None
    assert files.checkpoint.name == "nano.pth" and files.text_checkpoint.name == "nano_text_encoder.pth"
    warnings = [m for m in weights_log if "unverified: no recorded hash" in m]
    assert len(warnings) == 2


def test_verify_reports_missing_before_download_and_ok_after(hub, manifest):
    before = weights.verify("test-tiny")
    weights.resolve_model("test-tiny")
    after = weights.verify("test-tiny")

    assert [c.status for c in before] == ["missing", "missing"]
    assert [c.status for c in after] == ["ok", "ok"]
    assert all(c.sha256 == c.expected_sha256 for c in after)


def test_verify_reports_a_cached_file_changed_on_disk_as_mismatch(hub, manifest):
    files = weights.resolve_model("test-tiny")
    blob = files.text_checkpoint.resolve()
    data = bytearray(blob.read_bytes())
    data[-100] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))

    statuses = {c.role: c.status for c in weights.verify("test-tiny")}

    assert statuses == {"checkpoint": "ok", "text_checkpoint": "mismatch"}


def test_unknown_repository_is_reported_in_one_line(hub, isolated_home, monkeypatch, tiny_files):
    path = write_manifest(isolated_home, tiny_files)
    document = json.loads(path.read_text())
    document["models"]["test-tiny"]["hub"]["repo"] = "nobody/nothing"
    path.write_text(json.dumps(document))
    monkeypatch.setenv("SATSEG_MANIFEST", str(path))

    with pytest.raises(WeightsError, match="hub repository nobody/nothing not found"):
        weights.resolve_model("test-tiny")


def test_cli_download_then_path_prints_the_cached_files(hub, manifest, capsys):
    from satseg.cli.main import main

    assert main(["weights", "download", "test-tiny", "--json"]) == 0
    downloaded = json.loads(capsys.readouterr().out)
    assert main(["weights", "path", "test-tiny"]) == 0
    lines = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())

    assert downloaded["verified"] is True
    assert lines == {role: downloaded[role] for role in ("checkpoint", "text_checkpoint", "tokenizer")}
    assert Path(lines["checkpoint"]).is_file()


def test_cli_verify_exits_1_on_a_mismatch(hub, manifest, capsys):
    from satseg.cli.main import main

    files = weights.resolve_model("test-tiny")
    blob = files.checkpoint.resolve()
    blob.chmod(0o644)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))

    assert main(["weights", "verify", "test-tiny"]) == 1
    captured = capsys.readouterr()
    assert "mismatch" in captured.out
    assert captured.err.startswith("satseg: error: 1 file(s) do not match")

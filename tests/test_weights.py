"""The weights manifest, hashing, the local registry and ``satseg weights import`` (no network)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from satseg import weights
from satseg.errors import EXIT_USAGE, CheckpointError, InputError, WeightsError

from pipeline_helpers import make_tiny_official

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_official(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny segmentation checkpoint and its paired text checkpoint in the released layout."""
    return make_tiny_official(tmp_path_factory.mktemp("tiny_official"))


def write_extra_manifest(folder: Path, models: dict) -> Path:
    path = folder / "manifest.json"
    path.write_text(json.dumps({"schema_version": 1, "models": models}))
    return path


# -- manifest ------------------------------------------------------------------------------------------


def test_packaged_manifest_and_repository_root_copy_are_identical():
    assert (REPO_ROOT / "weights_manifest.json").read_bytes() == weights.MANIFEST_PATH.read_bytes()


def test_manifest_names_sat_nano_and_sat_pro_with_their_paired_text_checkpoints(isolated_home):
    nano, pro = weights.get_model("sat-nano"), weights.get_model("sat-pro")

    assert (nano.variant, nano.repo, nano.format) == ("nano", "zzh99/SAT", "sat-official")
    assert (nano.checkpoint.path, nano.text_checkpoint.path) == ("Nano/nano.pth", "Nano/nano_text_encoder.pth")
    assert (pro.variant, pro.repo) == ("pro", "zzh99/SAT")
    assert (pro.checkpoint.path, pro.text_checkpoint.path) == ("Pro/SAT_Pro.pth", "Pro/text_encoder.pth")
    for entry in (nano, pro):
        assert entry.tokenizer.repo == "FremyCompany/BioLORD-2023-C"
        assert "vocab.txt" in entry.tokenizer.files
        assert entry.licence
        # The upstream hashes are not known: recorded as unknown rather than invented.
        assert entry.checkpoint.sha256 is None and entry.text_checkpoint.sha256 is None


def test_list_models_has_the_published_models_first(isolated_home):
    assert [m.name for m in weights.list_models()][:2] == ["sat-nano", "sat-pro"]


@pytest.mark.parametrize("field, value, complaint", [
    ("variant", "huge", "models.bad.variant"),
    ("format", "onnx", "models.bad.format"),
    ("sha256", "ABC", "models.bad.files.checkpoint.sha256"),
    ("size", -1, "models.bad.files.checkpoint.size"),
])
def test_manifest_with_an_invalid_field_is_refused_naming_the_field(isolated_home, monkeypatch, field, value, complaint):
    spec = {"variant": "nano", "format": "sat-official", "hub": {"repo": "a/b", "revision": "main"},
            "files": {"checkpoint": {"path": "x.pth", "size": None, "sha256": None},
                      "text_checkpoint": {"path": "y.pth", "size": None, "sha256": None}},
            "tokenizer": {"path": "/tokenizer"}}
    if field in ("sha256", "size"):
        spec["files"]["checkpoint"][field] = value
    else:
        spec[field] = value
    monkeypatch.setenv("SATSEG_MANIFEST", str(write_extra_manifest(isolated_home, {"bad": spec})))

    with pytest.raises(WeightsError, match=complaint.replace(".", r"\.")):
        weights.list_models()


def test_extra_manifest_can_pin_a_published_model(isolated_home, monkeypatch):
    digest = "ab" * 32
    spec = {"variant": "nano", "format": "sat-official", "hub": {"repo": "zzh99/SAT", "revision": "c" * 40},
            "files": {"checkpoint": {"path": "Nano/nano.pth", "size": 10, "sha256": digest},
                      "text_checkpoint": {"path": "Nano/nano_text_encoder.pth", "size": 20, "sha256": digest}},
            "tokenizer": {"path": "/tokenizer"}}
    monkeypatch.setenv("SATSEG_MANIFEST", str(write_extra_manifest(isolated_home, {"sat-nano": spec})))

    nano = weights.get_model("sat-nano")

    assert nano.revision == "c" * 40 and nano.checkpoint.sha256 == digest


def test_unknown_model_name_is_a_usage_error_listing_the_known_models(isolated_home):
    with pytest.raises(weights.UnknownModelError) as info:
        weights.get_model("sat-mega")

    assert isinstance(info.value, WeightsError) and isinstance(info.value, InputError)
    assert info.value.exit_code == EXIT_USAGE
    assert "sat-mega" in str(info.value) and "sat-nano, sat-pro" in str(info.value)


def test_satseg_home_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SATSEG_HOME", str(tmp_path / "elsewhere"))
    assert weights.satseg_home() == tmp_path / "elsewhere"
    monkeypatch.delenv("SATSEG_HOME")
    assert weights.satseg_home() == Path("~/.satseg").expanduser()


def test_hf_cache_follows_hf_home_and_hf_hub_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert weights.hf_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    assert weights.hf_cache_dir() == tmp_path / "hub-cache"


# -- hashing -------------------------------------------------------------------------------------------


def test_sha256_file_streams_files_larger_than_one_chunk(tmp_path):
    data = os.urandom(9 * 2**20 + 123)  # more than one 8 MiB read
    path = tmp_path / "blob.bin"
    path.write_bytes(data)

    assert weights.sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_a_file_hash_is_remembered_until_the_file_changes(isolated_home, weights_log):
    path = isolated_home / "weights.bin"
    path.write_bytes(b"first version")

    def hashing(**kwargs) -> tuple[str, int]:
        weights_log.clear()
        digest = weights.file_sha256(path, **kwargs)
        return digest, sum("computing sha256" in m for m in weights_log)

    assert hashing() == (hashlib.sha256(b"first version").hexdigest(), 1)
    assert hashing() == (hashlib.sha256(b"first version").hexdigest(), 0)
    path.write_bytes(b"other version")
    os.utime(path, ns=(1, 1))
    assert hashing() == (hashlib.sha256(b"other version").hexdigest(), 1)
    assert hashing(rehash=True)[1] == 1


def test_cli_hash_prints_size_and_sha256_in_the_manifest_form(tmp_path, capsys):
    from satseg.cli.main import main

    path = tmp_path / "nano.pth"
    path.write_bytes(b"\x00\x01" * 1000)

    assert main(["weights", "hash", str(path)]) == 0
    record = json.loads(capsys.readouterr().out)

    assert record == {"path": "nano.pth", "size": 2000, "sha256": hashlib.sha256(b"\x00\x01" * 1000).hexdigest()}
    weights.parse_manifest({"schema_version": 1, "models": {"m": {
        "variant": "nano", "format": "sat-official", "hub": {"repo": "a/b"}, "tokenizer": {"path": "/t"},
        "files": {"checkpoint": record, "text_checkpoint": record}}}}, "pasted")


# -- import --------------------------------------------------------------------------------------------


def test_import_validates_registers_and_resolves_local_files(isolated_home, tiny_official, mpnet_dir):
    seg, text = tiny_official

    entry = weights.import_model("site-tiny", "tiny", seg, text, mpnet_dir)
    files = weights.resolve_model("site-tiny", download=False)

    assert entry.origin == "imported" and "site-tiny" in [m.name for m in weights.list_models()]
    assert (files.checkpoint, files.text_checkpoint, files.tokenizer) == (seg.resolve(), text.resolve(),
                                                                          mpnet_dir.resolve())
    assert files.verified is True and files.variant == "tiny"
    registry = json.loads((isolated_home / "satseg" / "models.json").read_text())
    recorded = registry["models"]["site-tiny"]["files"]["checkpoint"]
    assert recorded["sha256"] == hashlib.sha256(seg.read_bytes()).hexdigest()
    assert recorded["size"] == seg.stat().st_size


def test_import_refuses_swapped_files_with_the_checkpoint_error(isolated_home, tiny_official, mpnet_dir):
    seg, text = tiny_official

    with pytest.raises(CheckpointError, match="text-encoder checkpoint"):
        weights.import_model("swapped", "tiny", text, seg, mpnet_dir)
    assert not (isolated_home / "satseg" / "models.json").exists()


def test_import_refuses_files_of_another_variant(isolated_home, tiny_official, mpnet_dir):
    seg, text = tiny_official

    with pytest.raises(CheckpointError):
        weights.import_model("wrong-variant", "nano", seg, text, mpnet_dir)


@pytest.mark.parametrize("name, variant, complaint", [
    ("sat-nano", "tiny", "published model name"),
    ("Bad Name", "tiny", "lower-case"),
    ("ok-name", "huge", "not one of"),
])
def test_import_refuses_bad_names_and_variants(isolated_home, tiny_official, mpnet_dir, name, variant, complaint):
    seg, text = tiny_official
    with pytest.raises(InputError, match=complaint):
        weights.import_model(name, variant, seg, text, mpnet_dir)


def test_import_refuses_a_folder_without_tokenizer_files(isolated_home, tiny_official, tmp_path):
    seg, text = tiny_official
    with pytest.raises(InputError, match="neither tokenizer.json nor vocab.txt"):
        weights.import_model("no-tokenizer", "tiny", seg, text, tmp_path)


def test_importing_a_name_twice_needs_replace(isolated_home, tiny_official, mpnet_dir):
    seg, text = tiny_official
    weights.import_model("twice", "tiny", seg, text, mpnet_dir)

    with pytest.raises(InputError, match="already imported"):
        weights.import_model("twice", "tiny", seg, text, mpnet_dir)
    assert weights.import_model("twice", "tiny", seg, text, mpnet_dir, replace=True).name == "twice"


def test_imported_file_changed_after_import_is_refused_and_kept(isolated_home, tiny_official, mpnet_dir, tmp_path):
    seg, text = tiny_official
    copy = tmp_path / "copy.pth"
    copy.write_bytes(seg.read_bytes())
    weights.import_model("changing", "tiny", copy, text, mpnet_dir)
    data = bytearray(copy.read_bytes())
    data[200] ^= 0xFF
    copy.write_bytes(bytes(data))

    with pytest.raises(WeightsError, match="does not match what was imported"):
        weights.resolve_model("changing")
    assert copy.exists()  # the user's own file is never deleted


def test_cli_import_then_list_shows_the_imported_model(isolated_home, tiny_official, mpnet_dir, capsys):
    from satseg.cli.main import main

    seg, text = tiny_official
    code = main(["weights", "import", "--name", "cli-tiny", "--variant", "tiny", "--checkpoint", str(seg),
                 "--text-checkpoint", str(text), "--tokenizer", str(mpnet_dir)])
    assert code == 0
    assert "--model cli-tiny" in capsys.readouterr().out

    assert main(["weights", "list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["cli-tiny"]["downloaded"] == "yes" and rows["cli-tiny"]["verified"] == "yes"
    assert rows["sat-nano"]["downloaded"] == "no"


def test_cli_unknown_model_exits_2_with_one_line(isolated_home, capsys):
    from satseg.cli.main import main

    assert main(["weights", "path", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("satseg: error: unknown model 'nope'")


def test_cli_path_of_a_model_not_downloaded_explains_how_to_get_it(isolated_home, capsys):
    from satseg.cli.main import main

    assert main(["weights", "path", "sat-pro"]) == 1
    err = capsys.readouterr().err
    assert "satseg weights download sat-pro" in err and "satseg weights import" in err

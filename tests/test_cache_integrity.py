"""The two caches never stand in for what they cache: the sha256 cache of weights files and the text-embedding
cache. A cached value is used only while what it was computed from is unchanged; anything else is recomputed
(or, for weights, refused). Real files, real tokenizer and text encoder (random weights), no mocks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from pipeline_helpers import make_tiny_official
from satseg import weights
from satseg.errors import WeightsError
from satseg.inference.predictor import Predictor
from satseg.model import build_sat
from satseg.model.config import get_config
from satseg.model.text import SATTokenizer, TextEncoder


@pytest.fixture(scope="module")
def tiny_official(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny segmentation checkpoint and its paired text checkpoint in the released layout (random weights)."""
    return make_tiny_official(tmp_path_factory.mktemp("tiny_official"))


def computing_sha256(messages: list[str], path: Path) -> int:
    """How many times satseg.weights logged that it hashed ``path``."""
    return sum("computing sha256" in m and str(path.resolve()) in m for m in messages)


def wait_past_timestamp_tick() -> None:
    """File systems stamp times from a coarse clock (a few ms): let the next change get a later ctime."""
    time.sleep(0.05)


# -- (a) the sha256 cache of weights files ------------------------------------------------------------------


def register_local_copy(origin: str, folder: Path, files: tuple[Path, Path], tokenizer: Path, monkeypatch) -> Path:
    """Copies of the tiny files registered as model 'local-tiny' with their hashes recorded, either by
    ``satseg weights import`` or in a site manifest (``$SATSEG_MANIFEST``, absolute paths, hashed here with
    hashlib). Returns the checkpoint copy."""
    folder.mkdir()
    seg, text = (Path(shutil.copy(f, folder / f.name)) for f in files)
    if origin == "imported":
        weights.import_model("local-tiny", "tiny", seg, text, tokenizer)
    else:
        record = {role: {"path": str(p), "size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                  for role, p in (("checkpoint", seg), ("text_checkpoint", text))}
        manifest = folder / "site-manifest.json"
        manifest.write_text(json.dumps({"schema_version": 1, "models": {"local-tiny": {
            "variant": "tiny", "format": "sat-official", "files": record, "tokenizer": {"path": str(tokenizer)}}}}))
        monkeypatch.setenv("SATSEG_MANIFEST", str(manifest))
    return seg


def changed_copy(path: Path) -> bytes:
    """The bytes of ``path`` with one byte inverted: same size, another sha256."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


def rewrite_in_place(path: Path) -> None:
    with open(path, "r+b") as fh:  # same inode, same size
        fh.write(changed_copy(path))


def copy_over(path: Path) -> None:
    other = path.with_name("other.bin")
    other.write_bytes(changed_copy(path))
    shutil.copyfile(other, path)  # writes into the existing file (same inode)


def move_over(path: Path) -> None:
    other = path.with_name("other.bin")
    other.write_bytes(changed_copy(path))
    os.replace(other, path)  # another inode in the path's place


@pytest.mark.parametrize("change", [rewrite_in_place, copy_over, move_over])
@pytest.mark.parametrize("origin", ["imported", "site manifest"])
def test_weights_changed_with_size_and_mtime_restored_are_hashed_again_and_refused(
        isolated_home, monkeypatch, tiny_official, mpnet_dir, weights_log, origin, change):
    checkpoint = register_local_copy(origin, isolated_home / "files", tiny_official, mpnet_dir, monkeypatch)
    assert weights.resolve_model("local-tiny").verified is True  # hashed, and the hash remembered
    before = checkpoint.stat()
    wait_past_timestamp_tick()

    change(checkpoint)
    os.utime(checkpoint, ns=(before.st_atime_ns, before.st_mtime_ns))  # the mtime a careful tool restores
    after = checkpoint.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    weights_log.clear()

    with pytest.raises(WeightsError, match="does not match"):
        weights.resolve_model("local-tiny")
    assert computing_sha256(weights_log, checkpoint) == 1


@pytest.mark.parametrize("origin", ["imported", "site manifest"])
def test_an_unchanged_weights_file_is_not_hashed_again_even_after_being_read(
        isolated_home, monkeypatch, tiny_official, mpnet_dir, weights_log, origin):
    checkpoint = register_local_copy(origin, isolated_home / "files", tiny_official, mpnet_dir, monkeypatch)
    weights.resolve_model("local-tiny")
    checkpoint.read_bytes()  # loading the weights reads them: that changes no identity field
    weights_log.clear()

    files = weights.resolve_model("local-tiny")

    assert files.verified is True
    assert computing_sha256(weights_log, checkpoint) == 0
    assert computing_sha256(weights_log, files.text_checkpoint) == 0


def test_a_hash_remembered_by_size_and_mtime_only_is_not_trusted(isolated_home, weights_log):
    """Records of earlier satseg versions (path, size, mtime) are hashed again, never believed."""
    path = isolated_home / "weights.bin"
    path.write_bytes(b"the real weights")
    stat = path.stat()
    (isolated_home / "satseg").mkdir()
    (isolated_home / "satseg" / "sha256-cache.json").write_text(json.dumps({str(path.resolve()): {
        "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": "0" * 64}}))

    assert weights.file_sha256(path) == hashlib.sha256(b"the real weights").hexdigest()
    assert computing_sha256(weights_log, path) == 1


def test_file_identity_changes_with_an_in_place_rewrite_that_keeps_size_and_mtime(tmp_path):
    path = tmp_path / "text_encoder.pth"
    path.write_bytes(b"weights, version 1")
    before, stat = weights.file_identity(path), path.stat()
    wait_past_timestamp_tick()

    path.write_bytes(b"weights, version 2")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    assert weights.file_identity(path) != before
    assert weights.file_identity(path) == weights.file_identity(path)  # and is stable otherwise


# -- (b) the text-embedding cache ----------------------------------------------------------------------------


class CountingTextEncoder(TextEncoder):
    """The real text encoder, recording every prompt it is asked to encode."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.encoded: list[str] = []

    def encode(self, prompts, modality, tokenizer):
        self.encoded.extend(prompts)
        return super().encode(prompts, modality, tokenizer)


TINY = get_config("tiny")


@pytest.fixture(scope="module")
def tokenizer(mpnet_dir) -> SATTokenizer:
    return SATTokenizer(mpnet_dir)


@pytest.fixture(scope="module")
def sat_model():
    return build_sat("tiny")


def make_predictor(cache: Path, tokenizer, sat_model, *, key: str = "model-a", seed: int = 0) -> Predictor:
    """A fresh predictor (empty in-memory cache) whose text encoder has the random weights of ``seed``."""
    torch.manual_seed(seed)
    encoder = CountingTextEncoder(TINY.text, query_dim=TINY.query_dim)
    return Predictor(sat_model, encoder, tokenizer, embedding_cache=cache, cache_key=key)


def new_entry(cache: Path, predictor: Predictor, term: str, modality: str = "ct") -> tuple[Path, torch.Tensor]:
    """Embed ``term``: the cache file it added and the embedding."""
    known = set(cache.glob("*.pt"))
    embedding = predictor.embed([term], modality)[0]
    (added,) = set(cache.glob("*.pt")) - known
    return added, embedding


@pytest.fixture()
def cached_liver_and_spleen(tmp_path, tokenizer, sat_model):
    """A cache holding the liver and spleen entries of model-a, their files and embeddings."""
    writer = make_predictor(tmp_path, tokenizer, sat_model)
    liver_file, liver = new_entry(tmp_path, writer, "liver")
    spleen_file, spleen = new_entry(tmp_path, writer, "spleen")
    assert not torch.allclose(liver, spleen)  # else the tests below could not tell them apart
    return tmp_path, {"liver": (liver_file, liver), "spleen": (spleen_file, spleen)}


def test_a_valid_entry_is_used_without_running_the_text_encoder(cached_liver_and_spleen, tokenizer, sat_model):
    cache, entries = cached_liver_and_spleen
    mtimes = {p: p.stat().st_mtime_ns for p in cache.glob("*.pt")}
    reader = make_predictor(cache, tokenizer, sat_model)

    embedded = reader.embed(["liver", "spleen"], "ct")

    assert reader.text_encoder.encoded == []
    assert torch.equal(embedded[0], entries["liver"][1]) and torch.equal(embedded[1], entries["spleen"][1])
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.pt")} == mtimes  # nothing rewritten


def test_a_swapped_entry_gives_the_right_term_embedding_and_is_repaired(cached_liver_and_spleen, tokenizer, sat_model):
    """The spleen entry copied over the liver entry: ``-p liver`` must not segment the spleen."""
    cache, entries = cached_liver_and_spleen
    (liver_file, liver), (spleen_file, spleen) = entries["liver"], entries["spleen"]
    shutil.copyfile(spleen_file, liver_file)
    reader = make_predictor(cache, tokenizer, sat_model)

    embedded = reader.embed(["liver"], "ct")[0]

    assert reader.text_encoder.encoded == ["liver"]
    assert torch.equal(embedded, liver) and not torch.allclose(embedded, spleen)
    repaired = make_predictor(cache, tokenizer, sat_model)
    assert torch.equal(repaired.embed(["liver"], "ct")[0], liver) and repaired.text_encoder.encoded == []


def _bare_tensor_of_spleen(path: Path, spleen: torch.Tensor) -> None:  # the format written before
    torch.save(spleen.clone(), path)


def _bare_tensor_of_another_shape(path: Path, spleen: torch.Tensor) -> None:
    torch.save(torch.zeros(3, TINY.query_dim + 1), path)


def _consistent_record_of_another_shape(path: Path, spleen: torch.Tensor) -> None:
    record = torch.load(path, weights_only=True)
    record.update(embedding=torch.zeros(TINY.query_dim + 1), shape=[TINY.query_dim + 1])
    torch.save(record, path)


def _nan_values(path: Path, spleen: torch.Tensor) -> None:
    record = torch.load(path, weights_only=True)
    record["embedding"][0] = float("nan")
    torch.save(record, path)


def _record_saying_float32_over_float64_values(path: Path, spleen: torch.Tensor) -> None:
    record = torch.load(path, weights_only=True)
    record.update(embedding=record["embedding"].double())
    torch.save(record, path)


def _record_saying_the_right_shape_over_another_shape(path: Path, spleen: torch.Tensor) -> None:
    record = torch.load(path, weights_only=True)
    record.update(embedding=torch.stack([spleen, spleen]))
    torch.save(record, path)


def _truncated(path: Path, spleen: torch.Tensor) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _not_a_torch_file(path: Path, spleen: torch.Tensor) -> None:
    path.write_text("liver")


@pytest.mark.parametrize("damage", [_bare_tensor_of_spleen, _bare_tensor_of_another_shape,
                                    _consistent_record_of_another_shape, _nan_values,
                                    _record_saying_float32_over_float64_values,
                                    _record_saying_the_right_shape_over_another_shape,
                                    _truncated, _not_a_torch_file])
def test_a_stale_or_damaged_entry_is_recomputed_and_overwritten(cached_liver_and_spleen, tokenizer, sat_model, damage):
    cache, entries = cached_liver_and_spleen
    liver_file, liver = entries["liver"]
    damage(liver_file, entries["spleen"][1])
    reader = make_predictor(cache, tokenizer, sat_model)

    embedded = reader.embed(["liver", "spleen"], "ct")

    assert reader.text_encoder.encoded == ["liver"]
    assert torch.equal(embedded[0], liver) and torch.isfinite(embedded).all()
    repaired = make_predictor(cache, tokenizer, sat_model)
    assert torch.equal(repaired.embed(["liver"], "ct")[0], liver) and repaired.text_encoder.encoded == []


def test_an_entry_of_another_text_encoder_is_not_used(tmp_path, tokenizer, sat_model):
    """Two models' liver entries, one copied over the other: each model still gets its own embedding."""
    model_a = make_predictor(tmp_path, tokenizer, sat_model, key="model-a", seed=0)
    model_b = make_predictor(tmp_path, tokenizer, sat_model, key="model-b", seed=1)
    a_file, a_liver = new_entry(tmp_path, model_a, "liver")
    b_file, b_liver = new_entry(tmp_path, model_b, "liver")
    assert not torch.allclose(a_liver, b_liver)
    shutil.copyfile(a_file, b_file)
    reader = make_predictor(tmp_path, tokenizer, sat_model, key="model-b", seed=1)

    assert torch.equal(reader.embed(["liver"], "ct")[0], b_liver)
    assert reader.text_encoder.encoded == ["liver"]


def test_an_entry_of_another_tokenizer_is_not_used(tmp_path, tokenizer, sat_model, mpnet_dir):
    """Same model key, a tokenizer that cuts prompts at 8 ids: its own entries, even when one is copied over."""
    short = SATTokenizer(mpnet_dir, max_tokens=8)
    full_file, _ = new_entry(tmp_path, make_predictor(tmp_path, tokenizer, sat_model), "liver")
    with_short = make_predictor(tmp_path, short, sat_model)
    short_file, _ = new_entry(tmp_path, with_short, "liver")
    assert with_short.text_encoder.encoded == ["liver"]  # not read from the full tokenizer's entry
    shutil.copyfile(full_file, short_file)
    reader = make_predictor(tmp_path, short, sat_model)

    reader.embed(["liver"], "ct")

    assert reader.text_encoder.encoded == ["liver"]


def test_an_entry_of_another_modality_is_not_used(cached_liver_and_spleen, tokenizer, sat_model):
    cache, entries = cached_liver_and_spleen
    writer = make_predictor(cache, tokenizer, sat_model)
    mri_file, mri_liver = new_entry(cache, writer, "liver", modality="mri")
    shutil.copyfile(entries["liver"][0], mri_file)  # the CT entry in the MRI entry's place
    reader = make_predictor(cache, tokenizer, sat_model)

    assert torch.equal(reader.embed(["liver"], "mri")[0], mri_liver)
    assert reader.text_encoder.encoded == ["liver"]


def test_from_pretrained_keys_embeddings_on_a_text_checkpoint_rewritten_with_its_mtime_restored(
        isolated_home, monkeypatch, mpnet_dir):
    """A model without recorded hashes (so nothing is refused): new text weights written into the same file
    with size and mtime kept are a new cache key, and their embeddings are computed, not read."""
    first = make_tiny_official(isolated_home / "files", seed=0)
    second = make_tiny_official(isolated_home / "other", seed=1)
    record = {role: {"path": str(p), "size": None, "sha256": None}
              for role, p in (("checkpoint", first[0]), ("text_checkpoint", first[1]))}
    manifest = isolated_home / "site-manifest.json"
    manifest.write_text(json.dumps({"schema_version": 1, "models": {"unhashed-tiny": {
        "variant": "tiny", "format": "sat-official", "files": record, "tokenizer": {"path": str(mpnet_dir)}}}}))
    monkeypatch.setenv("SATSEG_MANIFEST", str(manifest))
    old = Predictor.from_pretrained("unhashed-tiny", download=False)
    old_liver = old.embed(["liver"], "ct")[0]
    text = first[1]
    before = text.stat()
    assert second[1].stat().st_size == before.st_size
    wait_past_timestamp_tick()

    with open(text, "r+b") as fh:
        fh.write(second[1].read_bytes())
    os.utime(text, ns=(before.st_atime_ns, before.st_mtime_ns))
    new = Predictor.from_pretrained("unhashed-tiny", download=False)
    new_liver = new.embed(["liver"], "ct")[0]

    assert new.text.cache_key != old.text.cache_key
    assert not torch.allclose(new_liver, old_liver)
    torch.testing.assert_close(new_liver, new.text_encoder.encode(["liver"], "ct", new.tokenizer)[0].float(),
                               rtol=0, atol=0)


def test_a_tokenizer_keeps_its_identity_once_it_has_been_used(tmp_path, mpnet_dir, sat_model):
    """Hugging Face tokenizers record per-call settings (truncation, padding) in their state: not part of
    the identity, or entries written before a tokenizer's first use would never be found again."""
    fresh = SATTokenizer(mpnet_dir)
    new_entry(tmp_path, make_predictor(tmp_path, fresh, sat_model), "liver")  # written before its first use
    fresh(["spleen", "left kidney"])
    reader = make_predictor(tmp_path, fresh, sat_model)

    reader.embed(["liver"], "ct")

    assert reader.text_encoder.encoded == []


def test_a_malformed_record_is_recomputed_not_raised(cached_liver_and_spleen, tokenizer, sat_model):
    """A record whose fields hold lists of tensors (comparing them raises) is just another stale entry."""
    cache, entries = cached_liver_and_spleen
    liver_file, liver = entries["liver"]
    record = torch.load(liver_file, weights_only=True)
    torch.save({key: [torch.zeros(2)] for key in record}, liver_file)
    reader = make_predictor(cache, tokenizer, sat_model)

    assert torch.equal(reader.embed(["liver"], "ct")[0], liver)
    assert reader.text_encoder.encoded == ["liver"]

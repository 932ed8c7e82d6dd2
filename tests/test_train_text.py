"""``satseg train text``: knowledge pairs, the contrastive loss, which layers train, and a short real run."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from satseg.cli.main import main
from satseg.errors import InputError
from satseg.model import build_text_encoder
from satseg.model.checkpoint import load_text_checkpoint, safe_load, write_official_checkpoint
from satseg.model.text import SATTokenizer
from satseg.training.text_data import (Definition, Relation, TextPair, load_knowledge, parse_knowledge,
                                       relation_pair, tokenize_with_random_truncation)
from satseg.training.text_pretrain import TextPretrainOptions, clip_loss, encode_pairs, open_layers, target_matrix

KNOWLEDGE = {
    "Liver": {"cleaned_definition": " The largest gland of the abdomen, below the diaphragm. ",
              "synonyms": ["hepar", "  "], "relations": [["part of", "Digestive System"]], "citations": ["x"]},
    "spleen": {"cleaned_definition": ["An organ of the left upper abdomen.", "It filters blood."],
               "relations": [["adjacent to", ["Stomach", "gaster"]]]},
    "aorta": {"synonyms": ["aortic trunk"], "relations": [], "citations": []},
    "kidney": {"cleaned_definition": "A paired organ that filters blood into urine.",
               "relations": [["located in", "retroperitoneum"]]},
    "heart": {"cleaned_definition": "The muscular organ that pumps blood.", "synonyms": ["cor"],
              "relations": [["part of", "cardiovascular system"]]},
}


@pytest.fixture(scope="module")
def tokenizer(mpnet_dir):
    return SATTokenizer(mpnet_dir)


# -- pairs ---------------------------------------------------------------------------------------------


def test_definitions_synonyms_and_relations_become_pairs_with_lower_cased_names():
    pool = parse_knowledge(KNOWLEDGE)

    assert set(pool.definitions) == {
        Definition("liver", "The largest gland of the abdomen, below the diaphragm.", "definition"),
        Definition("liver", "hepar", "synonym"),
        Definition("spleen", "An organ of the left upper abdomen.", "definition"),
        Definition("spleen", "It filters blood.", "definition"),
        Definition("aorta", "aortic trunk", "synonym"),
        Definition("kidney", "A paired organ that filters blood into urine.", "definition"),
        Definition("heart", "The muscular organ that pumps blood.", "definition"),
        Definition("heart", "cor", "synonym"),
    }
    assert set(pool.relations) == {
        Relation("liver", "part of", "digestive system"), Relation("spleen", "adjacent to", "stomach"),
        Relation("spleen", "adjacent to", "gaster"), Relation("kidney", "located in", "retroperitoneum"),
        Relation("heart", "part of", "cardiovascular system"),
    }


def test_a_relation_pairs_source_and_relation_with_the_target_or_relation_and_target_with_the_source():
    edge = Relation("liver", "part of", "digestive system")
    rng = random.Random(0)

    seen = {relation_pair(edge, rng) for _ in range(50)}

    assert seen == {TextPair(concept="digestive system", text="liver part of"),
                    TextPair(concept="liver", text="part of digestive system")}


def test_batches_draw_every_kind_of_fact(tmp_path):
    path = tmp_path / "k.json"
    path.write_text(json.dumps(KNOWLEDGE))
    pool = load_knowledge(path)

    batch = pool.sample_batch(400, random.Random(1))

    texts = {p.text for p in batch}
    assert {"hepar", "It filters blood.", "liver part of", "part of digestive system"} <= texts
    assert {p.concept for p in batch} >= {"liver", "spleen", "aorta", "kidney", "heart", "digestive system"}


def test_the_reference_knowledge_file_yields_its_documented_counts(shared_reference):
    pool = load_knowledge(shared_reference / "sat" / "sat-pretrain" / "supplementary_lab2def_gpt.json")

    kinds = [d.kind for d in pool.definitions]
    # SAT_SPEC §6.3: 421 cleaned definitions, 4,419 synonyms, 2,326 [relation, target] pairs
    assert (kinds.count("definition"), kinds.count("synonym"), len(pool.relations)) == (421, 4419, 2326)


@pytest.mark.parametrize("document, complaint", [
    ([], "JSON object"), ({"liver": "an organ"}, "expected an object"),
    ({"liver": {"relations": [["part of"]]}}, r"\[relation, target\] pairs"),
    ({"liver": {"citations": ["x"]}}, "no definitions"),
])
def test_malformed_knowledge_is_refused_with_the_place_named(document, complaint):
    with pytest.raises(InputError, match=complaint):
        parse_knowledge(document)


# -- tokenisation --------------------------------------------------------------------------------------


def test_without_truncation_ids_match_the_inference_tokenizer(tokenizer, mpnet_dir):
    texts = ["Liver", "The muscular organ that pumps blood. " * 30]
    short = SATTokenizer(mpnet_dir, max_tokens=40)

    ids, mask = tokenize_with_random_truncation(tokenizer, texts, random.Random(0), max_tokens=40, truncate_p=0.0)

    expected_ids, expected_mask = short(texts)
    assert torch.equal(ids, expected_ids) and torch.equal(mask, expected_mask)


def test_random_truncation_keeps_a_window_between_cls_and_sep(tokenizer):
    text = " ".join(f"word{i}" for i in range(200))
    pieces = tokenizer.tokenizer.convert_tokens_to_ids(tokenizer.tokenizer.tokenize(text))

    rows = [tokenize_with_random_truncation(tokenizer, [text], random.Random(seed), max_tokens=32, truncate_p=1.0)[0][0]
            for seed in range(5)]

    for row in rows:
        assert row.shape == (32,) and row[0] == tokenizer.cls_id and row[-1] == tokenizer.sep_id
        window = row[1:-1].tolist()
        starts = [i for i in range(len(pieces) - 29) if pieces[i:i + 30] == window]
        assert starts, "the kept ids are not a contiguous window of the text"
    assert len({tuple(r.tolist()) for r in rows}) > 1


# -- loss ----------------------------------------------------------------------------------------------


def test_target_matrix_marks_duplicate_concepts_and_is_normalised_per_column():
    target = target_matrix(["liver", "aorta", "liver"])

    s = 1 / math.sqrt(2)
    torch.testing.assert_close(target, torch.tensor([[s, 0.0, s], [0.0, 1.0, 0.0], [s, 0.0, s]]))


def test_clip_loss_matches_a_hand_computation():
    a = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    b = F.normalize(torch.tensor([[1.0, 0.2], [0.0, 1.0], [0.5, 0.5]]), dim=1)
    concepts, scale = ["liver", "aorta", "liver"], 10.0
    s = 1 / math.sqrt(2)
    target = [[s, 0, s], [0, 1, 0], [s, 0, s]]

    def cross_entropy(logits):  # rows of logits against rows of target, averaged over rows
        total = 0.0
        for i, row in enumerate(logits):
            log_z = math.log(sum(math.exp(v) for v in row))
            total -= sum(target[i][j] * (row[j] - log_z) for j in range(3))
        return total / 3

    dot = [[scale * sum(x * y for x, y in zip(a[i].tolist(), b[j].tolist())) for j in range(3)] for i in range(3)]
    transposed = [[dot[j][i] for j in range(3)] for i in range(3)]
    expected = (cross_entropy(dot) + cross_entropy(transposed)) / 2

    loss = clip_loss(a, b, concepts, torch.tensor(scale))

    assert loss.item() == pytest.approx(expected, rel=1e-5)


# -- which weights train -------------------------------------------------------------------------------


def test_open_layer_8_trains_only_layers_9_to_11_and_the_pooler():
    mpnet = build_text_encoder("nano", device="meta").mpnet

    trainable = open_layers(mpnet, 8)

    assert trainable and set(trainable) == {n for n, _ in mpnet.named_parameters()
                                            if n.startswith(("encoder.layer.9.", "encoder.layer.10.",
                                                             "encoder.layer.11.", "pooler."))}
    frozen = {n for n, p in mpnet.named_parameters() if not p.requires_grad}
    assert "embeddings.word_embeddings.weight" in frozen and "encoder.layer.8.output.dense.weight" in frozen
    assert "encoder.relative_attention_bias.weight" in frozen


def test_open_layer_at_the_top_freezes_everything_and_minus_one_opens_every_layer():
    mpnet = build_text_encoder("nano", device="meta").mpnet

    assert open_layers(mpnet, 11) == []
    every = open_layers(mpnet, -1)
    assert {n.split(".")[2] for n in every if n.startswith("encoder.layer.")} == {str(i) for i in range(12)}
    assert not any(n.startswith("embeddings.") for n in every)


def test_mpnet_folder_weights_load_into_the_nano_text_tower(mpnet_dir):
    from safetensors import safe_open

    from satseg.model.checkpoint import load_mpnet_folder

    encoder = build_text_encoder("nano")
    load_mpnet_folder(encoder, mpnet_dir)

    with safe_open(str(mpnet_dir / "model.safetensors"), framework="pt") as fh:
        reference = fh.get_tensor("encoder.layer.11.output.dense.weight")
    assert torch.equal(encoder.mpnet.encoder.layer[11].output.dense.weight, reference)


# -- a short real run ----------------------------------------------------------------------------------


def _eval_loss(encoder, tokenizer, pairs) -> float:
    encoder.eval()
    with torch.no_grad():
        a, b = encode_pairs(encoder, tokenizer, pairs, random.Random(0),
                            TextPretrainOptions(max_tokens=32, truncate_p=0.0), torch.device("cpu"))
        return clip_loss(a, b, [p.concept for p in pairs], torch.tensor(1 / 0.07)).item()


def test_short_cpu_run_lowers_the_loss_and_writes_a_strictly_loadable_text_checkpoint(tmp_path, mpnet_dir, tokenizer):
    knowledge = tmp_path / "knowledge.json"
    knowledge.write_text(json.dumps(KNOWLEDGE))
    torch.manual_seed(0)
    start = build_text_encoder("tiny")
    init = write_official_checkpoint(start, tmp_path / "start.pth", text=True)
    pool = parse_knowledge(KNOWLEDGE)
    probe = ([TextPair(d.name, d.text) for d in pool.definitions]
             + [relation_pair(edge, random.Random(i)) for i, edge in enumerate(pool.relations)])
    run = tmp_path / "run"

    code = main(["train", "text", "--knowledge", str(knowledge), "--mpnet", str(mpnet_dir), "--out", str(run),
                 "--variant", "tiny", "--init-text", str(init), "--steps", "25", "--batch", "8", "--lr", "1e-3",
                 "--warmup", "2", "--open-layer", "-1", "--max-tokens", "32", "--device", "cpu"])

    assert code == 0
    trained = build_text_encoder("tiny")
    load_text_checkpoint(trained, run / "text_encoder.pth")  # strict: raises on any key or shape difference
    assert safe_load(run / "text_encoder.pth")["step"] == 25
    before, after = _eval_loss(start, tokenizer, probe), _eval_loss(trained, tokenizer, probe)
    assert after < before - 0.1, (before, after)
    # embeddings are never trained; the open layers are
    assert torch.equal(trained.mpnet.embeddings.word_embeddings.weight, start.mpnet.embeddings.word_embeddings.weight)
    assert not torch.equal(trained.mpnet.encoder.layer[0].output.dense.weight,
                           start.mpnet.encoder.layer[0].output.dense.weight)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 26))
    assert all(1.0 <= m["logit_scale"] <= 100.0 for m in metrics)
    assert json.loads((run / "text_run.json").read_text())["steps_done"] == 25


def test_a_fresh_tower_is_written_with_a_small_modality_embedding(tmp_path, mpnet_dir):
    """Stage 1a never trains the modality rows; written at torch's N(0, 1) they outweighed the text in every
    query (norm ~8 vs ~1) and `fit --text-init` started with one query for every prompt."""
    knowledge = tmp_path / "knowledge.json"
    knowledge.write_text(json.dumps(KNOWLEDGE))
    run = tmp_path / "run"

    assert main(["train", "text", "--knowledge", str(knowledge), "--mpnet", str(mpnet_dir), "--out", str(run),
                 "--variant", "tiny", "--steps", "2", "--batch", "4", "--max-tokens", "32", "--device", "cpu"]) == 0

    text = build_text_encoder("tiny")
    load_text_checkpoint(text, run / "text_encoder.pth")
    assert float(text.modality_embed.weight.std()) < 0.05
    assert float(text.modality_embed.weight.abs().max()) > 0  # initialised, not zeroed


def test_a_batch_without_negatives_is_refused(tmp_path, mpnet_dir):
    knowledge = tmp_path / "knowledge.json"
    knowledge.write_text(json.dumps(KNOWLEDGE))

    assert main(["train", "text", "--knowledge", str(knowledge), "--mpnet", str(mpnet_dir), "--out",
                 str(tmp_path / "run"), "--variant", "tiny", "--batch", "1"]) == 2

"""SAT's tokenisation and the MPNet text tower, checked on the real MPNet tokenizer and weights."""

from __future__ import annotations

import pytest
import torch

from satseg.errors import InputError
from satseg.model import build_text_encoder
from satseg.model.text import SATTokenizer, modality_code


@pytest.fixture(scope="module")
def tokenizer(mpnet_dir):
    return SATTokenizer(mpnet_dir)


def test_literal_cls_and_sep_map_to_the_mpnet_vocabulary_ids(tokenizer):
    ids, mask = tokenizer(["left kidney"])
    assert ids[0, 0].item() == 105 and ids[0, -1].item() == 106
    assert mask.tolist() == [[1] * ids.shape[1]]


def test_batch_is_padded_with_zero_and_masked(tokenizer):
    ids, mask = tokenizer(["liver", "intervertebral disc between lumbar vertebrae 4 (l4) and lumbar vertebrae 5 (l5)"])
    assert ids.shape[0] == 2 and (ids[0, 3:] == 0).all()
    torch.testing.assert_close(mask, (ids > 0).long())


def test_prompts_are_lower_cased(tokenizer):
    assert torch.equal(tokenizer(["Left Kidney"])[0], tokenizer(["left kidney"])[0])


def test_long_prompt_is_truncated_to_256_ids_ending_in_sep(tokenizer):
    ids, _ = tokenizer(["kidney " * 400])
    assert ids.shape == (1, 256) and ids[0, -1].item() == 106


def test_modality_codes_follow_sat():
    assert [modality_code(m) for m in ("ct", "mri", "us", "pet")] == [0, 1, 2, 3]
    with pytest.raises(InputError):
        modality_code("xray")


@pytest.fixture(scope="module")
def mpnet_encoder(mpnet_dir):
    """Our text encoder with the real all-mpnet-base-v2 tower weights loaded strictly."""
    from satseg.model.checkpoint import load_mpnet_folder

    encoder = build_text_encoder("nano").eval()
    load_mpnet_folder(encoder, mpnet_dir)
    return encoder


def test_tower_config_reproduces_the_pretrained_mpnet(mpnet_dir, mpnet_encoder, tokenizer):
    """Our MPNet config (BioLORD-2023-C numbers) is the one all-mpnet-base-v2 was saved with."""
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(str(mpnet_dir), local_files_only=True).eval()
    ids, mask = tokenizer(["left kidney", "liver"])
    with torch.no_grad():
        ours = mpnet_encoder.mpnet(input_ids=ids, attention_mask=mask).last_hidden_state
        theirs = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_prompt_embedding_does_not_depend_on_the_rest_of_the_batch(mpnet_encoder, tokenizer):
    with torch.no_grad():
        alone = mpnet_encoder.encode(["spleen"], "ct", tokenizer)
        with_long = mpnet_encoder.encode(["spleen", "lumbar vertebrae 5 (l5) and the sacrum of the pelvis"], "ct",
                                         tokenizer)
    torch.testing.assert_close(alone[0], with_long[0], rtol=1e-4, atol=1e-5)


def test_pooled_features_separate_related_and_unrelated_prompts(mpnet_encoder, tokenizer):
    with torch.no_grad():
        ids, mask = tokenizer(["left kidney", "right kidney", "brain stem"])
        pooled = torch.nn.functional.normalize(mpnet_encoder.pooled(ids, mask), dim=-1)
    similarity = pooled @ pooled.T
    assert similarity[0, 1] > similarity[0, 2]


def test_modality_embedding_is_added_to_the_projected_text(mpnet_encoder, tokenizer):
    with torch.no_grad():
        ct = mpnet_encoder.encode(["liver"], "ct", tokenizer)
        mri = mpnet_encoder.encode(["liver"], "mri", tokenizer)
    expected = mpnet_encoder.modality_embed.weight[0] - mpnet_encoder.modality_embed.weight[1]
    torch.testing.assert_close(ct[0] - mri[0], expected, rtol=1e-4, atol=1e-4)

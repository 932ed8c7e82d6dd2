"""The SAT model: U-Net backbone, query decoder, mask head, text encoder, checkpoints."""

from satseg.model.build import build_sat, build_text_encoder, count_parameters
from satseg.model.config import MODALITY_CODES, NANO, PRO, TINY, VARIANTS, SATConfig, TextConfig, get_config

__all__ = [
    "build_sat", "build_text_encoder", "count_parameters", "get_config", "SATConfig", "TextConfig",
    "NANO", "PRO", "TINY", "VARIANTS", "MODALITY_CODES",
]

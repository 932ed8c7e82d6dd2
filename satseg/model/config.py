"""Architecture numbers of the SAT variants. Variants differ only in these numbers, never in code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

# Modality codes of the released text encoders (SAT_SPEC §2.4): ct 0, mri 1, us 2, pet 3.
MODALITY_CODES: dict[str, int] = {"ct": 0, "mri": 1, "us": 2, "pet": 3}


@dataclass(frozen=True)
class TextConfig:
    """The text tower: an MPNet encoder (BioLORD-2023-C architecture) + projection + modality embedding."""

    vocab_size: int = 30527
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_positions: int = 514
    relative_attention_buckets: int = 32
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1  # MPNet's own padding id (position ids); SAT pads the batch with id 0
    n_modalities: int = 4
    max_tokens: int = 256


@dataclass(frozen=True)
class SATConfig:
    """The segmentation model: a 6-stage plain-conv 3D U-Net, a query decoder and a mask head.

    Attributes:
        features: channels of the 6 encoder stages (full resolution first).
        encoder_convs / decoder_convs: 3×3×3 conv-norm-act blocks per encoder / decoder stage.
        query_dim: width of the text queries, the image tokens and the query decoder.
        projection_hidden: hidden width of the image-token projection MLP.
        mask_hidden: hidden width of the mask-embedding MLP (output width = features[0]).
        mid_mask_hidden: hidden widths of the deep-supervision heads at /2, /4, /8.
        window: the sliding-window (= training crop at inference) size in voxels (H, W, D).
        spacing: voxel size in mm of the grid the model sees (SAT: 1×1×3 mm). Scans are resampled to it before
            inference and ``satseg train prepare --spacing`` writes training caches on it.
    """

    name: str
    features: tuple[int, ...]
    encoder_convs: int
    decoder_convs: int
    projection_hidden: int
    mask_hidden: int
    mid_mask_hidden: tuple[int, int, int]
    in_channels: int = 3
    query_dim: int = 768
    decoder_layers: int = 6
    decoder_heads: int = 8
    decoder_ffn: int = 2048
    decoder_dropout: float = 0.1
    window: tuple[int, int, int] = (288, 288, 96)
    stride: tuple[int, int, int] = (144, 144, 48)
    spacing: tuple[float, float, float] = (1.0, 1.0, 3.0)
    text: TextConfig = field(default_factory=TextConfig)

    @property
    def token_channels(self) -> int:
        """Channels of the concatenated multi-scale image tokens (1792 Nano, 3584 Pro)."""
        return sum(self.features)

    @property
    def mask_dim(self) -> int:
        """Width of the per-pixel embedding the masks are dot products with (64 Nano, 128 Pro)."""
        return self.features[0]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SATConfig:
        """Inverse of :meth:`to_dict` (JSON lists back to tuples)."""
        tuples = {f.name for f in fields(cls) if str(f.type).startswith("tuple")}
        values = {k: (tuple(v) if k in tuples else v) for k, v in data.items() if k != "text"}
        return cls(**values, text=TextConfig(**data["text"]))


NANO = SATConfig(
    name="nano",
    features=(64, 64, 128, 256, 512, 768),
    encoder_convs=2,
    decoder_convs=2,
    projection_hidden=768,
    mask_hidden=256,
    mid_mask_hidden=(256, 384, 512),
)

PRO = SATConfig(
    name="pro",
    features=(128, 128, 256, 512, 1024, 1536),
    encoder_convs=3,
    decoder_convs=3,
    projection_hidden=1536,
    mask_hidden=384,
    mid_mask_hidden=(384, 512, 512),
)

# A few-hundred-thousand-parameter model for tests and CPU smoke training. Same code path, small numbers.
TINY = SATConfig(
    name="tiny",
    features=(8, 8, 16, 16, 32, 32),
    encoder_convs=1,
    decoder_convs=1,
    projection_hidden=64,
    mask_hidden=32,
    mid_mask_hidden=(32, 32, 32),
    query_dim=64,
    decoder_layers=2,
    decoder_heads=4,
    decoder_ffn=128,
    window=(64, 64, 32),
    stride=(32, 32, 16),
    text=TextConfig(hidden=64, layers=2, heads=4, intermediate=128),
)

VARIANTS: dict[str, SATConfig] = {"nano": NANO, "pro": PRO, "tiny": TINY}


def get_config(variant: str | SATConfig) -> SATConfig:
    if isinstance(variant, SATConfig):
        return variant
    try:
        return VARIANTS[variant.lower()]
    except KeyError:
        from satseg.errors import InputError

        raise InputError(f"unknown model variant {variant!r}; known: {', '.join(VARIANTS)}") from None

"""What a ``satseg train fit`` run starts from, and which of it trains.

Starting weights: a resumed run's own checkpoint, else ``--init`` (a model name, a satseg ``.safetensors``, a
training state file, or a released segmentation ``.pth`` alone), loaded by :func:`satseg.load_model` (resolution,
sha256 verification, the one strict loader), else a fresh initialisation of the configured architecture. The text
tower comes from the init's paired text encoder unless ``--text-init`` / ``text_encoder.init`` names an MPNet
folder, a SAT text checkpoint or ``random``. Deep-supervision heads the starting file lacks start fresh.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from satseg.errors import InputError
from satseg.model.checkpoint import HEADS, load_mpnet_folder, load_strict, load_text_checkpoint
from satseg.model.text import init_fresh_modality_embedding
from satseg.training.fit_config import FitOptions, with_architecture, with_model_grid, with_training_window

log = logging.getLogger("satseg.training.fit")  # the fit command's messages, whichever module logs them


# Everything between a prompt and the vector its voxels are dotted with. ``schedule.freeze_query_side_steps``
# keeps it fixed at the start (satseg option, 0 = upstream): the U-Net first learns per-pixel embeddings for the
# fixed, distinct initial prompt codes. Trained from the start, the tiny model's mask embeddings settled at GELU's
# minimum (-0.17, zero gradient) in most channels for every prompt within 20-40 steps, and left and right kidney
# ended with one shared mask.
QUERY_SIDE = ("text.", "sat.projection_layer.", "sat.transformer_decoder.", "sat.mask_embed_proj.",
              "sat.mid_mask_embed_proj.")


class SATWithText(nn.Module):
    """The trained graph: text tower + SAT, one module so DDP synchronises both.

    ``forward(image, codes, pooled=None, input_ids=None, attention_mask=None)``: image (B, 3, H, W, D); codes
    (B, N) modality codes; either ``pooled`` (B·N, hidden) features of a frozen MPNet or token ids / mask
    (B·N, L). Returns logits (B, N, H, W, D) or, with deep supervision, a list (full resolution first).
    """

    def __init__(self, sat: nn.Module, text: nn.Module):
        super().__init__()
        self.sat = sat
        self.text = text

    def forward(self, image, codes, pooled=None, input_ids=None, attention_mask=None):
        if pooled is None:
            pooled = self.text.pooled(input_ids, attention_mask)
        queries = self.text.projection_layer(pooled) + self.text.modality_embed(codes.flatten())
        return self.sat(image, queries.reshape(*codes.shape, -1))


def freeze_text(text: nn.Module, open_bert_layer: int, open_modality_embed: bool, train_projection: bool) -> None:
    """Upstream's ``open_bert_layer`` rule: MPNet layers with index > N train; the rest is frozen.

    The pooler is frozen whatever N (mean pooling never uses it; upstream marks it trainable, which has no
    effect because it never receives a gradient).
    """
    for name, param in text.named_parameters():
        if name.startswith("mpnet.encoder.layer."):
            param.requires_grad = int(name.split(".")[3]) > open_bert_layer
        elif name.startswith("mpnet."):
            param.requires_grad = False
        elif name.startswith("modality_embed."):
            param.requires_grad = bool(open_modality_embed)
        else:
            param.requires_grad = bool(train_projection)


def freeze_unused(sat: nn.Module) -> None:
    """``norm1`` of each decoder layer is kept only so released files load; it never gets a gradient."""
    for name, param in sat.named_parameters():
        if ".norm1." in name:
            param.requires_grad = False

# -- starting weights ---------------------------------------------------------------------------------------


@dataclass
class StartingModels:
    """The modules a run trains, built and loaded, with their tokenizer."""

    model_config: object
    sat: nn.Module
    text: nn.Module
    tokenizer: object
    tokenizer_dir: Path | None


def load_init(init: str, *, deep_supervision: bool):
    """``--init`` through the model factory; a released segmentation file alone (no text encoder) is accepted."""
    from satseg.model.checkpoint import safe_load
    from satseg.model.factory import load_model
    from satseg.model.training_state import FORMAT

    path = Path(init)
    if path.is_file() and path.suffix != ".safetensors" and safe_load(path).get("format") != FORMAT:
        return load_model((path, None), deep_supervision=deep_supervision)
    return load_model(init, deep_supervision=deep_supervision)


def build_models(config: dict, options: FitOptions, resumed: dict | None) -> StartingModels:
    """Build the run's SAT and text tower and give them their starting weights (resumed weights are loaded later,
    with the optimizer state); then freeze what does not train."""
    from satseg.model.config import get_config
    from satseg.model.sat import SAT
    from satseg.model.text import SATTokenizer, TextEncoder
    from satseg.training.checkpointing import model_config_from_dict

    variant = str(config["model"]["variant"])
    deep_supervision = bool(config["model"].get("deep_supervision", False))
    init = None if resumed is not None else options.init
    start = load_init(init, deep_supervision=deep_supervision) if init else None
    if start is not None and start.config.name != variant:
        raise InputError(f"--init {init} holds a SAT-{start.config.name} model but the config trains {variant}")
    if init and config["model"].get("architecture"):
        log.warning("--init keeps the architecture of the weights it loads; model.architecture (for fresh runs) "
                    "is not used")
    paired_text = start is not None and start.text_encoder is not None
    text_source = None if resumed is not None else _text_source(config, options, paired_text)

    if resumed is not None:
        model_config = model_config_from_dict(resumed["model_config"])
    elif start is not None:
        model_config = start.config
    else:
        model_config = with_architecture(get_config(variant), config["model"].get("architecture"))
    if text_source and Path(text_source).is_dir():
        model_config = replace(model_config, text=text_config_from_mpnet(text_source))
    if resumed is None:
        model_config = with_training_window(model_config, config["data"]["crop_size"])
    fixed = resumed is not None or bool(init)  # started weights keep the grid they were trained on
    model_config = with_model_grid(model_config, config["model"].get("spacing"), options.cache, fixed=fixed)
    sat = SAT(model_config, deep_supervision=deep_supervision)
    text = TextEncoder(model_config.text, query_dim=model_config.query_dim)

    if start is not None:
        load_strict(sat, start.model.state_dict(), start.files[0], f"SAT-{variant}", may_stay_fresh=(HEADS,))
        if text_source is None:
            load_strict(text, start.text_encoder.state_dict(), start.files[-1], "the SAT text encoder")
    if text_source and Path(text_source).is_dir():
        load_mpnet_folder(text, text_source)
    elif text_source and text_source != "random":
        load_text_checkpoint(text, text_source)
    if text_source == "random" or (text_source and Path(text_source).is_dir()):
        init_fresh_modality_embedding(text)
    block = config.get("text_encoder", {})
    freeze_text(text, int(block.get("open_bert_layer", 12)), bool(block.get("open_modality_embed", True)),
                bool(block.get("train_projection", False)))
    freeze_unused(sat)

    candidates = [options.tokenizer, text_source if text_source and Path(text_source).is_dir() else None,
                  start.tokenizer_dir if start is not None else None, (resumed or {}).get("tokenizer")]
    tokenizer_dir = next((Path(c) for c in candidates if c), None)
    if tokenizer_dir is None:
        raise InputError("no tokenizer: pass --tokenizer with the MPNet tokenizer folder")
    tokenizer = SATTokenizer(tokenizer_dir, max_tokens=model_config.text.max_tokens)
    return StartingModels(model_config, sat, text, tokenizer, tokenizer_dir)


def _text_source(config: dict, options: FitOptions, has_paired_text: bool) -> str | None:
    """None (take the init's paired text weights), ``"random"``, or an existing path."""
    source = options.text_init
    if source is None and has_paired_text:
        return None
    source = str(source or config.get("text_encoder", {}).get("init", "random"))
    if source == "random":
        return source
    if source == "mpnet":
        raise InputError("text_encoder.init is 'mpnet': pass --text-init with the MPNet folder "
                         "(e.g. all-mpnet-base-v2 or BioLORD-2023-C)")
    if not Path(source).exists():
        raise InputError(f"text initialisation {source} does not exist (an MPNet folder or a SAT text checkpoint)")
    return source


def text_config_from_mpnet(folder: str | Path):
    """TextConfig of an MPNet folder (its ``config.json``), e.g. all-mpnet-base-v2 or BioLORD-2023-C."""
    import json

    from satseg.errors import InputError
    from satseg.model.config import TextConfig

    path = Path(folder) / "config.json"
    if not path.is_file():
        raise InputError(f"{folder} is not an MPNet folder (no config.json)")
    cfg = json.loads(path.read_text())
    if cfg.get("model_type") != "mpnet":
        raise InputError(f"{folder} holds a {cfg.get('model_type')!r} model; the SAT text tower is MPNet")
    return TextConfig(vocab_size=cfg["vocab_size"], hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
                      heads=cfg["num_attention_heads"], intermediate=cfg["intermediate_size"],
                      max_positions=cfg["max_position_embeddings"],
                      relative_attention_buckets=cfg.get("relative_attention_num_buckets", 32),
                      layer_norm_eps=cfg.get("layer_norm_eps", 1e-5), pad_token_id=cfg.get("pad_token_id", 1))

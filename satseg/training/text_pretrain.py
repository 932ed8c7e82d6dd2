"""Stage-1a knowledge-enhanced text pretraining of the text tower (SAT_SPEC §7.6, SAT-Pretrain "textual").

Text–text contrastive learning on the *un-projected*, attention-masked mean-pooled MPNet features of a
concept text and its partner (definition, synonym or relation phrase; see :mod:`satseg.training.text_data`):

* both sides L2-normalised, logits = ``exp(t) · f1 · f2ᵀ`` with a learnable temperature ``t`` (init
  ``log(1/0.07)``, clamped to ``[0, ln 100]`` after every step);
* target matrix = identity, plus 1 wherever two rows share the same concept text, then L2-normalised per
  column (upstream's ``ClipLoss_no_gather``; the targets are not probability rows, kept as upstream has it);
* loss = mean of the cross-entropies of the logits and of their transpose against that target.

Only MPNet layers with index > ``open_layer`` and the pooler are trained (``open_layer`` 8 → layers 9–11 +
pooler, as upstream's ``open_bert_layer``); embeddings and the other layers stay frozen. The projection
layer and modality embedding do not enter this loss: they are written as initialised (projection weights
normal with std hidden^-0.5, as upstream initialises a fresh knowledge encoder; modality rows N(0, 0.02²), see
:func:`satseg.model.text.init_fresh_modality_embedding`, so that ``fit`` starts with distinct queries).

Output: ``RUN/text_encoder.pth`` in the released text-encoder layout (loadable by
:func:`satseg.model.checkpoint.load_text_checkpoint`, so ``satseg train fit --text-init`` can start from it),
``RUN/metrics.jsonl`` (one line per step) and ``RUN/text_run.json`` (settings, final temperature).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from satseg.errors import InputError
from satseg.training.text_data import KnowledgePool, TextPair, load_knowledge, tokenize_with_random_truncation

log = logging.getLogger(__name__)

MAX_LOGIT_SCALE = 100.0
INITIAL_TEMPERATURE = math.log(1 / 0.07)


@dataclass
class TextPretrainOptions:
    """Settings of one run (defaults: SAT-Pretrain's textual stage, except ``steps``/``warmup``: 100k / 10k there)."""

    steps: int = 1000
    batch: int = 128
    lr: float = 1e-5
    warmup: int = 100
    weight_decay: float = 0.0
    open_layer: int = 8
    max_tokens: int = 256
    truncate_p: float = 0.5
    seed: int = 0
    save_every: int = 0  # 0: only at the end
    device: str = "auto"


@dataclass
class TextPretrainResult:
    checkpoint: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    logit_scale: float = 0.0


# -- the loss ------------------------------------------------------------------------------------------


def target_matrix(concepts: list[str]) -> torch.Tensor:
    """(N, N) float: 1 on the diagonal and wherever ``concepts[i] == concepts[j]``, L2-normalised per column."""
    same = torch.tensor([[a == b for b in concepts] for a in concepts], dtype=torch.float32)
    return F.normalize(same, dim=0)


def clip_loss(features_a: torch.Tensor, features_b: torch.Tensor, concepts: list[str],
              logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss between paired rows.

    Args:
        features_a, features_b: (N, D) L2-normalised features of the pairs' two sides.
        concepts: N anchor texts; equal texts are positives of each other.
        logit_scale: scalar ``exp(t)``.
    Returns:
        scalar loss.
    """
    logits = logit_scale * features_a @ features_b.T
    target = target_matrix(concepts).to(logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


# -- which weights train -------------------------------------------------------------------------------


def open_layers(mpnet: nn.Module, open_layer: int) -> list[str]:
    """Freeze the MPNet tower except layers with index > ``open_layer`` and the pooler; the trainable names.

    The pooler opens when at least one layer does. ``open_layer = -1`` trains every layer (embeddings
    stay frozen); ``open_layer ≥ layers - 1`` freezes the whole tower.
    """
    n_layers = mpnet.config.num_hidden_layers
    if open_layer < -1:
        raise InputError(f"--open-layer must be ≥ -1 (got {open_layer})")
    trainable = []
    for name, param in mpnet.named_parameters():
        if name.startswith("encoder.layer."):
            param.requires_grad = int(name.split(".")[2]) > open_layer
        else:
            param.requires_grad = name.startswith("pooler.") and open_layer < n_layers - 1
        if param.requires_grad:
            trainable.append(name)
    return trainable


# -- initial weights -----------------------------------------------------------------------------------


def init_projection(encoder: nn.Module) -> None:
    hidden = encoder.config.hidden
    for layer in encoder.projection_layer:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=hidden ** -0.5)


# -- schedule and optimiser ----------------------------------------------------------------------------


def learning_rate(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total`` (step counts from 1)."""
    if warmup > 0 and step <= warmup:
        return base_lr * step / warmup
    span = max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / (span + 1))) * base_lr


def make_optimizer(named_params: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float):
    """AdamW; norms, biases, 1-D tensors and the temperature get no weight decay."""
    def no_decay(name: str, p: torch.Tensor) -> bool:
        return p.ndim < 2 or "norm" in name.lower() or "bias" in name or "temperature" in name

    groups = [{"params": [p for n, p in named_params if no_decay(n, p)], "weight_decay": 0.0},
              {"params": [p for n, p in named_params if not no_decay(n, p)], "weight_decay": weight_decay}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


# -- the run -------------------------------------------------------------------------------------------


def encode_pairs(encoder: nn.Module, tokenizer, pairs: list[TextPair], rng: random.Random, options: TextPretrainOptions,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs → L2-normalised mean-pooled features of (concepts, texts), each (N, hidden)."""
    features = []
    for texts in ([p.concept for p in pairs], [p.text for p in pairs]):
        ids, mask = tokenize_with_random_truncation(tokenizer, texts, rng, max_tokens=options.max_tokens,
                                                    truncate_p=options.truncate_p)
        features.append(F.normalize(encoder.pooled(ids.to(device), mask.to(device)), dim=-1))
    return features[0], features[1]


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu") for k, v in module.state_dict().items()}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(name)


def pretrain_text(knowledge: str | Path | KnowledgePool, tokenizer_dir: str | Path, out: str | Path, *,
                  variant: str = "nano", options: TextPretrainOptions | None = None,
                  init_text_checkpoint: str | Path | None = None) -> TextPretrainResult:
    """Run stage-1a text pretraining and write ``out/text_encoder.pth`` (see the module doc).

    The tower starts from the MPNet weights in ``tokenizer_dir`` (``model.safetensors``) when they fit the
    variant's text tower (nano / pro), from ``init_text_checkpoint`` when given, else from random weights
    (the ``tiny`` test variant).
    """
    from satseg.io.atomic import write_text_atomic
    from satseg.model.build import build_text_encoder
    from satseg.model.checkpoint import load_mpnet_folder, load_text_checkpoint, write_official_checkpoint
    from satseg.model.text import SATTokenizer, init_fresh_modality_embedding

    options = options or TextPretrainOptions()
    if options.steps < 1 or options.batch < 2:
        raise InputError("--steps must be ≥ 1 and --batch ≥ 2 (a contrastive batch needs negatives)")
    if options.open_layer < -1:
        raise InputError(f"--open-layer must be ≥ -1 (got {options.open_layer})")
    pool = knowledge if isinstance(knowledge, KnowledgePool) else load_knowledge(knowledge)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(options.seed)
    rng = random.Random(options.seed)
    device = _device(options.device)

    tokenizer = SATTokenizer(tokenizer_dir, max_tokens=options.max_tokens)
    encoder = build_text_encoder(variant)
    init_projection(encoder)
    init_fresh_modality_embedding(encoder)  # not trained here; N(0, 1) rows would swamp the text in every query
    if init_text_checkpoint is not None:
        load_text_checkpoint(encoder, init_text_checkpoint)
        start = f"text checkpoint {init_text_checkpoint}"
    elif variant == "tiny":
        start = "random weights (tiny variant)"
    else:
        load_mpnet_folder(encoder, tokenizer_dir)
        start = f"MPNet weights in {tokenizer_dir}"
    encoder.to(device).train()
    for param in encoder.parameters():
        param.requires_grad = False
    trainable = open_layers(encoder.mpnet, options.open_layer)
    temperature = nn.Parameter(torch.tensor(INITIAL_TEMPERATURE, device=device))
    named = [("mpnet." + n, p) for n, p in encoder.mpnet.named_parameters() if p.requires_grad]
    optimizer = make_optimizer(named + [("temperature", temperature)], options.lr, options.weight_decay)
    log.info("text pretraining from %s: %d facts, %d trainable tensors (%d parameters), %d steps of %d pairs on %s",
             start, len(pool), len(trainable), sum(p.numel() for _, p in named), options.steps, options.batch, device)

    settings = {"variant": variant, "knowledge_facts": len(pool), "start": start, **asdict(options)}
    checkpoint = out / "text_encoder.pth"
    losses: list[float] = []
    with open(out / "metrics.jsonl", "w", encoding="utf-8") as metrics:
        for step in range(1, options.steps + 1):
            began = time.perf_counter()
            lr = learning_rate(step, options.lr, options.warmup, options.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            pairs = pool.sample_batch(options.batch, rng)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                concepts, texts = encode_pairs(encoder, tokenizer, pairs, rng, options, device)
                loss = clip_loss(concepts.float(), texts.float(), [p.concept for p in pairs], temperature.exp())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                temperature.clamp_(0, math.log(MAX_LOGIT_SCALE))
            losses.append(loss.item())
            metrics.write(json.dumps({"step": step, "loss": losses[-1], "lr": lr,
                                      "logit_scale": temperature.exp().item(),
                                      "seconds": round(time.perf_counter() - began, 4)}) + "\n")
            metrics.flush()
            if step % max(options.steps // 20, 1) == 0:
                log.info("step %d/%d loss %.4f scale %.2f", step, options.steps, losses[-1], temperature.exp().item())
            if options.save_every and step % options.save_every == 0 and step < options.steps:
                write_official_checkpoint(_cpu_state(encoder), checkpoint, text=True, step=step)
    write_official_checkpoint(_cpu_state(encoder), checkpoint, text=True, step=options.steps)
    settings.update({"steps_done": options.steps, "final_loss": losses[-1], "logit_scale": temperature.exp().item()})
    write_text_atomic(out / "text_run.json", json.dumps(settings, indent=2, default=str) + "\n")
    return TextPretrainResult(checkpoint=checkpoint, steps=options.steps, losses=losses,
                              logit_scale=temperature.exp().item())

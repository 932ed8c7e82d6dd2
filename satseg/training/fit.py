"""``satseg train fit``: train SAT on a prepared cache, in one process or under ``torchrun`` (DDP).

One optimizer step = ``batch.accumulate`` micro-batches of ``batch.per_gpu`` patches on every rank.
Everything random comes from seeded generators whose state is checkpointed: the sampler's draws are a pure
function of ``(seed, rank, draw index)`` and the global python / numpy / torch generators (dropout, fresh
initialisation) are saved per rank, so a resumed run repeats an uninterrupted one step for step (bit for
bit on CPU; on GPUs up to non-deterministic kernels).

Run folder: ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one line per step: step, loss,
dice_loss, bce, lr, time, elapsed), ``checkpoints/`` (see :mod:`satseg.training.checkpointing`),
``tensorboard/`` (with ``--tensorboard``).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from satseg.errors import CheckpointError, InputError
from satseg.model.checkpoint import load_mpnet_folder
from satseg.model.text import init_fresh_modality_embedding
from satseg.training import checkpointing as ckpt
from satseg.training import distributed as dist
from satseg.training.loss import SegmentationLoss, embedding_floor_penalty
from satseg.training.optim import WarmupCosine, build_optimizer

log = logging.getLogger(__name__)

PAD_PROMPT = "none"  # upstream's text for padding prompts (masked out of the loss)


@dataclass
class FitOptions:
    """What the command line adds to a config.

    Attributes:
        cache: prepared cache folder (``satseg train prepare``).
        out: run folder.
        resume: continue from ``out/checkpoints/latest.pt`` when it exists.
        init: ``None``, a named model (``sat-nano``) or a checkpoint file to start the weights from.
        text_init: MPNet folder, SAT text checkpoint, or ``"random"`` (overrides ``text_encoder.init``).
        tokenizer: tokenizer folder (default: the MPNet folder or the named model's).
        stop_at: stop after this optimizer step (the schedule still spans ``schedule.steps``).
        device: ``auto``, ``cpu``, ``cuda``.
        tensorboard: override ``logging.tensorboard``.
        progress: show a rich progress bar (rank 0).
    """

    cache: Path
    out: Path
    resume: bool = False
    init: str | None = None
    text_init: str | None = None
    tokenizer: Path | None = None
    stop_at: int | None = None
    device: str = "auto"
    tensorboard: bool | None = None
    progress: bool = False


@dataclass
class FitResult:
    run_dir: Path
    step: int
    loss: float | None
    checkpoint: Path | None


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


# -- data ---------------------------------------------------------------------------------------------


class _Draws(torch.utils.data.Dataset):
    def __init__(self, sampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, index: int):
        return self.sampler.draw(index)


def collate(patches) -> dict:
    """Patches → image (B, 1, H, W, D), masks (B, N, H, W, D) float, terms [[N]], query_mask (B, N), modality."""
    n = max(1, max(len(p.terms) for p in patches))
    shape = patches[0].image.shape
    masks = torch.zeros((len(patches), n, *shape), dtype=torch.float32)
    query_mask = torch.zeros((len(patches), n), dtype=torch.float32)
    terms = []
    for i, p in enumerate(patches):
        k = len(p.terms)
        if k:
            masks[i, :k] = torch.from_numpy(np.ascontiguousarray(p.masks)).float()
        query_mask[i, :k] = 1.0
        terms.append(list(p.terms) + [PAD_PROMPT] * (n - k))
    image = torch.from_numpy(np.stack([p.image for p in patches]))[:, None]
    return {"image": image, "masks": masks, "terms": terms, "query_mask": query_mask,
            "modality": [p.modality for p in patches], "dataset": [p.dataset for p in patches]}


# -- the run ------------------------------------------------------------------------------------------


class Trainer:
    """Sets up models, data, optimizer and checkpoints for one process, then :meth:`run`."""

    def __init__(self, config: dict, options: FitOptions):
        self.options = options
        self.run_dir = Path(options.out)
        self.device = _pick_device(options.device)
        backend = config.get("distributed", {}).get("backend")
        self.dist = dist.init_from_env(self.device.type, backend if backend in ("gloo", "nccl") else None)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        existing = ckpt.latest_checkpoint(self.run_dir)
        if existing is not None and not options.resume:
            raise InputError(f"{self.run_dir} already holds a training run; pass --resume to continue it "
                             "or choose another --out")
        # held only while building: the payload carries a full copy of the weights and the optimizer state
        resumed = ckpt.load_checkpoint(existing) if existing is not None else None
        if resumed is not None and resumed["config"] != config:
            log.warning("resuming with the configuration saved in %s (the given --config differs)", existing)
            config = resumed["config"]
        self.config = config
        if self.dist.is_main:
            from satseg.io.atomic import write_text_atomic

            write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        built = build_everything(config, options, self.dist, resumed)
        self.model_config, self.sat, self.text = built.model_config, built.sat, built.text
        self.tokenizer, self.tokenizer_dir, self.sampler = built.tokenizer, built.tokenizer_dir, built.sampler
        self.module = SATWithText(self.sat, self.text).to(self.device)
        self.train_text_tower = any(p.requires_grad for p in self.text.mpnet.parameters())
        self.ddp = self.module
        if self.dist.enabled:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(trainable, config["optim"])
        schedule = config["schedule"]
        self.query_side_frozen_steps = int(schedule.get("freeze_query_side_steps", 0) or 0)
        self.query_side = [p for name, p in self.module.named_parameters()
                           if p.requires_grad and name.startswith(QUERY_SIDE)]
        self.total_steps = int(schedule["steps"])
        self.schedule = WarmupCosine(self.optimizer, float(config["optim"]["lr"]), int(schedule.get("warmup_steps", 0)),
                                     self.total_steps)
        precision = config.get("precision", {})
        self.amp_dtype = None
        if precision.get("amp") and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if str(precision.get("dtype")) == "bfloat16" else torch.float16
        elif precision.get("amp"):
            log.warning("AMP is for CUDA devices; training in float32 on %s", self.device.type)
        use_scaler = self.amp_dtype == torch.float16 and precision.get("grad_scaler", True)
        self.scaler = torch.amp.GradScaler("cuda", enabled=bool(use_scaler))
        loss = config["loss"]
        self.loss = SegmentationLoss(loss.get("dice_weight", 1.0), loss.get("bce_weight", 1.0),
                                     loss.get("dice_smooth", 1e-7), loss.get("deep_supervision_weights"))
        self.floor = float(loss.get("embedding_floor", -0.5))
        self.floor_weight = float(loss.get("embedding_floor_weight", 0.0) or 0.0)
        self._pre_activations: list[torch.Tensor] = []
        if self.floor_weight > 0:
            for head in [self.sat.mask_embed_proj, *getattr(self.sat, "mid_mask_embed_proj", [])]:
                last = [m for m in head if isinstance(m, nn.Linear)][-1]
                last.register_forward_hook(lambda _m, _i, out: self._pre_activations.append(out))
        batch = config["batch"]
        self.per_gpu, self.accumulate = int(batch.get("per_gpu", 1)), int(batch.get("accumulate", 1))
        self.step = 0
        self._pooled: dict[str, torch.Tensor] = {}
        if resumed is not None:
            self._restore(resumed)

    # -- checkpoints --------------------------------------------------------------------------------

    def _restore(self, payload: dict) -> None:
        self.module.sat.load_state_dict(payload["model"])
        self.module.text.load_state_dict(payload["text_encoder"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.schedule.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        self.step = int(payload["step"])
        states = payload["rng"]
        if len(states) == self.dist.world_size:
            ckpt.restore_rng(states[self.dist.rank])
        else:
            log.warning("checkpoint was written by %d ranks, now %d: random streams restart from the seed",
                        len(states), self.dist.world_size)
            _seed_everything(int(self.config.get("seed", 0)) + self.step, self.dist.rank)
        log.info("resumed from step %d", self.step)

    def save(self, keep: bool) -> Path | None:
        rng = dist.all_gather_object(ckpt.rng_state())
        path = None
        if self.dist.is_main:
            payload = {
                "format": ckpt.FORMAT, "variant": self.model_config.name, "config": self.config,
                "model_config": self.model_config.to_dict(), "step": self.step,
                "model": self.module.sat.state_dict(), "text_encoder": self.module.text.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.schedule.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng,
                "sampler": {"seed": self.sampler.seed, "world_size": self.dist.world_size,
                            "next_draw": self.step * self.accumulate * self.per_gpu},
                "tokenizer": str(self.tokenizer_dir) if self.tokenizer_dir else None,
            }
            path = ckpt.save_checkpoint(self.run_dir, payload, keep=keep)
        dist.barrier()
        return path

    # -- one step -----------------------------------------------------------------------------------

    def _text_inputs(self, terms: list[list[str]], modality: list[str]) -> dict:
        from satseg.model.text import modality_code

        flat = [t for row in terms for t in row]
        codes = torch.tensor([[modality_code(m)] * len(row) for m, row in zip(modality, terms)], device=self.device)
        if self.train_text_tower:
            ids, mask = self.tokenizer(flat)
            return {"codes": codes, "input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        missing = [t for t in dict.fromkeys(flat) if t not in self._pooled]
        if missing:  # frozen tower: each term's features are computed once
            was_training = self.text.mpnet.training
            self.text.mpnet.eval()
            with torch.no_grad():
                ids, mask = self.tokenizer(missing)
                pooled = self.text.pooled(ids.to(self.device), mask.to(self.device))
            self.text.mpnet.train(was_training)
            self._pooled.update(zip(missing, pooled))
        return {"codes": codes, "pooled": torch.stack([self._pooled[t] for t in flat])}

    def _micro_step(self, batch: dict, last: bool) -> tuple[float, float, float]:
        image = batch["image"].to(self.device, non_blocking=True).expand(-1, 3, -1, -1, -1)
        masks = batch["masks"].to(self.device, non_blocking=True)
        query_mask = batch["query_mask"].to(self.device)
        inputs = self._text_inputs(batch["terms"], batch["modality"])
        sync = contextlib.nullcontext() if (last or not self.dist.enabled) else self.ddp.no_sync()
        autocast = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype
                    else contextlib.nullcontext())
        self._pre_activations.clear()  # the mask-head hooks (embedding floor) fill it during this forward
        with sync:
            with autocast:
                logits = self.ddp(image, inputs.pop("codes"), **inputs)
            parts = self.loss(logits, masks, query_mask)
            total = parts.total
            if self.floor_weight > 0:
                total = total + self.floor_weight * embedding_floor_penalty(self._pre_activations, query_mask,
                                                                            self.floor)
            self.scaler.scale(total / self.accumulate).backward()
        return parts.total.item(), parts.dice.item(), parts.bce.item()

    def run(self) -> FitResult:
        cfg = self.config
        stop = min(self.total_steps, self.options.stop_at or self.total_steps)
        every = cfg.get("checkpoint", {})
        keep_every = int(every.get("every_steps", 0) or 0)
        latest_every = int(every.get("latest_every_steps", 0) or 0)
        log_every = int(cfg.get("logging", {}).get("every_steps", 10) or 10)
        workers = int(cfg["data"].get("num_workers", 0) or 0)
        start_draw = self.step * self.accumulate * self.per_gpu
        loader = torch.utils.data.DataLoader(
            _Draws(self.sampler), batch_size=self.per_gpu, sampler=itertools.count(start_draw),
            collate_fn=collate, num_workers=workers, generator=torch.Generator(),
            pin_memory=self.device.type == "cuda", persistent_workers=False)
        batches = iter(loader)
        metrics = _Metrics(self.run_dir, self.step, self.dist.is_main, self._tensorboard_enabled())
        self.ddp.train()
        last_loss, path = None, None
        began = time.perf_counter()
        with _progress(self.options.progress and self.dist.is_main, self.step, stop) as advance:
            while self.step < stop:
                tick = time.perf_counter()
                self.step += 1
                lr = self.schedule.set(self.step)
                sums = np.zeros(3)
                for micro in range(self.accumulate):
                    sums += self._micro_step(next(batches), micro == self.accumulate - 1)
                if self.step <= self.query_side_frozen_steps:
                    for param in self.query_side:  # no gradient: AdamW leaves it as it is (no decay either)
                        param.grad = None
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                on = self.device if self.dist.enabled else "cpu"  # NCCL reduces CUDA tensors only
                values = dist.all_reduce_mean(torch.tensor(sums / self.accumulate, dtype=torch.float64, device=on))
                last_loss = float(values[0])
                row = {"step": self.step, "loss": last_loss, "dice_loss": float(values[1]), "bce": float(values[2]),
                       "lr": lr, "time": time.perf_counter() - tick, "elapsed": time.perf_counter() - began}
                metrics.write(row, console=self.step % log_every == 0 or self.step == stop)
                advance(row)
                keep = keep_every > 0 and self.step % keep_every == 0
                if keep or (latest_every > 0 and self.step % latest_every == 0) or self.step == stop:
                    path = self.save(keep=keep)
        metrics.close()
        return FitResult(self.run_dir, self.step, last_loss, path or ckpt.latest_checkpoint(self.run_dir))

    def _tensorboard_enabled(self) -> bool:
        wanted = self.options.tensorboard
        if wanted is None:
            wanted = bool(self.config.get("logging", {}).get("tensorboard", False))
        return wanted


class _Metrics:
    """``metrics.jsonl`` (rank 0), trimmed to the resumed step, plus console and optional TensorBoard."""

    def __init__(self, run_dir: Path, step: int, active: bool, tensorboard: bool):
        self.active = active
        self.writer = None
        if not active:
            return
        self.path = run_dir / "metrics.jsonl"
        if self.path.is_file():  # a killed run may have logged steps past its last checkpoint
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and _step_of(line) is not None and _step_of(line) <= step]
            self.path.write_text("".join(line + "\n" for line in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise InputError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step + 1)

    def write(self, row: dict, console: bool) -> None:
        if not self.active:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if console:
            log.info("step %d  loss %.4f  dice %.4f  bce %.4f  lr %.3g  %.2fs/step", row["step"], row["loss"],
                     row["dice_loss"], row["bce"], row["lr"], row["time"])
        if self.writer is not None:
            for key in ("loss", "dice_loss", "bce", "lr"):
                self.writer.add_scalar(f"train/{key}", row[key], row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _progress(show: bool, start: int, stop: int):
    if not show:
        yield lambda row: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("fit"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                  TimeRemainingColumn()) as bar:
        task = bar.add_task("fit", total=stop, completed=start, status="")
        yield lambda row: bar.update(task, advance=1, status=f"loss {row['loss']:.4f} lr {row['lr']:.2e}")


def _pick_device(requested: str) -> torch.device:
    from satseg.inference.predictor import pick_device

    device = pick_device(requested)
    if device.type == "mps":
        log.warning("training on MPS is untested; use --device cpu if it fails")
    return device


def _seed_everything(seed: int, rank: int = 0) -> None:
    import random

    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2 ** 32)
    torch.manual_seed(seed + rank)


def fit(config: dict, options: FitOptions) -> FitResult:
    """Train (or resume) one run; call in every process of a ``torchrun`` launch."""
    try:
        return Trainer(copy.deepcopy(config), options).run()
    finally:
        dist.cleanup()


# -- configuration ----------------------------------------------------------------------------------------

REQUIRED = {"model": ("variant",), "data": ("crop_size", "max_queries"), "optim": ("lr",), "schedule": ("steps",),
            "batch": (), "loss": ()}


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """Read a training YAML (train/configs/*.yaml) and apply ``section.key=value`` overrides (values in YAML)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise InputError(f"config {path} must be a mapping of sections")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r}: use SECTION.KEY=VALUE, e.g. schedule.steps=50")
        node = config
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {item!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(value)
    for section, keys in REQUIRED.items():
        if not isinstance(config.get(section), dict):
            raise InputError(f"config {path}: section {section!r} is missing")
        for key in keys:
            if key not in config[section]:
                raise InputError(f"config {path}: {section}.{key} is missing")
    crop = config["data"]["crop_size"]
    if not (isinstance(crop, list) and len(crop) == 3 and all(isinstance(c, int) and c > 0 and c % 32 == 0
                                                               for c in crop)):
        raise InputError(f"data.crop_size {crop!r}: three positive multiples of 32 (the U-Net halves 5 times)")
    return config


# -- building the models, the tokenizer and the sampler ----------------------------------------------------


@dataclass
class _Built:
    model_config: object
    sat: nn.Module
    text: nn.Module
    tokenizer: object
    tokenizer_dir: Path | None
    sampler: object


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


def build_everything(config: dict, options: FitOptions, info, resumed: dict | None) -> _Built:
    from satseg.model.checkpoint import (
        _state_dict_of,
        load_text_checkpoint,
        map_segmentation_state,
        safe_load,
    )
    from satseg.model.config import get_config
    from satseg.model.sat import SAT
    from satseg.model.text import SATTokenizer, TextEncoder

    seed = int(config.get("seed", 0))
    _seed_everything(seed)  # the same fresh initialisation on every rank
    variant = str(config["model"]["variant"])
    released = init_payload = official = None
    init = None if resumed is not None else options.init
    if init:
        if Path(init).is_file():
            try:
                init_payload = ckpt.load_checkpoint(init)
            except CheckpointError:  # not ours: a released (official-layout) segmentation file
                official = Path(init)
        else:
            from satseg import weights

            released = weights.resolve_model(init)
            if released.variant != variant:
                raise InputError(f"--init {init} is SAT-{released.variant} but the config trains {variant}")
    if init and config["model"].get("architecture"):
        log.warning("--init keeps the architecture of the weights it loads; model.architecture (for fresh runs) "
                    "is not used")
    if init_payload is not None and init_payload["variant"] != variant:
        raise InputError(f"--init {init} holds a {init_payload['variant']} model but the config trains {variant}")
    text_source = None if resumed is not None else _text_source(config, options, bool(released or init_payload))

    if resumed is not None:
        model_config = ckpt.model_config_from_dict(resumed["model_config"])
    elif init_payload is not None:
        model_config = ckpt.model_config_from_dict(init_payload["model_config"])
    else:
        model_config = with_architecture(get_config(variant), None if init else config["model"].get("architecture"))
    if text_source and Path(text_source).is_dir():
        model_config = replace(model_config, text=ckpt.text_config_from_mpnet(text_source))
    if resumed is None:
        model_config = with_training_window(model_config, config["data"]["crop_size"])
    fixed = resumed is not None or bool(init)  # started weights keep the grid they were trained on
    model_config = with_model_grid(model_config, config["model"].get("spacing"), options.cache, fixed=fixed)
    sat = SAT(model_config, deep_supervision=bool(config["model"].get("deep_supervision", False)))
    text = TextEncoder(model_config.text, query_dim=model_config.query_dim)

    if released is not None:
        ckpt.load_released(sat, text if text_source is None else None, released)
    elif init_payload is not None:
        ckpt.load_segmentation_state(sat, init_payload["model"], str(init))
        if text_source is None:
            text.load_state_dict(init_payload["text_encoder"], strict=True)
    elif official is not None:
        state = map_segmentation_state(_state_dict_of(safe_load(official), official), keep_deep_supervision=True,
                                       path=official)
        ckpt.load_segmentation_state(sat, state, str(official))
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
                  released.tokenizer if released is not None else None,
                  (init_payload or {}).get("tokenizer"), (resumed or {}).get("tokenizer")]
    tokenizer_dir = next((Path(c) for c in candidates if c), None)
    if tokenizer_dir is None:
        raise InputError("no tokenizer: pass --tokenizer with the MPNet tokenizer folder")
    tokenizer = SATTokenizer(tokenizer_dir, max_tokens=model_config.text.max_tokens)
    sampler = _build_sampler(config, options.cache, seed, info.rank)
    _seed_everything(seed, info.rank)  # dropout streams differ between ranks
    return _Built(model_config, sat, text, tokenizer, tokenizer_dir, sampler)


# Numbers of the segmentation model a fresh run may change (``model.architecture``); the code stays the same.
ARCHITECTURE_KEYS = ("features", "encoder_convs", "decoder_convs", "projection_hidden", "mask_hidden",
                     "mid_mask_hidden", "query_dim", "decoder_layers", "decoder_heads", "decoder_ffn")


def with_architecture(model_config, overrides):
    """The variant's preset with ``model.architecture`` applied (fresh runs only: a started model keeps its own)."""
    if not overrides:
        return model_config
    if not isinstance(overrides, dict):
        raise InputError(f"model.architecture must map names to numbers ({', '.join(ARCHITECTURE_KEYS)})")
    unknown = sorted(set(overrides) - set(ARCHITECTURE_KEYS))
    if unknown:
        raise InputError(f"model.architecture: unknown {', '.join(unknown)}; known: {', '.join(ARCHITECTURE_KEYS)}")
    values = {}
    for key, value in overrides.items():
        if isinstance(value, list):
            value = tuple(value)
        default = getattr(model_config, key)
        shape_ok = (isinstance(value, tuple) and len(value) == len(default)) if isinstance(default, tuple) \
            else isinstance(value, int)
        numbers = value if isinstance(value, tuple) else (value,)
        if not shape_ok or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in numbers):
            raise InputError(f"model.architecture.{key} {overrides[key]!r}: "
                             + (f"{len(default)} positive integers" if isinstance(default, tuple)
                                else "a positive integer"))
        values[key] = value
    config = replace(model_config, **values)
    if config.query_dim % config.decoder_heads:
        raise InputError(f"model.architecture: query_dim {config.query_dim} is not divisible by decoder_heads "
                         f"{config.decoder_heads}")
    return config


def with_model_grid(model_config, wanted, cache: Path, *, fixed: bool):
    """The model's voxel size: ``model.spacing`` from the config, else the init's (``fixed``), else the cache's.
    The cache must have been prepared on that grid (``satseg train prepare --spacing``)."""
    from satseg.training.cache import cache_spacing, mm_text, require_grid, same_grid

    if wanted is not None:
        given = wanted
        try:
            wanted = tuple(float(v) for v in given)
        except (TypeError, ValueError):
            wanted = ()
        if len(wanted) != 3 or any(not v > 0 for v in wanted):
            raise InputError(f"model.spacing {given!r}: three positive voxel sizes in mm, e.g. [1.0, 1.0, 3.0]")
        if fixed and not same_grid(wanted, model_config.spacing):
            raise InputError(f"model.spacing {mm_text(wanted)}: the weights this run starts from work on a "
                             f"{mm_text(model_config.spacing)} grid")
    target = wanted if wanted is not None else (tuple(model_config.spacing) if fixed else cache_spacing(cache))
    require_grid(cache, target)
    return replace(model_config, spacing=tuple(target))


def with_training_window(model_config, crop_size: Sequence[int]):
    """The model's inference window is its training crop, at a stride of half a window (SAT's rule: 288×288×96
    crops, 288×288×96 windows), so exported weights segment with the windows they were trained on."""
    window = tuple(int(c) for c in crop_size)
    return replace(model_config, window=window, stride=tuple(c // 2 for c in window))


def _build_sampler(config: dict, cache: Path, seed: int, rank: int):
    from satseg.training.augment import Augmenter
    from satseg.training.cache import open_cache
    from satseg.training.sampler import SamplerSettings, SATSampler

    data = config["data"]
    wanted = data.get("datasets", "all")
    datasets = None if wanted in (None, "all") else list(wanted)
    samples = open_cache(cache, split="train", datasets=datasets)
    if not samples:
        present = sorted({s.dataset for s in open_cache(cache)})
        raise InputError(f"{cache} has no training scans of {wanted}; it holds: {', '.join(present) or 'nothing'}")
    defaults = SamplerSettings.from_mapping(config.get("sampler", {}))
    manifest = _manifest(data.get("manifest"))
    settings = {}
    for name in {s.dataset for s in samples}:
        entry = manifest.get(name)
        settings[name] = SamplerSettings.from_mapping(entry.sampler, defaults) if entry is not None else defaults
    augment = Augmenter(config.get("augmentation"))
    return SATSampler(samples, settings, data["crop_size"], int(data["max_queries"]),
                      allow_repeat=bool(data.get("allow_repeat", True)), seed=seed, rank=rank,
                      augment=augment if augment else None)


def _manifest(where) -> dict:
    """Dataset name → manifest entry (for its sampler block); empty when no manifest is readable."""
    from satseg.training.manifest import DEFAULT_DIR, load_manifest

    path = Path(where) if where else DEFAULT_DIR
    if not path.exists() and where and Path(where).parts[:1] == ("train",):
        path = DEFAULT_DIR.parents[1] / where
    try:
        manifest = load_manifest(path)
    except Exception as exc:  # a custom cache may come without a manifest: config defaults apply
        log.warning("no dataset manifest at %s (%s): using the config's sampler settings", path, exc)
        return {}
    return {entry.name: entry for entry in manifest}

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
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from satseg.errors import InputError
from satseg.model.checkpoint import load_strict
from satseg.training import checkpointing as ckpt
from satseg.training import distributed as dist
from satseg.training.fit_config import FitOptions, load_config
from satseg.training.fit_data import build_sampler, loader
from satseg.training.fit_log import MetricsLog, progress
from satseg.training.loss import SegmentationLoss, embedding_floor_penalty
from satseg.training.optim import WarmupCosine, build_optimizer
from satseg.training.starting_weights import QUERY_SIDE, SATWithText, StartingModels, build_models

log = logging.getLogger(__name__)

__all__ = ["FitOptions", "FitResult", "Trainer", "build_everything", "fit", "load_config"]


@dataclass
class FitResult:
    run_dir: Path
    step: int
    loss: float | None
    checkpoint: Path | None


@dataclass
class _Built(StartingModels):
    sampler: object = None


def build_everything(config: dict, options: FitOptions, info, resumed: dict | None) -> _Built:
    """The run's models with their starting weights (:func:`~satseg.training.starting_weights.build_models`) and
    this rank's sampler, seeded: the same fresh initialisation on every rank, different dropout streams."""
    seed = int(config.get("seed", 0))
    _seed_everything(seed)
    models = build_models(config, options, resumed)
    sampler = build_sampler(config, options.cache, seed, info.rank)
    _seed_everything(seed, info.rank)
    return _Built(**vars(models), sampler=sampler)


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
        source = ckpt.checkpoint_dir(self.run_dir) / ckpt.LATEST
        load_strict(self.module.sat, payload["model"], source, f"SAT-{self.model_config.name}")
        load_strict(self.module.text, payload["text_encoder"], source, "the SAT text encoder")
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
        batches = loader(self.sampler, start_draw, self.per_gpu, workers, self.device)
        metrics = MetricsLog(self.run_dir, self.step, self.dist.is_main, self._tensorboard_enabled())
        self.ddp.train()
        last_loss, path = None, None
        began = time.perf_counter()
        with progress(self.options.progress and self.dist.is_main, self.step, stop) as advance:
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

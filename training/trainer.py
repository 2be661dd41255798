"""Iteration-based trainer shared by every method (ce, locate, selectivecl, looptrans).

The optimisation recipe is the one of LOCATE, SelectiveCL and LoopTrans: SGD with Nesterov
momentum 0.9, weight decay 5e-4 and base learning rate 1e-3 on the model's own parameter
groups (x1 weights, x2 biases, x10/x20 for the token MLP and classifier). The budget is a
number of steps; the learning rate is constant unless ``train.lr_milestones`` lists fractions
of the budget at which it is multiplied by ``train.lr_gamma``.

Files written in the run directory:

* ``last.pt``: full training state (heads, optimizer, step, RNG states, config), every
  ``save_every`` steps and at the end, written atomically; ``--resume`` continues from it;
* ``model.pt``: the final model (what ``affordance-eval`` / ``affordance-predict`` load);
* ``best.pt``: only with ``select_on_test``, the step with the lowest test KLD;
* ``log.jsonl``: one JSON record per line: ``{"step", "lr", "loss", <terms>, "skipped"}``
  every ``log_every`` steps, ``{"event": "checkpoint", ...}`` and ``{"event": "eval", ...}``;
* ``tb/``: TensorBoard scalars of every loss term and statistic.

Under ``torchrun`` (``WORLD_SIZE`` > 1, see :mod:`training.distributed`) the method module is
wrapped in ``DistributedDataParallel``, its BatchNorm layers normalise over the global batch,
each process reads its share of every global batch, and only rank 0 writes files, logs and
shows the progress bar; logged terms are means over the ranks. ``train.amp`` turns on
automatic mixed precision on CUDA (``true``/``bf16``: bfloat16 autocast; ``fp16``: float16
autocast with a gradient scaler); it is ignored on other devices.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import cv2
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from affordance_core.checkpoint import save_model
from training import distributed
from training.common import get_rng_state, resolve_num_workers, set_rng_state

__all__ = ["Trainer", "move_to_device"]

logger = logging.getLogger(__name__)

CHECKPOINT_KIND = "affordance-train-state"


def move_to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Moves the tensors of a collated batch to ``device``; other values are kept as they are."""
    non_blocking = device.type == "cuda"
    return {
        k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
        for k, v in batch.items()
    }


def _worker_init(_: int) -> None:
    # One thread per loader process: the workers already run in parallel.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _scalar(value: Any) -> torch.Tensor | None:
    if torch.is_tensor(value) and value.numel() == 1:
        return value.detach().float().reshape(())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value))
    return None


def resolve_amp(value: Any, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``train.amp`` on ``device`` (None: full precision).

    Args:
        value: false/None/"off", true/"auto" (bfloat16 where supported, else float16),
            "bf16"/"bfloat16" or "fp16"/"float16".
        device: training device; autocast is used on CUDA only.

    Raises:
        ValueError: on any other value.
    """
    text = str(value).strip().lower() if value is not None else "false"
    if text in ("false", "off", "none", "no", "0"):
        return None
    if text not in ("true", "auto", "on", "yes", "1", "bf16", "bfloat16", "fp16", "float16"):
        raise ValueError(f"train.amp must be false, true, bf16 or fp16, got {value!r}")
    if device.type != "cuda":
        logger.warning(
            "train.amp=%s ignored: mixed precision is only used on CUDA (device %s)", value, device
        )
        return None
    if text in ("fp16", "float16"):
        return torch.float16
    if text in ("bf16", "bfloat16") or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


class Trainer:
    """Runs, logs, checkpoints and resumes the optimisation of one method.

    Args:
        config: the resolved nested config (sections ``model``, ``method``, ``data``,
            ``train``; see ``training/configs/default.yaml``).
        run_dir: output directory (created if needed).
        model: the :class:`~affordance_core.model.AffordanceModel`, already on ``device``.
        method: the training method module from ``build_method``; ``method(batch, progress)``
            returns a dict with a scalar ``loss`` and further scalar terms to log.
        train_dataset: training items (``ego``, ``exo``, ``label``, ``skipped``).
        device: where the batches go.
        eval_dataset: test items; used only when ``train.select_on_test`` is set.
        progress: show a tqdm progress bar (rank 0 only under torchrun).

    Raises:
        ValueError: on settings out of range, or a global batch that the number of processes
            does not divide.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        run_dir: str | os.PathLike,
        model: nn.Module,
        method: nn.Module,
        train_dataset: Dataset,
        device: torch.device,
        eval_dataset: Dataset | None = None,
        progress: bool = True,
    ) -> None:
        self.config = dict(config)
        self.train_cfg = dict(config["train"])
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.method = method
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.device = device
        self.progress = progress

        self.iters = int(self.train_cfg["iters"])
        self.batch_size = int(self.train_cfg["batch_size"])
        if self.iters < 1 or self.batch_size < 1:
            raise ValueError(
                f"train.iters and train.batch_size must be >= 1, got {self.iters} "
                f"and {self.batch_size}"
            )
        if len(train_dataset) == 0:
            raise ValueError("the training set is empty; check --data-root and --split")
        self.milestones = sorted(float(m) for m in self.train_cfg.get("lr_milestones") or [])
        if any(not 0.0 < m < 1.0 for m in self.milestones):
            raise ValueError(
                f"train.lr_milestones are fractions of the budget in (0, 1), got {self.milestones}"
            )
        if self.train_cfg.get("select_on_test") and eval_dataset is None:
            raise ValueError("train.select_on_test needs the split's testset/ with GT maps")
        self.dist = distributed.current()
        self.is_main = self.dist.is_main
        world = self.dist.world_size
        if self.batch_size % world:
            raise ValueError(
                f"train.batch_size {self.batch_size} (the global batch) must be "
                f"divisible by the {world} processes"
            )
        if world > 1 and len(train_dataset) < self.batch_size:
            raise ValueError(
                f"the training set has {len(train_dataset)} items, fewer than one "
                f"global batch of {self.batch_size}; lower --batch-size"
            )
        self.local_batch_size = self.batch_size // world
        if world > 1:
            distributed.convert_batchnorm(model, device)

        base_lr = float(self.train_cfg["lr"])
        groups = model.param_groups(base_lr)
        extra = self._method_only_parameters()
        if extra:
            groups.append({"params": extra, "lr": base_lr, "lr_mult": 1.0, "name": "method"})
        for group in groups:
            group.setdefault("lr_mult", float(group["lr"]) / base_lr)
        self.base_lr = base_lr
        self.optimizer = torch.optim.SGD(
            groups,
            lr=base_lr,
            momentum=float(self.train_cfg["momentum"]),
            nesterov=bool(self.train_cfg["nesterov"]),
            weight_decay=float(self.train_cfg["weight_decay"]),
        )

        self.step = 0
        self.skipped = 0
        self.best: dict[str, Any] | None = None
        self.last_loss = float("nan")
        self._writer = None
        self._log_file = None
        self.amp_dtype = resolve_amp(self.train_cfg.get("amp", False), device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self._forward: nn.Module = self._wrap_ddp() if world > 1 else method

    def _wrap_ddp(self) -> DistributedDataParallel:
        """DDP over the method module; the frozen backbones are neither broadcast nor reduced."""
        frozen = [name for name, p in self.method.named_parameters() if not p.requires_grad]
        frozen_modules = {name.rsplit(".", 1)[0] for name in frozen}
        frozen += [
            name
            for name, _ in self.method.named_buffers()
            if name.rsplit(".", 1)[0] in frozen_modules
        ]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.method, frozen)
        cuda = self.device.type == "cuda"
        # Some heads or terms are unused by some methods or before the warm-up ends; the
        # BatchNorm statistics are already global, so buffers need no broadcast.
        return DistributedDataParallel(
            self.method,
            device_ids=[self.device.index] if cuda else None,
            output_device=self.device.index if cuda else None,
            find_unused_parameters=True,
            broadcast_buffers=False,
        )

    # ------------------------------------------------------------------ set-up helpers
    def _model_prefixes(self) -> list[str]:
        return [f"{name}." for name, child in self.method.named_children() if child is self.model]

    def _method_only_parameters(self) -> list[nn.Parameter]:
        own = {id(p) for p in self.model.parameters()}
        return [p for p in self.method.parameters() if p.requires_grad and id(p) not in own]

    def method_state_dict(self) -> dict[str, torch.Tensor]:
        """State of the method module that the model does not already hold (may be empty)."""
        prefixes = tuple(self._model_prefixes())
        return {
            k: v
            for k, v in self.method.state_dict().items()
            if not (prefixes and k.startswith(prefixes))
        }

    def _method_generator_state(self) -> torch.Tensor | None:
        generator = getattr(self.method, "generator", None)
        return generator.get_state() if isinstance(generator, torch.Generator) else None

    def lr_factor(self, step: int) -> float:
        """Multiplier of the base learning rate at ``step`` (0-based, before the update)."""
        passed = sum(1 for m in self.milestones if step >= round(m * self.iters))
        return float(self.train_cfg.get("lr_gamma", 0.1)) ** passed

    def _apply_lr(self) -> float:
        factor = self.lr_factor(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * float(group["lr_mult"]) * factor
        return self.base_lr * factor

    def _loader(self) -> DataLoader:
        workers = resolve_num_workers(self.config["data"].get("num_workers"), self.device)
        generator = torch.Generator()
        # A fresh shuffle order per (seed, start step): a resumed run does not replay batches.
        generator.manual_seed(int(self.train_cfg["seed"]) * 1_000_003 + self.step)
        if self.dist.enabled:
            # The global batches a single process would draw (same sampler and generator use),
            # each process keeping items rank, rank + W, ...
            global_batches = BatchSampler(
                RandomSampler(self.train_dataset, generator=generator),
                self.batch_size,
                drop_last=True,
            )
            return DataLoader(
                self.train_dataset,
                num_workers=workers,
                batch_sampler=distributed.ShardedBatchSampler(
                    global_batches, self.dist.world_size, self.dist.rank
                ),
                pin_memory=self.device.type == "cuda",
                generator=generator,
                persistent_workers=workers > 0,
                worker_init_fn=_worker_init if workers else None,
            )
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=len(self.train_dataset) >= self.batch_size,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            generator=generator,
            persistent_workers=workers > 0,
            worker_init_fn=_worker_init if workers else None,
        )

    def _batches(self) -> Iterator[dict[str, Any]]:
        loader = self._loader()
        while True:
            yield from loader

    # ------------------------------------------------------------------ logging
    def _open_logs(self) -> None:
        if not self.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=self.step + 1)
        self._log_file = open(self.run_dir / "log.jsonl", "a", encoding="utf-8")

    def _close_logs(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def log_record(self, record: Mapping[str, Any]) -> None:
        """Appends one JSON line to ``log.jsonl`` (flushed at once)."""
        if self._log_file is None:
            return
        self._log_file.write(json.dumps(dict(record), allow_nan=True) + "\n")
        self._log_file.flush()

    def _scalars(self, prefix: str, values: Mapping[str, float], step: int) -> None:
        if self._writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(f"{prefix}/{key}", value, step)

    # ------------------------------------------------------------------ checkpoints
    def training_state(self) -> dict[str, Any]:
        """What ``last.pt`` holds besides the model (see :meth:`load_training_state`)."""
        return {
            "kind": CHECKPOINT_KIND,
            "step": self.step,
            "iters": self.iters,
            "optimizer": self.optimizer.state_dict(),
            "method_state": self.method_state_dict(),
            "rng": get_rng_state(),
            "method_rng": self._method_generator_state(),
            "skipped": self.skipped,
            "best": self.best,
            "train_config": self.config,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }

    def save_last(self) -> Path:
        """Writes ``last.pt`` atomically and records the event in ``log.jsonl`` (rank 0)."""
        path = self.run_dir / "last.pt"
        if not self.is_main:
            return path
        save_model(path, self.model, extra={"training": self.training_state()})
        self.log_record({"event": "checkpoint", "step": self.step, "file": path.name})
        return path

    def save_final(self) -> Path:
        """Writes ``model.pt``: the model of the current step, without optimizer state (rank 0)."""
        path = self.run_dir / "model.pt"
        if not self.is_main:
            return path
        save_model(path, self.model, extra={"step": self.step, "train_config": self.config})
        return path

    def save_snapshot(self) -> Path:
        """Writes ``snapshot_<step>.pt``: the model of the current step (a candidate training
        budget for the validation choice), atomically (rank 0)."""
        path = self.run_dir / f"snapshot_{self.step:06d}.pt"
        if self.is_main:
            save_model(path, self.model, extra={"step": self.step, "train_config": self.config})
            self.log_record({"event": "snapshot", "step": self.step, "file": path.name})
        return path

    def load_training_state(self, state: Mapping[str, Any], source: str | os.PathLike) -> None:
        """Restores the optimizer, step, RNG and method state saved by :meth:`training_state`.

        The model's heads must already be loaded (``load_model`` does it).

        Raises:
            ValueError: if ``state`` is not a training state or does not fit this run.
        """
        if not isinstance(state, Mapping) or state.get("kind") != CHECKPOINT_KIND:
            raise ValueError(
                f"{source} holds no training state (optimizer, step); resume from "
                f"a last.pt written by affordance-train"
            )
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise ValueError(
                f"optimizer state in {source} does not fit this model ({exc}); "
                f"resume with the same --model and --method"
            ) from None
        method_state = state.get("method_state") or {}
        if method_state:
            prefixes = tuple(self._model_prefixes())
            own = {
                k for k in self.method.state_dict() if not (prefixes and k.startswith(prefixes))
            }
            if set(method_state) != own:
                raise ValueError(
                    f"method state in {source} does not match --method "
                    f"{self.config['method']['name']}: saved "
                    f"{sorted(method_state)[:3]}, expected {sorted(own)[:3]}"
                )
            self.method.load_state_dict(method_state, strict=False)
        self.step = int(state["step"])
        self.skipped = int(state.get("skipped", 0))
        self.best = state.get("best")
        set_rng_state(state.get("rng") or {})
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        generator = getattr(self.method, "generator", None)
        if isinstance(generator, torch.Generator) and state.get("method_rng") is not None:
            generator.set_state(state["method_rng"])

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, Any]:
        """Evaluates the current model on the test split (``select_on_test`` only).

        Under torchrun only rank 0 evaluates (the others wait); they return ``{}``.
        """
        if not self.is_main:
            distributed.barrier()
            return {}
        try:
            return self._evaluate()
        finally:
            distributed.barrier()

    def _evaluate(self) -> dict[str, Any]:
        from training.evaluate import evaluate_model

        assert self.eval_dataset is not None
        self.model.eval()
        try:
            result = evaluate_model(
                self.model,
                self.eval_dataset,
                device=self.device,
                batch_size=int(self.train_cfg.get("eval_batch_size", 16)),
                num_workers=resolve_num_workers(
                    self.config["data"].get("num_workers"), self.device
                ),
                progress=False,
            )
        finally:
            self.model.train()
        metrics = {k: result[k] for k in ("KLD", "SIM", "NSS", "n")}
        self._scalars("test", metrics, self.step)
        self.log_record({"event": "eval", "step": self.step, **metrics})
        if self.best is None or metrics["KLD"] < self.best["KLD"]:
            self.best = {"step": self.step, **metrics}
            save_model(
                self.run_dir / "best.pt",
                self.model,
                extra={
                    "step": self.step,
                    "train_config": self.config,
                    "selected_on": "test",
                    "metrics": metrics,
                },
            )
            logger.info("step %d: test KLD %.4f, new best (best.pt)", self.step, metrics["KLD"])
        else:
            logger.info(
                "step %d: test KLD %.4f (best %.4f at step %d)",
                self.step,
                metrics["KLD"],
                self.best["KLD"],
                self.best["step"],
            )
        return metrics

    # ------------------------------------------------------------------ loop
    def train_step(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """One optimisation step on a collated batch; returns the detached scalar terms."""
        batch = move_to_device(batch, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None
        ):
            out = self._forward(batch, min(1.0, self.step / self.iters))
        loss = out["loss"]
        if not torch.is_tensor(loss) or loss.numel() != 1:
            raise RuntimeError("the method must return a scalar tensor under 'loss'")
        if loss.requires_grad:
            self.scaler.scale(loss.float()).backward()
            max_norm = self.train_cfg.get("max_grad_norm")
            if max_norm:
                self.scaler.unscale_(self.optimizer)
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, float(max_norm))
            self.scaler.step(self.optimizer)
            self.scaler.update()
        terms = {}
        for key, value in out.items():
            scalar = _scalar(value)
            if scalar is not None:
                terms[key] = scalar
        return terms

    def _loop(
        self, bar: tqdm, log_every: int, save_every: int, eval_every: int, select: bool
    ) -> Path:
        """The optimisation loop of :meth:`fit`; returns the path of ``model.pt``."""
        batches = self._batches()
        snapshots = {int(s) for s in self.train_cfg.get("snapshots") or ()}
        sums: dict[str, torch.Tensor] = {}
        count = 0
        synced_skipped = self.skipped
        while self.step < self.iters:
            lr = self._apply_lr()
            batch = next(batches)
            if "skipped" in batch:
                self.skipped += int(torch.as_tensor(batch["skipped"]).sum())
            terms = self.train_step(batch)
            self.step += 1
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            count += 1
            bar.update(1)
            if self.step % log_every == 0 or self.step == self.iters:
                if self.dist.enabled:
                    # Means over the ranks; corrupt-file counts are summed.
                    pending = torch.tensor(float(self.skipped - synced_skipped))
                    reduced = distributed.all_reduce_mean(
                        {**sums, "__skipped__": pending}, self._collective_device()
                    )
                    self.skipped = synced_skipped + round(
                        float(reduced.pop("__skipped__")) * self.dist.world_size
                    )
                    synced_skipped = self.skipped
                    sums = reduced
                means = {k: float(v) / count for k, v in sums.items()}
                if not math.isfinite(means.get("loss", 0.0)):
                    raise RuntimeError(
                        f"the loss became {means['loss']} before step "
                        f"{self.step}; lower --lr or check the data"
                    )
                self.last_loss = means.get("loss", float("nan"))
                record = {"step": self.step, "lr": lr, **means, "skipped": self.skipped}
                self.log_record(record)
                self._scalars("train", {**means, "lr": lr, "skipped": self.skipped}, self.step)
                bar.set_postfix(loss=f"{self.last_loss:.4f}", skipped=self.skipped)
                if not self.progress:
                    logger.info(
                        "step %d/%d loss %.4f lr %.2e skipped %d",
                        self.step,
                        self.iters,
                        self.last_loss,
                        lr,
                        self.skipped,
                    )
                sums, count = {}, 0
            if self.step in snapshots and self.step < self.iters:
                self.save_snapshot()
            if save_every and self.step % save_every == 0 and self.step < self.iters:
                self.save_last()
            if select and eval_every and self.step % eval_every == 0 and self.step < self.iters:
                self.evaluate()
        if select:
            self.evaluate()
        self.save_last()
        return self.save_final()

    def _collective_device(self) -> torch.device:
        return self.device if self.dist.backend == "nccl" else torch.device("cpu")

    def fit(self) -> dict[str, Any]:
        """Trains from the current step to ``train.iters``.

        Returns:
            Summary: ``{"step", "loss", "skipped", "seconds", "model", "best"}``.

        Raises:
            RuntimeError: if the loss becomes NaN or infinite.
        """
        log_every = max(1, int(self.train_cfg.get("log_every", 10)))
        save_every = int(self.train_cfg.get("save_every", 0) or 0)
        eval_every = int(self.train_cfg.get("eval_every", 0) or 0)
        select = bool(self.train_cfg.get("select_on_test"))
        self._open_logs()
        self.model.train()
        self.method.train()
        start_step, start = self.step, time.perf_counter()
        show = self.progress and self.is_main
        bar = tqdm(
            total=self.iters,
            initial=self.step,
            desc="train",
            dynamic_ncols=True,
            disable=not show,
            file=sys.stderr,
        )
        redirect = logging_redirect_tqdm() if show else contextlib.nullcontext()
        with redirect:
            try:
                model_path = self._loop(bar, log_every, save_every, eval_every, select)
            except KeyboardInterrupt:
                if self.step > start_step and self.is_main:
                    self.save_last()
                    logger.warning(
                        "interrupted at step %d; saved last.pt (continue with --resume)", self.step
                    )
                raise
            finally:
                bar.close()
                self._close_logs()
        distributed.barrier()
        seconds = time.perf_counter() - start
        done = self.step - start_step
        logger.info(
            "trained steps %d-%d in %.1f s (%.2f steps/s)",
            start_step + 1,
            self.step,
            seconds,
            done / seconds if seconds > 0 else float("nan"),
        )
        logger.info("skipped %d corrupt images", self.skipped)
        return {
            "step": self.step,
            "loss": self.last_loss,
            "skipped": self.skipped,
            "seconds": round(seconds, 3),
            "model": str(model_path),
            "best": self.best,
        }

"""Train a cell on a task and measure it: `evaluate(cell, TrainConfig) -> EvalResult` (see COMMON.md).

`evaluate` never raises for a bad cell or a training problem: a cell that does not parse, compile or run
gives status `failed` with the message; a NaN/inf loss, a loss above the ceiling or an exploding gradient
norm stops training with status `diverged` and the reason. Bad settings raise ConfigError and bad data
DataError before any training. Same seed + epoch/step budget on CPU => the same result, bit for bit.
Running out of GPU memory (`torch.cuda.OutOfMemoryError`, while building or training) gives status `failed`
with the reason "out of GPU memory on cuda:N ...", and the memory is handed back to the device, so an
evaluation sharing the GPU with others (evals_per_gpu > 1) fails alone.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evonas.cells import Node, canonical_text, to_text
from evonas.errors import CellError, CellSyntaxError
from evonas.nn.model import CellModel, count_params, detach_state
from evonas.training.config import EvalResult, TrainConfig, curve_points
from evonas.training.device import limit_gpu_memory, resolve_device
from evonas.training.optim import FlatAdam, FlatSGD, flatten
from evonas.training.tasks import get_task
from evonas.training.tasks.base import Task

__all__ = ["EvalResult", "TrainConfig", "evaluate", "resolve_cell"]

Progress = Callable[[dict[str, Any]], None]

# Fallbacks where neither the config nor the task's defaults set a value.
BASE_DEFAULTS = {"hidden": 128, "batch_size": 32, "bptt": 35, "lr": 2e-3, "optimizer": "adam", "clip": 1.0,
                 "epochs": 1}


class Diverged(Exception):
    """Raised inside the loop when training diverges; becomes status `diverged` with the message."""


@dataclass
class Settings:
    """A TrainConfig with every None resolved from the task's defaults."""

    hidden: int
    batch_size: int
    eval_batch_size: int
    bptt: int
    lr: float
    optimizer: str
    clip: float
    tie: bool
    epochs: int | None
    steps: int | None
    seconds: float | None
    loss_ceiling: float


def settings(cfg: TrainConfig, task: Task) -> Settings:
    """Resolve the config's None fields from the task's defaults (then the base defaults)."""
    d = {**BASE_DEFAULTS, **task.defaults}

    def pick(name: str) -> Any:
        v = getattr(cfg, name)
        return d.get(name) if v is None else v

    if cfg.epochs is None and cfg.steps is None and cfg.seconds is None:
        epochs, steps, seconds = d.get("epochs") if "steps" not in d else None, d.get("steps"), d.get("seconds")
    else:
        epochs, steps, seconds = cfg.epochs, cfg.steps, cfg.seconds
    batch = pick("batch_size")
    return Settings(
        hidden=pick("hidden"), batch_size=batch, eval_batch_size=cfg.eval_batch_size or d.get("eval_batch_size", batch),
        bptt=pick("bptt"), lr=pick("lr"), optimizer=pick("optimizer"), clip=pick("clip"),
        tie=(True if cfg.tie is None else cfg.tie) and task.input_kind == "tokens",
        epochs=epochs, steps=steps, seconds=seconds,
        loss_ceiling=cfg.loss_ceiling if cfg.loss_ceiling is not None else 3.0 * task.uniform_loss,
    )


def resolve_cell(cell: str | Node) -> Node:
    """A cell from a Node, a cell text or a library name (CellSyntaxError / CellError when neither)."""
    if isinstance(cell, Node):
        return cell
    from evonas.cells.library import resolve

    return resolve(cell)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) so a CPU run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def evaluate(cell: str | Node, config: TrainConfig, progress: Progress | None = None,
             state_in: str | Path | None = None, state_out: str | Path | None = None) -> EvalResult:
    """Train `cell` under `config` and return its metrics; never raises for cell or training problems.

    `progress`, if given, is called with a dict (epoch, step, train_loss, valid_loss, elapsed) after each
    validation. ConfigError (bad settings, CUDA absent) and DataError (bad data) are raised before training.
    Multi-fidelity: `state_in` continues a run saved by an earlier call's `state_out` (model, optimizer, step
    and epoch counters, RNG states, best weights) up to this config's larger budget, so a promoted cell pays
    only the extra steps; `state_out` saves the state at the end (atomically, a torch file of tensors and plain
    values, read back with `weights_only=True`).
    """
    t0, cpu0 = time.perf_counter(), time.process_time()
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    config.validate()
    device = resolve_device(config.device)
    limit_gpu_memory(device)
    task = get_task(config.task, config.data, config.level)
    s = settings(config, task)
    label = cell if isinstance(cell, str) else to_text(cell)
    try:
        node = resolve_cell(cell)
        label = canonical_text(node)
    except (CellSyntaxError, CellError) as e:
        return EvalResult(cell=label, status="failed", reason=f"bad cell: {e}", seconds=time.perf_counter() - t0)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    try:
        model = CellModel(node, task.input_kind, task.n_inputs, task.n_outputs, s.hidden, config.layers, s.tie,
                          config.dropout_emb, config.dropout_in, config.dropout_h, config.dropout_out,
                          config.dropout_w).to(device)
    except torch.cuda.OutOfMemoryError as e:
        return _out_of_memory(EvalResult(cell=label, status="failed"), device, str(e), t0)
    except Exception as e:  # any build problem is recorded as a failed cell, with its message
        return EvalResult(cell=label, status="failed", reason=f"build: {type(e).__name__}: {e}",
                          seconds=time.perf_counter() - t0)
    result = EvalResult(cell=label, status="ok", params=count_params(model))
    loop: _Loop | None = None
    oom: str | None = None
    try:
        loop = _Loop(model, task, config, s, device, result, progress, state_out)
        if state_in is not None:
            loop.load(state_in)
        loop.run()
    except Diverged as e:
        result.status, result.reason = "diverged", str(e)
    except torch.cuda.OutOfMemoryError as e:  # its traceback (holding activations) is dropped below
        oom = str(e)
    except Exception as e:  # training crashed: a failed evaluation with the message, never a crash of the caller
        result.status, result.reason = "failed", f"training: {type(e).__name__}: {e}"
    if loop is not None:
        result.steps, result.epochs = loop.step, round(loop.epochs_done(), 4)
    if oom is not None:
        loop = model = None  # the weights, optimizer state and activations go back to the device
        return _out_of_memory(result, device, oom, t0)
    result.seconds = time.perf_counter() - t0
    result.cpu_seconds = time.process_time() - cpu0
    if result.status != "ok":
        result.test_loss = result.test_ppl = None
        if result.valid_loss is not None and not math.isfinite(result.valid_loss):
            result.valid_loss = result.valid_ppl = None
    return result


def _out_of_memory(result: EvalResult, device: torch.device, message: str, t0: float) -> EvalResult:
    """The failed result of an evaluation that ran out of GPU memory; frees this process's cached memory."""
    first = (message.strip().splitlines() or [""])[0]
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result.status = "failed"
    result.reason = f"out of GPU memory on {device} (lower evals_per_gpu, hidden or batch_size): {first[:200]}"
    result.valid_loss = result.valid_ppl = result.test_loss = result.test_ppl = None
    result.seconds = time.perf_counter() - t0
    return result


def _ppl(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, 700.0))


class _Loop:
    """One training run: optimizer steps, validation, early stopping, divergence checks, budget."""

    def __init__(self, model: CellModel, task: Task, cfg: TrainConfig, s: Settings, device: torch.device,
                 result: EvalResult, progress: Progress | None, state_out: str | Path | None = None):
        self.model, self.task, self.cfg, self.s, self.device = model, task, cfg, s, device
        self.result, self.progress, self.state_out = result, progress, state_out
        self.skip = 0  # batches of the current epoch already trained before a continuation
        self.carried: Any = None  # recurrent state carried between batches (token streams)
        # every parameter and gradient in one buffer: zeroing, clipping and the update are a few kernels
        self.flat = flatten(model)
        if s.optimizer == "sgd":
            self.opt: FlatAdam | FlatSGD = FlatSGD(self.flat, lr=s.lr, weight_decay=cfg.weight_decay)
        else:
            self.opt = FlatAdam(self.flat, lr=s.lr, weight_decay=cfg.weight_decay)
        self.rng = np.random.default_rng(cfg.seed)
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.epoch_len = sum(1 for _ in task.batches("train", s.batch_size, s.bptt))
        self.best = math.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_evals = 0
        self.train_loss = math.nan
        self.losses: list[float] = []  # this run's training losses, for EvalResult.curve
        self.clock = time.process_time if cfg.clock == "cpu" else time.perf_counter
        self.start = self.clock()
        self.epoch_rng = self.rng.bit_generator.state

    # ------------------------------------------------------------ continuation (multi-fidelity rungs)

    def save(self, path: str | Path) -> None:
        """Write everything a continuation needs (before the best weights are restored), atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        model = {k: v.clone() for k, v in self.model.state_dict().items()}  # own storage, not views of the buffer
        state = {"model": model, "optimizer": self.opt.state_dict(),
                 "best": self.best_state, "carried": detach_state(self.carried),
                 "torch_rng": torch.get_rng_state(),
                 "counters": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                              "best": self.best, "bad_evals": self.bad_evals, "train_loss": self.train_loss,
                              "loss_ceiling": self.s.loss_ceiling, "epoch_rng": self.epoch_rng}}
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

    def load(self, path: str | Path) -> None:
        """Continue from a state written by `save` (ValueError when the file is missing or not such a state)."""
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            c = state["counters"]
        except (OSError, RuntimeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"cannot continue from {path}: {type(e).__name__}: {e}") from None
        self.best_state, self.carried = state["best"], state["carried"]
        torch.set_rng_state(state["torch_rng"].cpu())
        self.step, self.epoch, self.skip = int(c["step"]), int(c["epoch"]), int(c["batch_in_epoch"])
        self.best, self.bad_evals, self.train_loss = float(c["best"]), int(c["bad_evals"]), float(c["train_loss"])
        self.s.loss_ceiling = float(c["loss_ceiling"])
        self.epoch_rng = c["epoch_rng"]
        self.rng.bit_generator.state = self.epoch_rng  # replay the current epoch's order, skipping what was done
        if math.isfinite(self.best):
            self.result.valid_loss = self.best
            self.result.valid_ppl = _ppl(self.best) if self.task.report_ppl else None

    def epochs_done(self) -> float:
        """Epochs completed, with the current one as a fraction."""
        return self.epoch + self.batch_in_epoch / max(self.epoch_len, 1)

    def out_of_budget(self) -> bool:
        s = self.s
        if s.steps is not None and self.step >= s.steps:
            return True
        if s.seconds is not None and self.clock() - self.start >= s.seconds:
            if s.steps is not None or s.epochs is not None:
                self.result.reason = f"time cap of {s.seconds:g} s ({self.cfg.clock}) reached at step {self.step}"
            return True
        return s.epochs is not None and self.epoch >= s.epochs

    def run(self) -> None:
        """Train until the budget is spent or validation stops improving; then validate (and test)."""
        validated_at = self.step if self.skip or self.step else -1
        stop = self.out_of_budget()
        while not stop:
            state, self.carried = self.carried, None
            self.batch_in_epoch = 0
            self.epoch_rng = self.rng.bit_generator.state
            for batch in self.task.batches("train", self.s.batch_size, self.s.bptt, self.rng):
                if self.skip:  # a continuation: these batches were trained before the state was saved
                    self.skip -= 1
                    self.batch_in_epoch += 1
                    continue
                if batch.reset or not self.task.carry:
                    state = None
                state = self.train_step(batch.to(self.device), state)
                self.carried = state
                if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
                    validated_at = self.step
                    if self.validate():
                        return self.finish()
                if self.out_of_budget():
                    stop = True
                    break
            else:
                self.epoch += 1
                self.batch_in_epoch = 0
                if validated_at != self.step:
                    validated_at = self.step
                    if self.validate():
                        return self.finish()
                stop = self.out_of_budget()
        if validated_at != self.step:
            self.validate()
        self.finish()

    def train_step(self, batch: Any, state: Any) -> Any:
        """One optimizer step on one batch; raises Diverged on a bad loss or gradient."""
        if not self.model.training:  # train() walks every module: only after a validation switched to eval()
            self.model.train()
        hidden, state = self.model.features(batch.x, detach_state(state))
        total, count = self.task.head_loss_sum(hidden, self.model.decoder, batch)
        loss = total / max(float(count), 1.0)
        value = float(loss.detach())
        self.step += 1
        self.batch_in_epoch += 1
        if not math.isfinite(value):
            raise Diverged(f"training loss is {value} at step {self.step}")
        if self.step == 1 and self.cfg.loss_ceiling is None:  # default ceiling: also at least twice the first loss
            self.s.loss_ceiling = max(self.s.loss_ceiling, 2.0 * value)
        if value > self.s.loss_ceiling:
            raise Diverged(f"training loss {value:.4g} above the ceiling {self.s.loss_ceiling:.4g} at step {self.step}")
        self.flat.zero_grad()
        loss.backward()
        norm = self.flat.clip_grad_norm_(self.s.clip if self.s.clip > 0 else math.inf)
        if not math.isfinite(norm):
            raise Diverged(f"gradient norm is {norm} at step {self.step}")
        if norm > self.cfg.grad_ceiling:
            raise Diverged(f"gradient norm {norm:.3g} above the ceiling {self.cfg.grad_ceiling:.3g} "
                           f"at step {self.step}")
        self.opt.step()
        self.train_loss = value
        self.losses.append(value)
        return state

    @torch.inference_mode()  # no_grad without version counting: validation tensors never reach autograd
    def split_loss(self, split: str) -> float:
        """Mean loss over a whole split (state carried between chunks for stream tasks)."""
        self.model.eval()
        total, count, state = 0.0, 0.0, None
        for batch in self.task.batches(split, self.s.eval_batch_size, self.s.bptt):
            batch = batch.to(self.device)
            if batch.reset or not self.task.carry:
                state = None
            hidden, state = self.model.features(batch.x, state)
            t, c = self.task.head_loss_sum(hidden, self.model.decoder, batch)
            total += float(t)
            count += float(c)
        return total / max(count, 1.0)

    def validate(self) -> bool:
        """Validate, keep the best weights, report progress; True when early stopping says stop."""
        loss = self.split_loss("valid")
        if not math.isfinite(loss):
            raise Diverged(f"validation loss is {loss} at step {self.step}")
        if loss < self.best:
            self.best = loss
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        self.result.valid_loss = self.best
        self.result.valid_ppl = _ppl(self.best) if self.task.report_ppl else None
        if self.progress is not None:
            self.progress({"epoch": round(self.epochs_done(), 3), "step": self.step, "train_loss": self.train_loss,
                           "valid_loss": loss, "best_valid_loss": self.best,
                           "elapsed": self.clock() - self.start})
        return self.cfg.patience is not None and self.bad_evals >= self.cfg.patience

    def finish(self) -> None:
        """Save the training state (when asked), restore the best weights, measure the test split when asked."""
        self.result.curve = curve_points(self.losses)
        if self.state_out is not None:
            self.save(self.state_out)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        if self.cfg.test:
            loss = self.split_loss("test")
            self.result.test_loss = loss
            self.result.test_ppl = _ppl(loss) if self.task.report_ppl else None

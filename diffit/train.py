"""The training loop: one optimizer step, and the run with EMA, checkpoints and exact resume, for any backbone
and objective (see ``diffit.nn.Backbone`` and ``diffit.objectives.Objective``).

Every random draw of a step (data order and flips, noise levels, noise, label dropout) is a pure function of
(seed, step) over the *global* batch, and each rank takes its slice. Hence:

- resuming at step k replays exactly what an uninterrupted run would have done (bit-identical on CPU);
- N ranks x M micro-batches see exactly the samples and noise of one process with the same global batch.
"""

import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from diffit.checkpoint import checkpoint_dirs, latest_checkpoint, load_checkpoint, save_checkpoint, verify_checkpoint
from diffit.distributed import DistInfo, all_gather, all_reduce_max, all_reduce_mean
from diffit.ema import ema_decay, ema_update, make_ema, unwrap
from diffit.nn import LabelEmbedding, check_backbone
from diffit.objectives import Objective, check_objective
from diffit.util import (
    OutOfMemory,
    check_integer,
    check_output_path,
    is_integer,
    locked_folder,
    mix_seed,
    out_of_memory_as,
    to_device,
)

DataFn = Callable[[int], Iterator[tuple[Tensor, Tensor]]]
"""``data(start_step)`` -> iterator over this rank's (x, y) slice of every global batch from ``start_step`` on."""


class TrainingDiverged(RuntimeError):
    """Raised after too many consecutive steps with a non-finite loss, gradient or update."""


class TrainingOutOfMemory(OutOfMemory):
    """Raised when a training step (its batch, forward or backward) fails to allocate memory, on any device; the
    message names batch_size and micro_batch, which set a step's memory, and the allocator's error is the
    ``__cause__``. Nothing was written for that step: the run's last checkpoint is its newest. A preview grid
    (``on_sample``) that runs out of memory raises it too, naming sample_every."""


@contextmanager
def _step_memory(per_rank: int, micro_batch: int, device: torch.device) -> Iterator[None]:
    """Turn an allocation failure inside the block into :class:`TrainingOutOfMemory`; other errors pass."""
    with out_of_memory_as(
        lambda tried: TrainingOutOfMemory(
            f"batch_size and micro_batch: a step of {per_rank} samples per process in micro-batches of "
            f"{micro_batch} ran out of memory on {device}{tried}; lower the batch size, or accumulate gradients "
            "over smaller micro-batches (the same step in less memory)"
        )
    ):
        yield


@contextmanager
def _preview_memory(step: int, checkpoint: Path | None, device: torch.device) -> Iterator[None]:
    """A preview grid that cannot allocate its memory raises :class:`TrainingOutOfMemory` naming sample_every:
    the step fitted, and the batch of the grid is not batch_size's (even when ``generate`` named that)."""
    then = f"resume from its latest checkpoint, {checkpoint}," if checkpoint is not None else "run it again"
    with out_of_memory_as(
        lambda tried: TrainingOutOfMemory(
            f"sample_every: the preview grid of step {step} ran out of memory on {device}{tried}; {then} "
            "without preview grids (sample_every 0)"
        ),
        restate_inner=True,
    ):
        yield


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator whose state is a pure function of (seed, step, stream): seeded by ``mix_seed``, the one
    hash-based derivation shared with the data streams and generation, so no two tuples share a stream."""
    return torch.Generator().manual_seed(mix_seed(seed, step, stream))


def lr_at(step: int, *, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps to ``lr``, then constant (the paper trains at a constant rate)."""
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr


@dataclass
class StepStats:
    """What one optimisation step did: mean loss, gradient norm, and whether it was skipped."""

    loss: float
    grad_norm: float
    skipped: bool


def train_step(
    *,
    model: nn.Module,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    x: Float[Tensor, "b c h w"],
    y: Int[Tensor, " b"] | None,
    draws: dict[str, Tensor],
    micro_batch: int,
    grad_clip: float,
    precision: str,
    dist: DistInfo,
    guard_updates: bool = True,
) -> StepStats:
    """One optimizer step on this rank's slice ``x`` of the global batch, accumulated over micro-batches.

    The loss is the mean over the global batch: each micro-batch's mean is weighted by its share of the rank's
    slice and DDP averages over ranks. A step whose loss or gradient norm is not finite is skipped: the
    gradients are dropped and the weights and optimizer state are left untouched. With ``guard_updates``, a
    step whose update itself makes a weight non-finite (finite loss and gradient, overflowing update) is
    rolled back and skipped the same way; this keeps a copy of the weights and optimizer state during the step.
    """
    n = x.shape[0]
    if n % micro_batch:
        raise ValueError(f"micro_batch={micro_batch} must divide the per-rank batch {n}")
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=x.device)
    chunks = range(0, n, micro_batch)
    for i, start in enumerate(chunks):
        sl = slice(start, start + micro_batch)
        last = i == len(chunks) - 1
        sync = model.no_sync() if (dist.enabled and not last and hasattr(model, "no_sync")) else _nullcontext()
        with sync, torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            micro_draws = {k: v[sl] for k, v in draws.items()}
            loss = objective.loss(model, x[sl], None if y is None else y[sl], micro_draws).float().mean()
            (loss * (micro_batch / n)).backward()
        total += loss.detach() * (micro_batch / n)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    mean_loss = float(all_reduce_mean(total, dist))
    finite = math.isfinite(mean_loss) and math.isfinite(float(grad_norm))
    if finite:
        saved = _snapshot(params, optimizer) if guard_updates else None
        optimizer.step()
        if saved is not None:
            ok = torch.stack([p.detach().isfinite().all() for p in params]).all()
            finite = bool(all_reduce_max((~ok).float(), dist) == 0)  # every rank rolls back together
            if not finite:
                _restore(params, optimizer, saved)
    optimizer.zero_grad(set_to_none=True)
    return StepStats(loss=mean_loss, grad_norm=float(grad_norm), skipped=not finite)


def _snapshot(params: list[Tensor], optimizer: torch.optim.Optimizer) -> tuple[list[Tensor], dict[Any, Any]]:
    """Copies of the weights and the optimizer's per-parameter state, to undo an overflowing update."""
    state = {p: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in optimizer.state[p].items()} for p in params}
    return [p.detach().clone() for p in params], state


@torch.no_grad()
def _restore(params: list[Tensor], optimizer: torch.optim.Optimizer, saved: tuple[list[Tensor], dict]) -> None:
    weights, state = saved
    for p, w in zip(params, weights, strict=True):
        p.copy_(w)
    for p in params:
        if state[p]:
            optimizer.state[p] = state[p]
        else:  # the step was the parameter's first: it had no state before
            optimizer.state.pop(p, None)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@dataclass
class TrainResult:
    """How :func:`train` ended: last step, status, latest checkpoint and skipped steps."""

    step: int
    status: str  # "completed" | "interrupted"
    checkpoint: Path | None
    skipped_steps: int
    signal: int | None = None  # the signal that interrupted the run, if any


class _StopFlag:
    """Set by SIGTERM / SIGINT: the loop finishes the current step, checkpoints and returns."""

    def __init__(self) -> None:
        self.stop = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.stop, self.signum = True, signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _rng_states(dist: DistInfo) -> dict[str, Tensor]:
    """Every rank's torch RNG states (gathered to all ranks), for the checkpoint."""
    local = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and dist.device.type == "cuda":
        local["cuda"] = torch.cuda.get_rng_state(dist.device)
    gathered = {k: all_gather(v, dist) for k, v in local.items()}
    return {f"rank{r}.{k}": gathered[k][r] for r in range(len(gathered["cpu"])) for k in local}


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines after ``step`` (written by a run that died after its last checkpoint)."""
    if path.is_file():
        kept = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step]
        path.write_text("".join(ln + "\n" for ln in kept))


# Arguments that shape a run's trajectory: resuming with another value is no longer an exact resume. (steps,
# micro_batch, world_size and compile are not among them: they extend the run or only reorder its arithmetic; the
# shard count and a stream's readers, which set its batches, are compared in the run_info's data.)
TRAJECTORY_ARGS = ("batch_size", "lr", "warmup", "betas", "weight_decay", "ema", "ema_warmup", "grad_clip",
                   "precision", "seed", "label_dropout", "guard_updates")  # fmt: skip


def _data_info(run_info: dict[str, Any] | None) -> dict[str, Any]:
    """What a run_info records of the data (``TrainingData.describe``), or nothing."""
    data = (run_info or {}).get("data")
    return data if isinstance(data, dict) else {}


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The elements of ``model``'s innermost ``nn.ModuleList``s (those holding no ModuleList themselves): its
    repeated blocks, such as a transformer's layers or a U-Net stage's blocks; ValueError naming compile when
    there are none."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    inner = [ml for ml in lists if not any(isinstance(s, nn.ModuleList) for b in ml for s in b.modules())]
    if not inner:
        raise ValueError(
            f"compile: 'blocks' compiles the elements of the model's nn.ModuleLists, and {type(model).__name__} "
            "has none; pass compile=True to compile the whole model"
        )
    return [block for ml in inner for block in ml]


@dataclass
class CompiledBlocks:
    """What :func:`compiled_blocks` compiled, and which of those blocks have been called through the compiled
    code so far."""

    blocks: list[nn.Module]
    called: set[nn.Module] = field(default_factory=set)  # the blocks called as modules, block(...)

    def missed(self) -> list[nn.Module]:
        """The blocks never called as modules so far: a model that runs them only through another method (such as
        ``block.forward_grid(h, t)``) bypasses ``__call__``, and with it the compiled code, so they run eager."""
        return [block for block in self.blocks if block not in self.called]


def _noting_calls(compiled: Callable[..., Any], called: set[nn.Module], block: nn.Module) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        called.add(block)
        return compiled(*args, **kwargs)

    return call


@contextmanager
def compiled_blocks(model: nn.Module, **options: Any) -> Iterator[CompiledBlocks]:
    """Regional compilation while the block runs: each of :func:`repeated_blocks` is compiled in place
    (``nn.Module.compile(**options)``, options as ``torch.compile``'s), so blocks of one shape share one compiled
    graph and compile time does not grow with depth; the model is not wrapped, so its state-dict keys stay as they
    are. Yields the blocks, and which of them were called through the compiled code (:meth:`CompiledBlocks.missed`).
    Undone on exit."""
    compiled = CompiledBlocks(repeated_blocks(model))
    for block in compiled.blocks:
        block.compile(**options)
        block._compiled_call_impl = _noting_calls(block._compiled_call_impl, compiled.called, block)
    try:
        yield compiled
    finally:
        for block in compiled.blocks:
            block._compiled_call_impl = None  # what nn.Module.compile set: calls go to forward again


def compile_option(whole: bool, blocks: bool) -> bool | str:
    """:func:`train`'s ``compile`` from two switches (``--compile``, ``--compile-blocks``): True, "blocks" or
    False; ValueError naming both when both are on."""
    if whole and blocks:
        raise ValueError("compile and compile_blocks: give one of them (the whole model, or each block)")
    return "blocks" if blocks else whole


def check_train_args(
    *,
    steps: int,
    batch_size: int,
    micro_batch: int | None,
    world_size: int,
    lr: float,
    warmup: int,
    betas: tuple[float, float],
    weight_decay: float,
    ema: float,
    grad_clip: float,
    precision: str,
    label_dropout: float | None,
    ckpt_every: int,
    keep_last: int,
    log_every: int,
    sample_every: int,
    max_bad_steps: int,
    seed: int = 0,
    compile: bool | str = False,
) -> None:
    """ValueError naming the first argument of :func:`train` that is out of range (called before any work)."""

    def need(ok: object, name: str, expected: str, value: object) -> None:  # ok: a truth value (numpy ones too)
        if not ok:
            raise ValueError(f"{name} must be {expected}, got {value}")

    micro = batch_size // world_size if micro_batch is None else micro_batch  # None: the whole per-rank batch
    for name, value in (("steps", steps), ("batch_size", batch_size), ("micro_batch", micro),
                        ("ckpt_every", ckpt_every), ("keep_last", keep_last), ("log_every", log_every),
                        ("max_bad_steps", max_bad_steps)):  # fmt: skip
        check_integer(name, value)
    check_integer("warmup", warmup, minimum=0)
    need(is_integer(seed) and 0 <= seed < 2**63, "seed", "an integer in [0, 2**63)", seed)  # torch overflowed past it
    need(is_integer(sample_every) and sample_every >= 0, "sample_every", "an integer >= 0 (0 disables)", sample_every)
    need(math.isfinite(lr) and lr > 0, "lr", "a finite number > 0", lr)
    need(all(math.isfinite(b) and 0 <= b < 1 for b in betas), "betas", "two numbers in [0, 1)", betas)
    need(math.isfinite(weight_decay) and weight_decay >= 0, "weight_decay", "a finite number >= 0", weight_decay)
    need(0 <= ema < 1, "ema", "in [0, 1)", ema)
    need(math.isfinite(grad_clip) and grad_clip >= 0, "grad_clip", "a finite number >= 0 (0 disables)", grad_clip)
    need(precision in ("fp32", "bf16"), "precision", "'fp32' or 'bf16'", repr(precision))
    need(
        isinstance(compile, bool) or compile in ("model", "blocks"),
        "compile",
        "a bool, 'model' or 'blocks'",
        repr(compile),
    )
    need(label_dropout is None or 0 <= label_dropout < 1, "label_dropout", "in [0, 1)", label_dropout)
    need(batch_size % world_size == 0, "batch_size", f"divisible by the world size {world_size}", batch_size)
    per_rank = batch_size // world_size
    need(per_rank % micro == 0, "micro_batch", f"a divisor of the per-rank batch {per_rank}", micro)


def check_run_dir(run_dir: str | Path, *, resume: bool) -> Path:
    """``run_dir`` as a Path that can be written; ValueError if it cannot, or if it holds checkpoints and the run is
    not a resume (never overwrite)."""
    run_dir = check_output_path(run_dir)  # also refuses an out that is a file
    if not resume and latest_checkpoint(run_dir) is not None:
        raise ValueError(f"out {run_dir} already holds checkpoints: resume that run, or choose another directory")
    return run_dir


def train(
    *,
    model: nn.Module,
    objective: Objective,
    data: DataFn,
    run_dir: Path,
    dist: DistInfo,
    steps: int,
    batch_size: int,
    micro_batch: int | None = None,
    lr: float,
    warmup: int = 0,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    ema: float = 0.9999,
    ema_warmup: bool = True,
    grad_clip: float = 0.0,
    precision: str = "fp32",
    compile: bool | str = False,
    seed: int = 0,
    label_dropout: float | None = None,
    ckpt_every: int = 1000,
    keep_last: int = 3,
    log_every: int = 10,
    sample_every: int = 0,
    on_sample: Callable[[int, nn.Module], None] | None = None,
    max_bad_steps: int = 10,
    guard_updates: bool = True,
    resume: bool = False,
    run_info: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` (any :class:`~diffit.nn.Backbone`) on ``objective`` for ``steps`` optimizer steps with
    AdamW, EMA and atomic checkpoints in ``run_dir``.

    ``batch_size`` is global: each of ``dist.world_size`` ranks gets batch_size / world_size samples per step
    from ``data`` and accumulates them in micro-batches of ``micro_batch`` (default: the whole per-rank batch).
    ``callback`` receives a dict per logged step (and per checkpoint / sample / warning event); rank 0 appends
    the logged steps to ``run_dir/log.jsonl``. Every checkpoint's ``state.json`` records this call's arguments
    (``train``), the model and the objective, and ``run_info`` (what the caller wants kept, e.g. the data's
    content hash, see :func:`diffit.runs.check_resume_data`).

    ``compile``: True or "model" wraps the model (under DDP: the DDP module) in ``torch.compile``; "blocks"
    compiles each of its repeated blocks instead (:func:`compiled_blocks`: compile time independent of depth).

    Label dropout for classifier-free guidance (``label_dropout``, default: the backbone's own
    ``class_dropout_prob``) is drawn here for the global batch, so the backbone's internal random dropout is
    switched off for the run (and restored afterwards). Arguments out of range raise ValueError before any work;
    a step that cannot allocate its memory raises :class:`TrainingOutOfMemory` (other errors pass unchanged),
    and a run directory this call created is removed again if the run fails before writing anything into it.
    The main process locks ``run_dir`` for the run (:func:`~diffit.util.locked_folder`): a second process writing
    the same run is refused with ValueError naming run_dir before it touches anything.
    """
    check_backbone(unwrap(model))
    check_objective(objective)
    if not callable(data):  # it failed as "'NoneType' object is not callable" after the run directory was made
        raise ValueError(
            f"data must be a function step -> iterator of (x, y) batches, such as lambda step: "
            f"memory_batches(..., start_step=step), got {type(data).__name__}"
        )
    check_train_args(
        steps=steps, batch_size=batch_size, micro_batch=micro_batch, world_size=dist.world_size, lr=lr,
        warmup=warmup, betas=betas, weight_decay=weight_decay, ema=ema, grad_clip=grad_clip, precision=precision,
        label_dropout=label_dropout, ckpt_every=ckpt_every, keep_last=keep_last, log_every=log_every,
        sample_every=sample_every, max_bad_steps=max_bad_steps, seed=seed, compile=compile,
    )  # fmt: skip
    per_rank = batch_size // dist.world_size
    micro_batch = per_rank if micro_batch is None else micro_batch
    if compile == "blocks":
        repeated_blocks(unwrap(model))  # refused before the run directory is made
    run_dir = check_run_dir(run_dir, resume=resume)
    model = to_device(unwrap(model), dist.device).train()
    num_classes = model.num_classes
    if label_dropout is None:
        label_dropout = next((m.dropout_prob for m in model.modules() if isinstance(m, LabelEmbedding)), 0.0)
    train_args = {
        "steps": steps, "batch_size": batch_size, "micro_batch": micro_batch, "world_size": dist.world_size,
        "lr": lr, "warmup": warmup, "betas": list(betas), "weight_decay": weight_decay, "ema": ema,
        "ema_warmup": ema_warmup, "grad_clip": grad_clip, "precision": precision, "compile": compile, "seed": seed,
        "label_dropout": label_dropout, "guard_updates": guard_updates,
    }  # fmt: skip

    def emit(event: dict[str, Any]) -> None:
        if callback is not None and dist.is_main:
            callback(event)

    ema_model = make_ema(model)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, betas=betas, weight_decay=weight_decay
    )
    run = _RunState()
    if resume:
        run.restore(run_dir, model=model, ema=ema_model, optimizer=optimizer, dist=dist, warn=emit)
        changed = [
            f"{k} {run.recorded_args[k]} -> {v}"
            for k, v in train_args.items()
            if k in TRAJECTORY_ARGS and k in run.recorded_args and run.recorded_args[k] != v
        ]
        data_now, data_then = (_data_info(info) for info in (run_info, run.recorded_run))
        changed += [  # what the caller records of the data: flips, RAM vs stream, shards, a stream's readers
            f"data {k} {data_then[k]} -> {data_now[k]}"
            for k in ("flip", "kind", "shards", "readers")
            if k in data_now and k in data_then and data_now[k] != data_then[k]
        ]
        if changed:  # allowed (a lower lr, say), but the run is no longer the one an uninterrupted run gives
            emit({"event": "warning", "message": f"resumed with changed arguments: {', '.join(changed)}"})
        if run.step >= steps:
            emit({"event": "warning", "message": f"the run is at step {run.step}: steps={steps} trains nothing"})
    log_path = run_dir / "log.jsonl"
    wrapped: nn.Module = model
    if dist.enabled:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile is True or compile == "model":
        wrapped = torch.compile(wrapped)

    rank_slice = slice(dist.rank * per_rank, (dist.rank + 1) * per_rank)
    sample_shape = (model.in_channels, model.resolution, model.resolution)
    clock, images_since = time.perf_counter(), 0
    # The main process creates run_dir (removed again if the run fails before writing to it) and locks it.
    holding = locked_folder(run_dir, name="run_dir") if dist.is_main else nullcontext()
    regional = compiled_blocks(model) if compile == "blocks" else nullcontext()
    with holding, _label_dropout_off(model), _StopFlag() as flag, regional as compiled:
        if dist.is_main:
            _truncate_log(log_path, run.step)  # under the lock: another process may be writing this run
        batches, first_step = data(run.step), run.step
        while run.step < steps:
            with _step_memory(per_rank, micro_batch, dist.device):  # the step's batch, draws, forward, backward
                x, y = next(batches)
                # Checked here, for free, rather than by the model as its own x and y (names data never had).
                if tuple(x.shape) != (per_rank, *sample_shape) or tuple(y.shape) != (per_rank,):
                    raise ValueError(
                        f"data: expected batches of this rank's {per_rank} samples (batch_size={batch_size} over "
                        f"{dist.world_size} rank(s)) of shape {sample_shape}, got x {tuple(x.shape)} and y "
                        f"{tuple(y.shape)} at step {run.step}"
                    )
                if num_classes is not None and y.dtype not in (torch.int64, torch.int32):
                    raise ValueError(f"data: expected integer class labels y, got {y.dtype} at step {run.step}")
                x, y = x.to(dist.device, non_blocking=True), y.to(dist.device, non_blocking=True)
                # Everything random in this step, drawn for the global batch; this rank keeps its slice.
                gen = step_generator(seed, run.step)
                drawn = objective.draw(gen, batch_size, x.shape[1:])
                draws = {k: v[rank_slice].to(dist.device) for k, v in drawn.items()}
                labels = None
                if num_classes is not None:  # label dropout for classifier-free guidance
                    drop = (torch.rand(batch_size, generator=gen) < label_dropout)[rank_slice].to(dist.device)
                    labels = torch.where(drop, torch.full_like(y, num_classes), y)
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(run.step, lr=lr, warmup=warmup)
                stats = train_step(
                    model=wrapped, objective=objective, optimizer=optimizer, x=x, y=labels, draws=draws,
                    micro_batch=micro_batch, grad_clip=grad_clip, precision=precision, dist=dist,
                    guard_updates=guard_updates,
                )  # fmt: skip
            run.step += 1
            images_since += batch_size
            if compiled is not None and run.step == first_step + 1 and (missed := compiled.missed()):
                kinds = ", ".join(sorted({type(block).__name__ for block in missed}))
                emit({"event": "warning", "message": (
                    f"compile: 'blocks' compiled {len(compiled.blocks)} blocks, but {len(missed)} of them ({kinds}) "
                    "were not called as modules in the first step, so they run eager: a method such as "
                    "block.forward_grid(h, t) bypasses the compiled __call__; call each block as block(...), or "
                    "compile the whole model (compile=True, --compile)"
                )})  # fmt: skip
            if stats.skipped:
                run.skipped += 1
                run.bad_streak += 1
                if run.bad_streak >= max_bad_steps:
                    raise TrainingDiverged(
                        f"{run.bad_streak} consecutive steps had a non-finite loss, gradient or update (last at "
                        f"step {run.step}); stopping. The last good checkpoint is {run.last_checkpoint}"
                    )
            else:
                run.bad_streak = 0
                ema_update(ema_model, model, ema_decay(run.step - 1, decay=ema, warmup=ema_warmup))
                run.window.append(stats.loss)

            if run.step % log_every == 0 or run.step == steps:
                now = time.perf_counter()
                event = {
                    "event": "log", "step": run.step, "loss": stats.loss, "grad_norm": stats.grad_norm,
                    "lr": lr_at(run.step - 1, lr=lr, warmup=warmup),
                    "images_per_s": images_since / max(now - clock, 1e-9), "skipped_steps": run.skipped,
                    "time": time.time(),
                }  # fmt: skip
                clock, images_since = now, 0
                if dist.is_main:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(event) + "\n")
                emit(event)

            stop = bool(all_reduce_max(torch.tensor(float(flag.stop), device=dist.device), dist) > 0)
            # No periodic checkpoint inside a run of skipped steps (the latest stays one taken after a good
            # update); the final step and a stop always checkpoint: skipped steps never change the weights.
            if (run.step % ckpt_every == 0 and run.bad_streak == 0) or run.step == steps or stop:
                run.save(
                    run_dir, model=model, ema=ema_model, optimizer=optimizer, objective=objective, dist=dist,
                    keep_last=keep_last,
                    extra={"train": train_args, "run": run_info or {}, "data": {"seed": seed, "next_step": run.step}},
                )  # fmt: skip
                emit({"event": "checkpoint", "step": run.step, "path": str(run.last_checkpoint)})
            if sample_every > 0 and (run.step % sample_every == 0 or run.step == steps) and on_sample is not None:
                if dist.is_main:
                    with _preview_memory(run.step, run.last_checkpoint, dist.device):
                        on_sample(run.step, ema_model)
                emit({"event": "sample", "step": run.step})
            if stop:
                return TrainResult(run.step, "interrupted", run.last_checkpoint, run.skipped, signal=flag.signum)
    return TrainResult(run.step, "completed", run.last_checkpoint, run.skipped)


@contextmanager
def _label_dropout_off(model: nn.Module) -> Iterator[None]:
    """Switch off the backbone's own random label dropout (the training step draws it) and restore it."""
    embeddings = [m for m in model.modules() if isinstance(m, LabelEmbedding)]
    saved = [m.dropout_prob for m in embeddings]
    for m in embeddings:
        m.dropout_prob = 0.0
    try:
        yield
    finally:
        for m, p in zip(embeddings, saved, strict=True):
            m.dropout_prob = p


@dataclass
class _RunState:
    """What a run carries from step to step (and through a checkpoint)."""

    step: int = 0
    skipped: int = 0
    bad_streak: int = 0
    best_loss: float = math.inf
    best_step: int = -1
    window: list[float] = field(default_factory=list)  # losses since the last checkpoint
    last_checkpoint: Path | None = None
    recorded_args: dict[str, Any] = field(default_factory=dict)  # the train arguments of the restored checkpoint
    recorded_run: dict[str, Any] = field(default_factory=dict)  # and its run_info

    def restore(
        self,
        run_dir: Path,
        *,
        model: nn.Module,
        ema: nn.Module,
        optimizer: torch.optim.Optimizer,
        dist: DistInfo,
        warn: Callable[[dict[str, Any]], None],
    ) -> None:
        """Continue from the newest intact checkpoint of ``run_dir`` (none: a fresh start). A checkpoint whose
        files fail their hash check is passed over with a warning; if every one fails, ValueError."""
        candidates = checkpoint_dirs(run_dir)[::-1]
        ckpt, verified = None, None
        for candidate in candidates:
            try:
                verified = verify_checkpoint(candidate)
            except ValueError as err:
                warn({"event": "warning", "message": f"{err}; trying an older checkpoint"})
                continue
            ckpt = candidate
            break
        if candidates and ckpt is None:
            raise ValueError(
                f"no intact checkpoint in {run_dir}: the newest, {candidates[0].name}, fails its hash check"
            )
        if ckpt is None:
            return
        record, rng = load_checkpoint(
            ckpt, model=model, ema=ema, optimizer=optimizer, map_location=dist.device, verified=verified
        )
        self.step, self.skipped, self.last_checkpoint = record["step"], record.get("skipped_steps", 0), ckpt
        self.recorded_args = record.get("train", {}) if isinstance(record.get("train"), dict) else {}
        self.recorded_run = record.get("run", {}) if isinstance(record.get("run"), dict) else {}
        best = record.get("best_loss")
        self.best_loss, self.best_step = (math.inf if best is None else best), record.get("best_step", -1)
        if f"rank{dist.rank}.cpu" in rng:
            torch.set_rng_state(rng[f"rank{dist.rank}.cpu"])
        if f"rank{dist.rank}.cuda" in rng and dist.device.type == "cuda":
            torch.cuda.set_rng_state(rng[f"rank{dist.rank}.cuda"], dist.device)

    def save(
        self,
        run_dir: Path,
        *,
        model: nn.Module,
        ema: nn.Module,
        optimizer: torch.optim.Optimizer,
        objective: Objective,
        dist: DistInfo,
        keep_last: int,
        extra: dict[str, Any],
    ) -> None:
        """Checkpoint on rank 0 (every rank's RNG states gathered first), tracking the best window loss."""
        if self.window and (loss := sum(self.window) / len(self.window)) < self.best_loss:
            self.best_loss, self.best_step = loss, self.step
        self.window = []
        rng = _rng_states(dist)  # a collective: every rank takes part
        if not dist.is_main:
            return
        state = {
            **extra,
            "skipped_steps": self.skipped,
            "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "best_step": self.best_step,
            "versions": {"torch": torch.__version__},
        }
        self.last_checkpoint = save_checkpoint(
            run_dir, step=self.step, model=model, ema=ema, optimizer=optimizer, rng_states=rng, state=state,
            objective=objective, keep_last=keep_last, keep={self.best_step} if self.best_step >= 0 else None,
        )  # fmt: skip

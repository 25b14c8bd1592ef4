"""Training: exact resume, DDP equivalence, atomic checkpoints, non-finite guard, SIGTERM, compile prefixes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import free_port, run_two_ranks, tiny_image_diffit
from safetensors.torch import load_file

import diffit.checkpoint as ckpt_mod
from diffit.checkpoint import (
    checkpoint_dirs,
    latest_checkpoint,
    load_checkpoint,
    load_model,
    load_weights,
    read_metadata,
    save_checkpoint,
)
from diffit.data import memory_batches
from diffit.distributed import DistInfo
from diffit.ema import ema_decay, ema_update, make_ema, strip_wrapper_prefixes, unwrap
from diffit.nn import ImageDiffiT
from diffit.objectives import ADMObjective, EDMObjective
from diffit.train import TrainingDiverged, compiled_blocks, lr_at, repeated_blocks, train, train_step

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def tiny_model(num_classes: int | None = 3) -> ImageDiffiT:
    return tiny_image_diffit(num_classes)


def toy_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (40, 1, 8, 8), generator=g, dtype=torch.uint8), torch.arange(40) % 3


def run(tmp: Path, steps: int, *, resume: bool = False, dist: DistInfo = CPU, **kw: object) -> object:
    images, labels = toy_data()
    defaults: dict = dict(batch_size=8, micro_batch=4, lr=1e-3, warmup=3, ema=0.9, ckpt_every=5, log_every=5, seed=3)
    return train(
        model=tiny_model(),
        objective=EDMObjective(),
        run_dir=tmp,
        dist=dist,
        steps=steps,
        resume=resume,
        data=lambda s: memory_batches(
            images, labels, batch_size=8, seed=3, start_step=s, rank=dist.rank, world_size=dist.world_size, flip=True
        ),
        **(defaults | kw),
    )


def weights(ckpt: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(str(ckpt / name)) for name in ("model.safetensors", "ema.safetensors")}


def test_exact_resume_is_bit_identical(tmp_path: Path) -> None:
    straight = run(tmp_path / "a", 20)
    first = run(tmp_path / "b", 10)
    assert first.step == 10
    resumed = run(tmp_path / "b", 20, resume=True)
    assert resumed.step == 20
    wa, wb = weights(straight.checkpoint), weights(resumed.checkpoint)
    for name in wa:
        for key in wa[name]:
            assert torch.equal(wa[name][key], wb[name][key]), (name, key)
    opt_a = torch.load(straight.checkpoint / "optimizer.pt", weights_only=True)
    opt_b = torch.load(resumed.checkpoint / "optimizer.pt", weights_only=True)
    for k, state in opt_a["state"].items():
        assert torch.equal(state["exp_avg_sq"], opt_b["state"][k]["exp_avg_sq"])
    # The log of the resumed run continues without duplicate steps.
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]


def test_micro_batches_equal_one_batch(tmp_path: Path) -> None:
    whole = run(tmp_path / "a", 3, micro_batch=8, log_every=1)
    accumulated = run(tmp_path / "b", 3, micro_batch=2, log_every=1)
    wa, wb = weights(whole.checkpoint), weights(accumulated.checkpoint)
    for key in wa["model.safetensors"]:
        torch.testing.assert_close(wa["model.safetensors"][key], wb["model.safetensors"][key], atol=2e-5, rtol=1e-4)
    # The logged loss and gradient norm are the whole batch's too.
    logs = [[json.loads(line) for line in (tmp_path / d / "log.jsonl").read_text().splitlines()] for d in "ab"]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [1, 2, 3]
    for a, b in zip(*logs, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


def test_a_step_clips_the_gradient_norm_and_decays_the_weights_decoupled(tmp_path: Path) -> None:
    """grad_clip bounds the norm of the gradient the optimizer is given (the step reports the norm before
    clipping); weight_decay is AdamW's decoupled decay: a step with it is the step without it minus lr wd w."""
    images, labels = toy_data()
    x, y = images[:8].float() / 127.5 - 1, labels[:8]
    draws = EDMObjective().draw(torch.Generator().manual_seed(0), 8, x.shape[1:])
    norms = []
    for clip in (0.0, 1e-3):  # plain SGD at lr 1: the update is minus the gradient the optimizer was given
        model = tiny_model()
        before = [p.detach().clone() for p in model.parameters()]
        sgd = torch.optim.SGD(model.parameters(), lr=1.0)
        stats = train_step(model=model, objective=EDMObjective(), optimizer=sgd, x=x, y=y, draws=draws,
                           micro_batch=8, grad_clip=clip, precision="fp32", dist=CPU)  # fmt: skip
        update = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)])
        norms.append((stats.grad_norm, float(update.norm())))
    (raw, unclipped), (reported, clipped) = norms
    assert raw == pytest.approx(unclipped, rel=1e-5) and reported == pytest.approx(raw, rel=1e-5) and raw > 1e-2
    assert clipped == pytest.approx(1e-3, rel=1e-4)
    plain = weights(run(tmp_path / "a", 1, warmup=0, lr=1e-2).checkpoint)["model.safetensors"]
    decayed = weights(run(tmp_path / "b", 1, warmup=0, lr=1e-2, weight_decay=0.5).checkpoint)["model.safetensors"]
    for key, w0 in tiny_model().state_dict().items():
        if w0.is_floating_point():
            torch.testing.assert_close(decayed[key], plain[key] - 1e-2 * 0.5 * w0, atol=1e-6, rtol=1e-5)


def test_checkpoint_is_self_describing_and_rotated(tmp_path: Path) -> None:
    result = run(tmp_path, 20, keep_last=2)
    names = [p.name for p in checkpoint_dirs(tmp_path)]
    state = json.loads((result.checkpoint / "state.json").read_text())
    assert names[-2:] == ["ckpt-00000015", "ckpt-00000020"]
    assert len(names) <= 3 and f"ckpt-{state['best_step']:08d}" in names  # the best one is kept too
    model, _ = load_weights(result.checkpoint / "ema.safetensors")
    assert isinstance(model, ImageDiffiT) and model.config == tiny_model().config
    assert not any(
        k.startswith(("_orig_mod.", "module.")) for k in load_file(str(result.checkpoint / "model.safetensors"))
    )


def test_rotation_keeps_the_newest_keep_last_and_the_kept_steps(tmp_path: Path) -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters())
    for step in range(1, 7):  # step 2 stands for the best one, which train keeps however old
        save_checkpoint(tmp_path, step=step, model=model, ema=model, optimizer=opt, rng_states={}, state={},
                        keep_last=2, keep={2})  # fmt: skip
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["ckpt-00000002", "ckpt-00000005", "ckpt-00000006"]
    (tmp_path / "ckpt-00000009").mkdir()  # no state.json (a write or a removal cut short): not a checkpoint
    assert latest_checkpoint(tmp_path) == tmp_path / "ckpt-00000006"


def test_a_checkpoint_restores_weights_ema_optimizer_and_rng_bit_exactly_and_a_step_saved_again_replaces_it(
    tmp_path: Path,
) -> None:
    model, ema = tiny_model(), tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.1)
    for note in ("first", "second"):  # step 3 saved twice (a signal right after a periodic save): the second wins
        sum((p**2).sum() for p in model.parameters()).backward()
        opt.step()
        rng = {"rank0.cpu": torch.get_rng_state(), "rank1.cpu": torch.randint(0, 255, (16,), dtype=torch.uint8)}
        ckpt = save_checkpoint(tmp_path, step=3, model=model, ema=ema, optimizer=opt, rng_states=rng,
                               state={"note": note})  # fmt: skip
    assert checkpoint_dirs(tmp_path) == [ckpt]
    assert [read_metadata(ckpt / f"{n}.safetensors")["diffit.weights"] for n in ("model", "ema")] == ["raw", "ema"]
    model2, ema2 = tiny_model(), tiny_model()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    record, rng2 = load_checkpoint(ckpt, model=model2, ema=ema2, optimizer=opt2)
    assert (record["step"], record["note"]) == (3, "second")
    for a, b in ((model, model2), (ema, ema2)):
        assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    saved, restored = opt.state_dict(), opt2.state_dict()
    assert saved["param_groups"] == restored["param_groups"] and saved["state"].keys() == restored["state"].keys()
    assert all(torch.equal(v, restored["state"][i][k]) for i, s in saved["state"].items() for k, v in s.items())
    assert rng2.keys() == rng.keys() and all(torch.equal(rng2[k], v) for k, v in rng.items())


def test_load_model_takes_the_checkpoint_it_is_named_in_eval_mode(tmp_path: Path) -> None:
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters())
    for step in (1, 2):
        with torch.no_grad():
            model.head_conv.bias.fill_(step)
        save_checkpoint(tmp_path, step=step, model=model, ema=model, optimizer=opt, rng_states={}, state={})
    for source, use_ema, name, bias in ((tmp_path / "ckpt-00000001", True, "ema", 1), (tmp_path, False, "model", 2)):
        loaded = load_model(source, use_ema=use_ema)
        assert loaded.source["path"] == str(checkpoint_dirs(tmp_path)[bias - 1] / f"{name}.safetensors")
        assert loaded.source["weights"] == ("ema" if use_ema else "raw") and not loaded.model.training
        assert torch.equal(loaded.model.head_conv.bias, torch.full_like(model.head_conv.bias, bias))


def test_crash_mid_write_keeps_the_latest_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run(tmp_path, 5)
    before = latest_checkpoint(tmp_path)
    real_rename = os.rename

    def crash(src: object, dst: object) -> None:
        if str(dst).endswith("ckpt-00000010"):
            raise OSError("simulated crash during checkpoint")
        real_rename(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "rename", crash)
    with pytest.raises(OSError, match="simulated crash"):
        run(tmp_path, 10, resume=True)
    assert latest_checkpoint(tmp_path) == before  # the stray .tmp directory is ignored
    monkeypatch.undo()
    assert run(tmp_path, 10, resume=True).step == 10


class NaNObjective(EDMObjective):
    """EDM, but the loss is NaN at the given steps (counted by calls)."""

    def __init__(self, bad: set[int]) -> None:
        super().__init__()
        self.bad, self.calls = bad, 0

    def loss(self, model, x0, y, draws):  # type: ignore[no-untyped-def]
        out = super().loss(model, x0, y, draws)
        self.calls += 1
        return out * float("nan") if self.calls in self.bad else out


def test_non_finite_steps_are_skipped_then_the_run_stops(tmp_path: Path) -> None:
    images, labels = toy_data()
    data = lambda s: memory_batches(images, labels, batch_size=8, seed=0, start_step=s, flip=False)  # noqa: E731
    common: dict = dict(data=data, dist=CPU, batch_size=8, micro_batch=8, lr=1e-3, ckpt_every=2, log_every=1)
    result = train(model=tiny_model(), objective=NaNObjective({3}), run_dir=tmp_path / "a", steps=4, **common)
    assert result.skipped_steps == 1 and result.step == 4
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["skipped_steps"] == 1
    with pytest.raises(TrainingDiverged, match="3 consecutive steps had a non-finite loss"):
        train(
            model=tiny_model(),
            objective=NaNObjective({3, 4, 5}),
            run_dir=tmp_path / "b",
            steps=8,
            max_bad_steps=3,
            **common,
        )
    last = latest_checkpoint(tmp_path / "b")
    assert last is not None and last.name == "ckpt-00000002"
    model, _ = load_weights(last / "model.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_compiled_model_checkpoints_without_orig_mod(tmp_path: Path) -> None:
    # Dynamo cannot trace through the jaxtyping hook of the test run, so the compiled runs are a subprocess
    # (backend "eager": the wrapper and its `_orig_mod.` prefix without inductor's C++ build time), which also runs
    # the uncompiled reference (with its own thread count: a CPU matmul's rounding depends on it).
    script = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from pathlib import Path\n"
        "from test_train import run\n"
        f"print(run(Path({str(tmp_path / 'plain')!r}), 5).checkpoint)\n"
        "real, calls = torch.compile, []\n"
        "torch.compile = lambda m, **kw: calls.append(m) or real(m, backend='eager')\n"
        f"print(run(Path({str(tmp_path / 'run')!r}), 5, compile=True).checkpoint, len(calls))\n"
        "events = []\n"
        f"print(run(Path({str(tmp_path / 'blocks')!r}), 5, compile='blocks', callback=events.append).checkpoint, "
        "len(calls), sum(e['event'] == 'warning' for e in events))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plain, whole, calls_whole, blocks, calls_all, warned = proc.stdout.split()[-6:]
    assert int(calls_whole) == 1 and int(calls_all) - 1 == len(repeated_blocks(tiny_model())) == 3  # each ResBlock
    assert warned == "0"  # each ResBlock was called as a module: none ran eager
    for ckpt in (whole, blocks):
        for name in ("model.safetensors", "ema.safetensors"):
            keys = set(load_file(str(Path(ckpt) / name)))
            assert keys == set(tiny_model().state_dict()), name
        # The same weights as the uncompiled run: dynamo's graphs call the same operators in the same order.
        assert all(torch.equal(a, b) for a, b in zip(_flat(Path(ckpt)), _flat(Path(plain)), strict=True))
    compiled = torch.compile(tiny_model(), backend="eager")  # wrapping only; never called under the hook
    assert unwrap(compiled) is compiled._orig_mod
    assert set(strip_wrapper_prefixes(compiled.state_dict())) == set(tiny_model().state_dict())


def _flat(ckpt: Path) -> list[torch.Tensor]:
    return [t for name, state in sorted(weights(ckpt).items()) for _, t in sorted(state.items())]


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # dynamo's import
def test_compile_blocks_compiles_the_repeated_blocks_for_the_run_only(tmp_path: Path) -> None:
    model = tiny_model()
    blocks = repeated_blocks(model)
    assert [type(b).__name__ for b in blocks] == ["ResBlock"] * 3
    with compiled_blocks(model) as compiled:  # compiling wraps lazily: nothing is traced until a call
        assert compiled.blocks == blocks and all(b._compiled_call_impl is not None for b in blocks)
        assert compiled.missed() == blocks  # none called yet
        assert sum(m._compiled_call_impl is not None for m in model.modules()) == 3
        assert set(model.state_dict()) == set(tiny_model().state_dict())
    assert all(m._compiled_call_impl is None for m in model.modules())
    with pytest.raises(
        ValueError, match="^compile: 'blocks' compiles the elements of the model's nn.ModuleLists, and "
    ):
        repeated_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    for bad in ("yes", "Blocks"):  # other types are the typecheck hook's (beartype) in this suite
        with pytest.raises(ValueError, match=f"^compile must be a bool, 'model' or 'blocks', got {bad!r}$"):
            run(tmp_path / "bad", 1, compile=bad)
    assert not (tmp_path / "bad").exists()


def test_ema_update_and_warmup() -> None:
    model = tiny_model()
    ema = make_ema(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    ema_update(ema, model, 0.75)
    for (k, p), (_, q) in zip(ema.named_parameters(), model.named_parameters(), strict=True):
        torch.testing.assert_close(p, 0.75 * before[k] + 0.25 * q)
    assert ema_decay(0, decay=0.9999) == pytest.approx(0.1) and ema_decay(10**7, decay=0.9999) == 0.9999
    assert lr_at(0, lr=1.0, warmup=4) == 0.25 and lr_at(10, lr=1.0, warmup=4) == 1.0
    # Buffers are copied, not averaged: a user model's BatchNorm statistics (diffit's own buffers never change).
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    averaged = make_ema(net)
    net(torch.randn(8, 3))  # train mode: the running statistics move
    ema_update(averaged, net, 0.75)
    assert all(torch.equal(b, dict(net.named_buffers())[k]) for k, b in averaged.named_buffers())
    assert not torch.equal(averaged[1].running_mean, torch.zeros(4))


def test_objectives_draw_the_training_distributions() -> None:
    """EDM: ln sigma ~ N(-1.2, 1.2^2) (Table 1; 0.05 is 6 std errors at n = 20k); ADM: t uniform on 0..T-1."""
    edm = EDMObjective().draw(torch.Generator().manual_seed(0), 20_000, (2,))
    log_sigma = edm["sigma"].log()
    assert abs(log_sigma.mean().item() + 1.2) < 0.05 and abs(log_sigma.std().item() - 1.2) < 0.05
    assert edm["noise"].shape == (20_000, 2) and abs(edm["noise"].std().item() - 1) < 0.02
    t = ADMObjective().draw(torch.Generator().manual_seed(0), 20_000, (2,))["t"]
    assert (t.min().item(), t.max().item()) == (0, 999) and torch.bincount(t, minlength=1000).min() > 0


def test_training_steps_update_the_ema_with_the_warmup_decay_of_their_index(tmp_path: Path) -> None:
    """Update k (0-based) uses ema_decay(k): after one step the EMA is 0.1 init + 0.9 model (decay min(0.9, 1/10))."""
    init = {k: v.float() for k, v in tiny_model().state_dict().items()}
    w = weights(run(tmp_path, 1, ema=0.9, ckpt_every=1).checkpoint)
    for key, value in w["ema.safetensors"].items():
        if key in init and value.is_floating_point():
            torch.testing.assert_close(value, 0.1 * init[key] + 0.9 * w["model.safetensors"][key].float(), msg=key)


def test_collectives_wait_until_another_thread_lets_go_and_give_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """``_collective`` returns once no other holder keeps its tensors (here a thread that lets go after 50 ms);
    a holder that never lets go ends the waiting for good, with one warning."""
    import threading
    import warnings

    import diffit.distributed as D

    two_ranks = DistInfo(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    t, held = torch.zeros(1), []
    monkeypatch.setattr(D, "_settling", [True])
    start = time.monotonic()
    D._collective(lambda: (held.append(t), threading.Timer(0.05, held.clear).start()), [t], two_ranks)
    assert not held and time.monotonic() - start >= 0.04
    monkeypatch.setattr(D, "SETTLE_TIMEOUT_S", 0.01)
    with pytest.warns(RuntimeWarning, match="later collectives no longer wait"):
        D._collective(lambda: held.append(t), [t], two_ranks)
    monkeypatch.setattr(D.time, "sleep", lambda s: pytest.fail("waited after giving up"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D._collective(lambda: held.append(t), [t], two_ranks)  # no more waiting, no second warning
    assert D._settling == [False]
    gathered = D.all_gather(t, CPU)  # a single process gathers its own tensor
    assert len(gathered) == 1 and gathered[0] is t


def test_a_process_torchrun_started_alone_joins_a_group_and_a_plain_one_does_not() -> None:
    """Under torchrun (RANK, MASTER_ADDR...) even a world of one creates the process group, so a one-GPU job runs
    the DDP code of a multi-GPU one; a plain process creates none."""
    code = (
        "from diffit.distributed import init_distributed, shutdown; i = init_distributed('cpu'); "
        "print(i.group, i.enabled, i.world_size); shutdown(i)"
    )
    torchrun = {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    plain = {k: v for k, v in os.environ.items() if k not in torchrun}
    found = [
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60).stdout.split()
        for env in ({**plain, **torchrun}, plain)
    ]
    assert found == [["True", "True", "1"], ["False", "False", "1"]]


@pytest.mark.slow
def test_ranks_exit_cleanly_right_after_a_collective(tmp_path: Path) -> None:
    """A rank that leaves right after diffit's collectives, with DDP still holding the gloo group, exits with 0.

    A gloo worker thread lets go of a collective's tensors just after it completes, and that takes the GIL: at
    interpreter shutdown it aborted the process ("terminate called without an active exception", CI). The
    collectives now wait for it. Without the wait this test failed 4 times in 4, each within its first 3 pairs.
    """
    script = tmp_path / "worker.py"
    script.write_text(
        "import torch\n"
        "from diffit.distributed import all_gather, all_reduce_max, init_distributed, shutdown\n"
        "info = init_distributed('cpu')\n"
        "ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))  # holds the group past shutdown\n"
        "assert all_reduce_max(torch.tensor([float(info.rank)]), info).item() == 1.0\n"
        "rows = all_gather(torch.arange(3 * info.rank, dtype=torch.uint8).view(-1, 3), info)  # 0 rows, then 1\n"
        "assert [r.tolist() for r in rows] == [[], [[0, 1, 2]]], rows\n"
        "shutdown(info)\n"
    )
    for _ in range(5):  # one pair at a time: a loaded machine hides the race
        run_two_ranks(script)


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from pathlib import Path\n"
        "from safetensors.torch import save_file\n"
        "from diffit.distributed import init_distributed, shutdown\n"
        "import diffit.train as T\n"
        "from test_train import run\n"
        "torch.set_num_threads(1)\n"
        "dist = init_distributed('cpu')\n"
        "seen = {}\n"
        "orig = T.make_ema\n"
        "def spy(model):\n"
        "    seen['model'] = model\n"
        "    return orig(model)\n"
        "T.make_ema = spy\n"
        f"run(Path({str(tmp_path / 'ddp')!r}), 3, dist=dist, micro_batch=2, log_every=1)\n"
        "save_file({k: v.contiguous() for k, v in seen['model'].state_dict().items()},\n"
        f"          {str(tmp_path)!r} + f'/rank{{dist.rank}}.safetensors')\n"
        "shutdown(dist)\n"
    )
    run_two_ranks(script)
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # replicas stay bit-identical
    single = weights(run(tmp_path / "single", 3, micro_batch=4, log_every=1).checkpoint)["model.safetensors"]
    for k in r0:
        torch.testing.assert_close(r0[k], single[k], atol=5e-5, rtol=1e-4)
    logged = [[e["loss"] for e in map(json.loads, (tmp_path / d / "log.jsonl").read_text().splitlines())
               if e["event"] == "log"] for d in ("ddp", "single")]  # fmt: skip
    assert len(logged[0]) == 3 and logged[0] == pytest.approx(logged[1], rel=1e-4)  # the mean over both ranks


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "diffit_cli.main",
        "train",
        "--steps",
        "100000",
        "--batch-size",
        "8",
        "--log-every",
        "1",
        "--ckpt-every",
        "100000",
        "--sample-every",
        "0",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "log.jsonl").is_file():
        time.sleep(0.2)
    assert (out / "log.jsonl").is_file(), proc.stderr.read() if proc.poll() is not None else "no log"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    last = latest_checkpoint(out)
    assert last is not None
    step = json.loads((last / "state.json").read_text())["step"]
    assert 1 <= step < 100000 and "interrupted" in err

"""Quality at equal compute: DiffiT against a U-Net and a DiT-style transformer, and the paper's ablations.

Every network is trained by the library's own ``diffit.train.train`` with one recipe (EDM objective, batch 128,
AdamW lr 6e-4 with 200 warm-up steps, EMA 0.999, label dropout 0.1, no flips) on the held-in 80 % of the bundled
digits (stratified split, ``random_state=0``: 1,437 held in, 360 held out), and measured twice per run:

- at **equal compute**: when the run has used ``--budget`` CPU-seconds of training (process CPU time, one thread
  per run, evaluation excluded). On this 2-core machine two runs go side by side, one per core, so a run's CPU
  time is its wall-clock time on a core of its own; counting CPU time keeps the budget honest when the machine
  is shared.
- at **equal steps**: after ``--steps`` optimizer steps (a run still short of them at the budget trains on).

Metrics, on the EMA weights:

1. **held-out loss**: EDM's weighted denoising loss on the 360 held-out digits with their labels, at 8 fixed
   sigmas (the octiles of the training distribution ln sigma ~ N(-1.2, 1.2^2)) and fixed noise: the training
   objective on unseen data, with no sampling noise.
2. **conditional accuracy**: an SVM trained on the real held-in digits labels 360 samples (class i % 10,
   seeds 0..359, Heun 18 steps = 35 NFE, no guidance) with their conditioning class.
3. **FID** of those 360 samples against the real held-in digits (TF-FID Inception, 16x16 upsampled to
   299x299), beside the real held-out digits' FID at the same n (the floor).

Configurations (``CONFIGS``): ``diffit`` is ``diffit_tiny()``; ``unet`` diffusers' ``UNet2DModel`` and ``dit`` a
DiT of adaLN-Zero blocks (``arch_baselines.py``). ``diffit-label1-tanh`` is the previous preset (an N(0, 1) label
table and GELU-tanh), and the other ``diffit-*`` rows change one thing of it: how the time token enters
(``time_conditioning``: adaLN-Zero, bias-only, added to the input), global attention per stage, or the label
table's initialisation (``diffit-label<std>``; 0.02 is DiT's). ``diffit-mlp4`` is the preset before (the paper's
MLP ratio 4), and the comparison also runs two other initialisations of it: the time MLP at torch's init instead
of N(0, 0.02) (``diffit-torch-time``), and that with the output convolution at torch's init instead of zero
(``diffit-default-head``). The preset search (suite ``presets``) measures head width 16 and window 8 on either
MLP ratio, per step.

Each run writes ``<out>/runs/<config>-s<seed>.json`` and is skipped when that file exists with the same
protocol, so an interrupted benchmark resumes and more seeds can be added later; ``--report`` only rebuilds
``<out>/architectures.{md,json,png}`` from the runs.

Run:  python benchmarks/bench_architectures.py --suite comparison   # 8 configs x 3 seeds x 360 CPU-s
      python benchmarks/bench_architectures.py --suite ablations --seeds 0 1  # 10 variants, 150 CPU-s
      python benchmarks/bench_architectures.py --suite presets    # 6 candidate presets, seed 0, 720 steps each
      python benchmarks/bench_architectures.py --configs diffit unet --seeds 0 1 --lr 0.0024  # -> comparison/lr0.0024
      python benchmarks/bench_architectures.py --configs diffit unet --seeds 0 --budget 60 --steps 50 --out /tmp/a

``--lr`` and ``--label-dropout`` change the recipe for every network; such runs go to a folder named after the change.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arch_baselines import DiTBaseline, UNetBaseline  # noqa: E402
from bench_quality import features, generate_digits  # noqa: E402

from diffit.data import digits_urls, load_images, memory_batches  # noqa: E402
from diffit.distributed import DistInfo  # noqa: E402
from diffit.evaluation import FeatureStats, feature_statistics, frechet_distance, load_inception  # noqa: E402
from diffit.generate import default_sigmas  # noqa: E402
from diffit.nn import count_params, diffit_tiny  # noqa: E402
from diffit.objectives import EDMObjective  # noqa: E402
from diffit.train import train  # noqa: E402

# The preset before the current one (MLP ratio 2, the release's GELU-tanh, an N(0, 1) label table): the base of the
# ablations, the presets search and the label-initialisation rows, so that their filed runs keep their meaning.
PREVIOUS = {"label_init_std": 1.0, "gelu": "tanh"}


def previous(**overrides: object) -> nn.Module:
    """``diffit_tiny`` as it was before its label table and GELU changed, with ``overrides``."""
    return diffit_tiny(**(PREVIOUS | overrides))


CONFIGS: dict[str, Callable[[], nn.Module]] = {
    "diffit": lambda: diffit_tiny(),
    "unet": lambda: UNetBaseline(),
    "dit": lambda: DiTBaseline(),
    "diffit-label1-tanh": lambda: previous(),
    "diffit-adaln": lambda: previous(time_conditioning="adaln"),
    "diffit-bias": lambda: previous(time_conditioning="bias"),
    "diffit-input": lambda: previous(time_conditioning="input"),
    "diffit-global": lambda: previous(window=(16, 8, 4)),
    # The label table's initialisation: DiT's N(0, 0.02), and around N(0, 1).
    "diffit-label0.02": lambda: previous(label_init_std=0.02),
    "diffit-label0.25": lambda: previous(label_init_std=0.25),
    "diffit-label0.5": lambda: previous(label_init_std=0.5),
    "diffit-label2": lambda: previous(label_init_std=2.0),
    "diffit-label4": lambda: previous(label_init_std=4.0),
    # The preset before that (MLP ratio 4) and, on it, two other initialisations: the time MLP at torch's nn.Linear
    # init instead of N(0, 0.02), and that with torch's init for the output convolution instead of zero.
    "diffit-mlp4": lambda: previous(mlp_ratio=4.0),
    "diffit-torch-time": lambda: previous(mlp_ratio=4.0, time_init_std=None),
    "diffit-default-head": lambda: previous(mlp_ratio=4.0, time_init_std=None, zero_head=False),
    # The preset search (suite "presets"): head width 16 and window 8, on either MLP ratio.
    "diffit-heads16": lambda: previous(num_heads=(2, 4, 8)),
    "diffit-w8": lambda: previous(window=(8, 8, 4)),
    "diffit-mlp4-heads16": lambda: previous(mlp_ratio=4.0, num_heads=(2, 4, 8)),
    "diffit-mlp4-w8": lambda: previous(mlp_ratio=4.0, window=(8, 8, 4)),
}
# Three suites of one protocol: the architecture comparison (also measured at equal steps), the ablations of
# the previous preset (equal compute only, a shorter budget), and the search for the tiny preset (equal steps: the
# loss per step of each candidate, which does not depend on the machine's speed; img/CPU-s gives its cost).
SUITES = {
    "comparison": {"configs": ["diffit", "unet", "dit", "diffit-label1-tanh", "diffit-label0.5", "diffit-mlp4",
                               "diffit-torch-time", "diffit-default-head"], "budget": 360.0, "steps": 400,
                   "seeds": [0, 1, 2]},
    "ablations": {
        "configs": ["diffit-label1-tanh", "diffit-adaln", "diffit-bias", "diffit-input", "diffit-global",
                    "diffit-label0.02", "diffit-label0.25", "diffit-label0.5", "diffit-label2", "diffit-label4"],
        "budget": 150.0, "steps": 0, "seeds": [0, 1, 2],
    },
    "presets": {"configs": ["diffit-mlp4", "diffit-mlp4-heads16", "diffit-mlp4-w8", "diffit-label1-tanh",
                            "diffit-heads16", "diffit-w8"], "budget": 30.0, "steps": 720, "seeds": [0]},
}  # fmt: skip
RECIPE = {"batch_size": 128, "lr": 6e-4, "warmup": 200, "ema": 0.999, "label_dropout": 0.1}
LOSS_SIGMAS = 8
SAMPLE_STEPS = 18
PROTOCOL_VERSION = 1


class _Finished(Exception):
    """Raised from the training hook once both measurements are taken."""


def digits_split() -> dict[str, torch.Tensor]:
    """The fixed held-in / held-out split of the bundled digits (uint8 images, labels)."""
    from sklearn.model_selection import train_test_split

    images, labels = load_images(digits_urls())
    held_in, held_out = train_test_split(np.arange(len(images)), test_size=0.2, stratify=labels.numpy(), random_state=0)
    return {"x_in": images[held_in], "y_in": labels[held_in], "x_out": images[held_out], "y_out": labels[held_out]}


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


@torch.no_grad()
def heldout_loss(model: nn.Module, objective: EDMObjective, x: torch.Tensor, y: torch.Tensor) -> float:
    """EDM's weighted loss at the octiles of the training sigma distribution, with fixed noise."""
    dist = statistics.NormalDist(objective.P_mean, objective.P_std)
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(20_260_000)
    total = 0.0
    for i in range(LOSS_SIGMAS):
        sigma = torch.full((len(x),), float(np.exp(dist.inv_cdf((i + 0.5) / LOSS_SIGMAS))))
        noise = torch.randn(x.shape, generator=g)
        total += float(objective.loss(model, x, y, {"sigma": sigma, "noise": noise}).mean())
    model.train(was_training)
    return total / LOSS_SIGMAS


def generated_digits(model: nn.Module, objective: EDMObjective, n: int, batch: int = 120) -> torch.Tensor:
    """uint8 (n, 1, 16, 16): seeds 0..n-1, class i % 10, Heun 18 steps, no guidance (``bench_quality``'s
    sampling loop, in eval mode)."""
    was_training = model.training
    model.eval()
    sigmas = default_sigmas(model, SAMPLE_STEPS, objective=objective)
    images, _ = generate_digits(model, "heun", sigmas, n, batch, cfg=1.0, objective=objective)
    model.train(was_training)
    return images


def fit_classifier(split: dict[str, torch.Tensor]):  # noqa: ANN201 (sklearn type)
    from sklearn.svm import SVC

    flat = split["x_in"].reshape(len(split["x_in"]), -1).float().numpy() / 255.0
    return SVC(C=10.0, gamma="scale").fit(flat, split["y_in"].numpy())


def evaluate(model: nn.Module, objective: EDMObjective, split: dict, clf, real: FeatureStats, n: int,  # noqa: ANN001
             inception: nn.Module, loss: float | None = None) -> dict:  # fmt: skip
    """The three metrics of one snapshot (see the module docstring); ``loss``: its held-out loss, if known."""
    x_out, y_out = to_model_space(split["x_out"]), split["y_out"]
    fake = generated_digits(model, objective, n)
    predicted = clf.predict(fake.reshape(n, -1).float().numpy() / 255.0)
    fake_stats = feature_statistics(features(inception, fake, batch=60))
    return {
        "heldout_loss": heldout_loss(model, objective, x_out, y_out) if loss is None else loss,
        "accuracy": float((predicted == (np.arange(n) % 10)).mean()),
        "fid": float(frechet_distance(fake_stats.mu, fake_stats.sigma, real.mu, real.sigma)),
    }


def protocol(args: argparse.Namespace) -> dict:
    return {"version": PROTOCOL_VERSION, "budget": args.budget, "steps": args.steps, "n": args.n,
            "curve_every": args.curve_every, "recipe": args.recipe}  # fmt: skip


def run_one(args: argparse.Namespace) -> None:
    """Train one (config, seed) on one thread and write its JSON (called in a child process)."""
    torch.set_num_threads(1)
    out = Path(args.out)
    split = digits_split()
    clf = fit_classifier(split)
    real = np.load(out / "real_stats.npz")
    real_stats = FeatureStats(mu=real["mu"], sigma=real["sigma"], count=int(real["count"]))
    inception = load_inception()  # once per run: both measurements use it
    objective = EDMObjective()
    torch.manual_seed(args.seed)
    model = CONFIGS[args.one]()
    y_in = split["y_in"]
    x_out, y_out = to_model_space(split["x_out"]), split["y_out"]

    recipe = args.recipe

    def batches(start: int):  # noqa: ANN202
        return memory_batches(split["x_in"], y_in, batch_size=recipe["batch_size"], seed=args.seed, start_step=start,
                              flip=False)  # fmt: skip

    result: dict = {"config": args.one, "seed": args.seed, "params": count_params(model), "protocol": protocol(args),
                    "curve": [], "at": {}}  # fmt: skip
    spent = {"eval": 0.0}
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    next_curve = [0.0]
    equal_steps = args.steps > 0

    def train_cpu() -> float:
        return time.process_time() - start_cpu - spent["eval"]

    def hook(step: int, ema_model: nn.Module) -> None:
        cpu = train_cpu()
        begin = time.process_time()
        loss = None  # this step's held-out loss, once computed
        if cpu >= next_curve[0]:
            loss = heldout_loss(ema_model, objective, x_out, y_out)
            result["curve"].append({"step": step, "cpu_s": cpu, "heldout_loss": loss})
            next_curve[0] += args.curve_every
        for mode, reached in (("budget", cpu >= args.budget), ("steps", step >= args.steps and equal_steps)):
            if reached and mode not in result["at"]:
                other = next((v for v in result["at"].values() if v["step"] == step), None)
                if other is None:
                    metrics = evaluate(ema_model, objective, split, clf, real_stats, args.n, inception, loss)
                else:
                    metrics = dict(other["metrics"])
                result["at"][mode] = {
                    "step": step, "cpu_s": cpu, "wall_s": time.perf_counter() - start_wall,
                    "images_per_cpu_s": step * recipe["batch_size"] / cpu, "metrics": metrics,
                }  # fmt: skip
        spent["eval"] += time.process_time() - begin
        if len(result["at"]) == (2 if equal_steps else 1):
            raise _Finished

    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            train(model=model, objective=objective, data=batches, run_dir=Path(tmp), dist=dist, steps=10**7,
                  batch_size=recipe["batch_size"], lr=recipe["lr"], warmup=recipe["warmup"], ema=recipe["ema"],
                  label_dropout=recipe["label_dropout"], seed=args.seed, ckpt_every=10**7, log_every=10**6,
                  sample_every=5, on_sample=hook)  # fmt: skip
        except _Finished:
            pass
    if len(result["at"]) < (2 if equal_steps else 1):  # stopped early (train returns on SIGTERM): write nothing
        sys.exit(f"{args.one} seed {args.seed}: stopped before its measurements; no result written")
    path = out / "runs" / f"{args.one}-s{args.seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(result, indent=1))
    path.with_suffix(".tmp").replace(path)
    at = result["at"]["budget"]
    print(f"{args.one} seed {args.seed}: {at['step']} steps in {at['cpu_s']:.0f} CPU-s, {at['metrics']}", flush=True)


def real_statistics(out: Path, split: dict) -> dict:
    """Inception statistics of the held-in digits (cached) and the held-out digits' FID against them."""
    path = out / "real_stats.npz"
    if not path.exists():
        inception = load_inception()
        held_in = feature_statistics(features(inception, split["x_in"], batch=60))
        held_out = feature_statistics(features(inception, split["x_out"], batch=60))
        floor = frechet_distance(held_out.mu, held_out.sigma, held_in.mu, held_in.sigma)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(path, mu=held_in.mu, sigma=held_in.sigma, count=held_in.count, floor=floor)
    real = np.load(path)
    return {"floor_fid": float(real["floor"]), "n_held_in": int(real["count"])}


def finished_run(args: argparse.Namespace, name: str, seed: int) -> dict | None:
    """The result of (config, seed) under this protocol, or None when there is none yet."""
    path = Path(args.out) / "runs" / f"{name}-s{seed}.json"
    if not path.exists():
        return None
    run = json.loads(path.read_text())
    return run if run.get("protocol") == protocol(args) else None


def child_argv(args: argparse.Namespace, name: str, seed: int) -> list[str]:
    """The arguments of the child process that runs (config, seed) under ``args``'s protocol, into its folder."""
    return ["--one", name, "--seed", str(seed), "--budget", str(args.budget), "--steps", str(args.steps),
            "--lr", str(args.recipe["lr"]), "--label-dropout", str(args.recipe["label_dropout"]), "--n", str(args.n),
            "--curve-every", str(args.curve_every), "--out", args.out]  # fmt: skip


def run_all(args: argparse.Namespace, configs: list[str]) -> None:
    """Every (config, seed) without a result of this protocol, ``--jobs`` at a time, one thread each."""
    todo = [(name, seed) for seed in args.seeds for name in configs if finished_run(args, name, seed) is None]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    running: list[subprocess.Popen] = []
    for name, seed in todo:
        while len(running) >= args.jobs:
            time.sleep(1.0)
            running = [p for p in running if p.poll() is None]
        running.append(subprocess.Popen([sys.executable, __file__, *child_argv(args, name, seed)], env=env))
    for p in running:
        p.wait()


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def report(args: argparse.Namespace, configs: list[str], real: dict) -> None:
    out = Path(args.out)
    runs: dict[str, list[dict]] = {}
    for name in configs:
        for seed in args.seeds:
            if (run := finished_run(args, name, seed)) is not None:
                runs.setdefault(name, []).append(run)
    summary: dict = {"protocol": protocol(args), "real": real, "configs": {}}
    lines = [f"Budget {args.budget:g} CPU-s per run (one thread), or {args.steps} steps; n = {args.n} samples; "
             f"FID floor (real held-out vs held-in, n = 360): {real['floor_fid']:.2f}", ""]  # fmt: skip
    for mode, title in (("budget", f"equal compute ({args.budget:g} CPU-s)"), ("steps", f"equal steps ({args.steps})")):
        if mode == "steps" and args.steps <= 0:
            continue
        lines += [f"### {title}", "",
                  "| config | params | seeds | img/CPU-s | steps | held-out loss | accuracy | FID |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, group in runs.items():
            if any(mode not in r["at"] for r in group):
                continue
            ats = [r["at"][mode] for r in group]
            metric = {k: [a["metrics"][k] for a in ats] for k in ("heldout_loss", "accuracy", "fid")}
            speed = {"steps": [a["step"] for a in ats], "images_per_cpu_s": [a["images_per_cpu_s"] for a in ats]}
            summary["configs"].setdefault(name, {"params": group[0]["params"]})[mode] = metric | speed
            lines.append(
                f"| {name} | {group[0]['params'] / 1e6:.2f}M | {len(group)} | "
                f"{statistics.mean(a['images_per_cpu_s'] for a in ats):.0f} | "
                f"{statistics.mean(a['step'] for a in ats):.0f} | {mean_sd(metric['heldout_loss'])} | "
                f"{mean_sd(metric['accuracy'])} | {mean_sd(metric['fid'])} |"
            )
        lines.append("")
    (out / "architectures.md").write_text("\n".join(lines))
    (out / "architectures.json").write_text(json.dumps(summary, indent=1))
    plot(runs, out / "architectures.png", args.budget)
    print("\n".join(lines))


def plot(runs: dict[str, list[dict]], path: Path, budget: float) -> None:
    """Held-out loss against training CPU-seconds: the mean over seeds per config, seeds as thin lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for i, (name, group) in enumerate(runs.items()):
        color = f"C{i}"
        for run in group:
            ax.plot([c["cpu_s"] for c in run["curve"]], [c["heldout_loss"] for c in run["curve"]], color=color,
                    alpha=0.25, lw=0.8)  # fmt: skip
        k = min(len(r["curve"]) for r in group)
        xs = [statistics.mean(r["curve"][j]["cpu_s"] for r in group) for j in range(k)]
        ys = [statistics.mean(r["curve"][j]["heldout_loss"] for r in group) for j in range(k)]
        ax.plot(xs, ys, color=color, lw=2, label=name)
    ax.axvline(budget, color="gray", ls=":", lw=1)
    ax.set_xlabel("training CPU-seconds (one thread)")
    ax.set_ylabel("held-out denoising loss")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the suite's defaults, the recipe and the results folder filled in."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=list(SUITES), default="comparison", help="what to run (defaults below)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), help="default: the suite's")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2")
    parser.add_argument("--budget", type=float, help="training CPU-seconds per run (comparison 360, ablations 150)")
    parser.add_argument("--steps", type=int, help="the equal-steps measurement, 0 for none (comparison 400)")
    parser.add_argument("--lr", type=float, help=f"peak learning rate for every network (default {RECIPE['lr']})")
    parser.add_argument("--label-dropout", type=float, help=f"for every network (default {RECIPE['label_dropout']})")
    parser.add_argument("--n", type=int, default=360, help="samples for accuracy and FID")
    parser.add_argument("--curve-every", type=float, default=40.0, help="CPU-seconds between held-out losses")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (one thread each)")
    parser.add_argument("--out", help="default: benchmarks/results/architectures/<suite>[/<recipe change>]")
    parser.add_argument("--report", action="store_true", help="only rebuild the table and plot from the runs")
    parser.add_argument("--one", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    suite = SUITES[args.suite]
    for key in ("configs", "seeds", "budget", "steps"):
        if getattr(args, key) is None:
            setattr(args, key, suite[key])
    # --lr and --label-dropout are part of the recipe, so of the protocol: runs of another recipe are not reused, and
    # by default they go to a folder of their own (e.g. comparison/lr0.0012), beside the suite's runs, not over them
    changes = {"lr": args.lr, "label_dropout": args.label_dropout}
    args.recipe = RECIPE | {k: v for k, v in changes.items() if v is not None}
    variant = "-".join(f"{k}{v:g}" for k, v in args.recipe.items() if v != RECIPE[k])
    args.out = args.out or f"benchmarks/results/architectures/{args.suite}" + (f"/{variant}" if variant else "")
    return args


def main() -> None:
    args = parse_args()
    if args.one:
        run_one(args)
        return
    torch.set_num_threads(max(1, args.jobs))
    real = real_statistics(Path(args.out), digits_split())
    if not args.report:
        run_all(args, args.configs)
    report(args, args.configs, real)


if __name__ == "__main__":
    main()

"""Mutation check: inject small bugs (a flipped sign, an off-by-one, a dropped case) into diffit's core formulas
and confirm that the tests meant to guard each one fail.

    python benchmarks/mutants.py [--only SUBSTRING]

Each mutant is one source edit, applied to a copy of the working tree in a temporary folder (the checkout is never
touched), then the named tests run there with ``-x``. A mutant is caught when they fail. The list holds the
mutants that a hand-made pass (2026-11-27) found surviving the suite, with the tests added for them, beside the
caught ones that guard the same promises: resume and exact-once data, the shards' bytes and content hash, the
EDM/ADM formulas, samplers, guidance, EMA, checkpoint rotation, the U-Net and its blocks, the release loader, what a
run decides from its data, the collectives, the CLI's options and evaluation. Prints one row per mutant and exits 1
if any survived (docs/benchmarks.md, "Mutation check", lists each pass).
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINES, SHARDS = "tests/test_data_pipelines.py", "tests/test_data_shards.py"
TRAIN = "tests/test_train.py"
ENCODE = "tests/test_data_encode.py"
AUGMENT, EVAL = "tests/test_augment.py", "tests/test_eval.py"
SAMPLE, NFE = "tests/test_sample.py", "tests/test_sample_nfe.py"
MULTISTEP = "tests/test_diffusion_multistep.py"
EMA_TEST = TRAIN + "::test_ema_update_and_warmup"
UNET, LATENT, RELEASE = "tests/test_nn_unet.py", "tests/test_nn_latent.py", "tests/test_release.py"
TRAIN_CLI = "tests/test_train_cli.py::test_every_option_reaches_train_with_its_value"
WRITE = [SHARDS, "tests/test_data_cli.py"]
RUNS = ["tests/test_open_library.py", "tests/test_reliability.py", "tests/test_train_cli.py"]

# (file, original text, mutated text, tests that must fail)
MUTANTS: list[tuple[str, str, str, list[str]]] = [
    # data: shards and bad-sample accounting
    ("diffit/data/shards.py", "else int(broken is not None)", "else 0", [PIPELINES, SHARDS]),
    ("diffit/data/shards.py", "if yielded == expected:", "if yielded == expected and False:", [PIPELINES, SHARDS]),
    (
        "diffit/data/shards.py",
        "range(max(lost, 0) if pad else 0)",
        "range(max(lost - 1, 0) if pad else 0)",
        [PIPELINES],
    ),
    ("diffit/data/shards.py", "self._count.value += count", "self._count.value += 1", [PIPELINES, SHARDS]),
    ("diffit/data/shards.py", "elif log is not None and yielded == 0:", "elif False:", [PIPELINES, SHARDS]),
    (
        "diffit/data/shards.py",
        "all(n in listed for n in names) else None",
        "any(n in listed for n in names) else None",
        [PIPELINES, SHARDS],
    ),
    # data: streams (resume, exact-once evaluation)
    (
        "diffit/data/streams.py",
        "return max(0, (sum(counts) - index + total - 1) // total)",
        "return max(0, (sum(counts) - index + total - 1) // total) + (total > 1)",
        [PIPELINES],
    ),
    (
        "diffit/data/streams.py",
        "epoch=epoch, index=index, total=total, shuffle=True)",
        "epoch=epoch, index=index, total=total, shuffle=False)",
        [PIPELINES],
    ),
    ("diffit/data/streams.py", "(self.start_step + worker) // workers", "self.start_step // workers", [PIPELINES]),
    (
        "diffit/data/streams.py",
        "shuffle_buffer=self.shuffle_buffer, pad=True)",
        "shuffle_buffer=self.shuffle_buffer, pad=False)",
        [PIPELINES],
    ),
    ("diffit/data/streams.py", "index=sh.rank * workers + worker", "index=sh.rank + worker", [PIPELINES]),
    (
        "diffit/data/streams.py",
        "islice(samples, index, None, total)",
        "islice(samples, index, None, max(total - 1, 1))",
        [PIPELINES],
    ),
    ("diffit/data/streams.py", "shard_log = None if shared and index else log", "shard_log = log", [PIPELINES]),
    ("diffit/data/streams.py", "if raw.get(LOST):", "if False:", [PIPELINES]),
    (
        "diffit/data/streams.py",
        "order[index::total] if n_shards >= total",
        "order[index::total] if n_shards > total",
        [PIPELINES],
    ),
    # data: in-memory batches
    ("diffit/data/memory.py", "_permutation(n, seed, int(epoch))", "_permutation(n, seed, 0)", [PIPELINES]),
    ("diffit/data/memory.py", ".random(batch_size)[lo:hi] < 0.5", ".random(batch_size)[: hi - lo] < 0.5", [PIPELINES]),
    # data: pixels and latents as decoded, and the encoding of images and their mirrors
    ("diffit/data/images.py", "np.full((h, 1), 2, np.uint8)", "np.full((h, 1), 0, np.uint8)", [SHARDS, PIPELINES]),
    (
        "diffit/data/images.py",
        "left, top = (img.size[0] - resolution) // 2,",
        "left, top = 0,",
        [SHARDS, PIPELINES, "tests/test_data_cli.py"],
    ),
    ("diffit/data/images.py", "image = image[:, :, ::-1]", "image = image[:, ::-1, :]", [PIPELINES]),
    ("diffit/data/images.py", "view = 1 if self.flip", "view = 0 if self.flip", [PIPELINES, ENCODE]),
    ("diffit/data/images.py", "torch.addcmul(z[:, 0], z[:, 1], eps)", "z[:, 0]", [PIPELINES, ENCODE]),
    ("diffit/data/images.py", "x /= 127.5", "x /= 128.0", [PIPELINES]),
    ("diffit/data/images.py", "label >= classes)", "label > classes)", [PIPELINES, SHARDS]),
    ("diffit/data/encode.py", "torch.cat([x, x.flip(-1)])", "torch.cat([x, x.flip(-2)])", [ENCODE]),
    ("diffit/data/encode.py", "return dist.mean, dist.std", "return dist.mean, dist.var", [ENCODE]),
    ("diffit/data/encode.py", "mean[i::b], std[i::b]", "mean[2 * i : 2 * i + 2], std[2 * i : 2 * i + 2]", [ENCODE]),
    ("diffit/generate.py", "* 127.5).round().to(torch.uint8)", "* 127.5).to(torch.uint8)", ["tests/test_sample.py"]),
    # diffusion
    (
        "diffit/diffusion/denoisers.py",
        "c_skip = sigma_data**2 / total",
        "c_skip = sigma_data / total",
        ["tests/test_diffusion_denoisers.py"],
    ),
    (
        "diffit/diffusion/denoisers.py",
        "c_noise = sigma.log() / 4",
        "c_noise = sigma.log() / 2",
        ["tests/test_diffusion_denoisers.py"],
    ),
    (
        "diffit/diffusion/denoisers.py",
        "x_t = x / (1 + s**2).sqrt()",
        "x_t = x / (1 + s).sqrt()",
        ["tests/test_diffusion_denoisers.py"],
    ),
    (
        "diffit/diffusion/denoisers.py",
        "x0 = x - s * eps.to(x.dtype)",
        "x0 = x - s * s * eps.to(x.dtype)",
        ["tests/test_diffusion_denoisers.py"],
    ),
    (
        "diffit/diffusion/schedules.py",
        "sigmas = (hi + ramp * (lo - hi)) ** rho",
        "sigmas = (hi + ramp * (lo - hi)) ** (rho - 1)",
        ["tests/test_diffusion_schedules.py", "tests/test_diffusion_multistep.py"],
    ),
    (
        "diffit/diffusion/schedules.py",
        "stride = 1.0 if count <= 1 else (size - 1) / (count - 1)",
        "stride = 1.0 if count <= 1 else size / count",
        ["tests/test_diffusion_schedules.py"],
    ),
    (
        "diffit/diffusion/ode_samplers.py",
        "(sigma_next - sigma) * (d + d_next) / 2",
        "(sigma_next - sigma) * (d + d_next) / 2.1",
        ["tests/test_diffusion_samplers.py"],
    ),
    (
        "diffit/diffusion/ode_samplers.py",
        "d_eff = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised",
        "d_eff = (1 + 1 / (3 * r)) * denoised - (1 / (3 * r)) * old_denoised",
        ["tests/test_diffusion_samplers.py"],
    ),
    (
        "diffit/diffusion/ode_samplers.py",
        "math.sqrt(1 - (sigma_next / sigma) ** 2))",
        "math.sqrt(1 - (sigma_next / sigma) ** 1))",
        ["tests/test_diffusion_samplers.py"],
    ),
    (
        "diffit/diffusion/sde_samplers.py",
        "if S_tmin <= sigma <= S_tmax else 0.0",
        "if S_tmin <= sigma < S_tmax else 0.0",
        ["tests/test_diffusion_samplers.py"],
    ),
    (
        "diffit/diffusion/sde_samplers.py",
        "math.sqrt(2 * sigma * (sigma - sigma_next))",
        "math.sqrt(1.9 * sigma * (sigma - sigma_next))",
        ["tests/test_diffusion_samplers.py"],
    ),
    (
        "diffit/diffusion/losses.py",
        "weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2",
        "weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data)",
        ["tests/test_diffusion_losses.py"],
    ),
    (  # the one log-normal draw of edm_loss and EDMObjective (what train uses)
        "diffit/diffusion/losses.py",
        "dtype=torch.float32) * P_std + P_mean).exp()",
        "dtype=torch.float32) * P_std - P_mean).exp()",
        ["tests/test_diffusion_losses.py", TRAIN + "::test_objectives_draw_the_training_distributions"],
    ),
    (  # ADM's timesteps, also ADMObjective's
        "diffit/diffusion/losses.py",
        "torch.randint(0, num_timesteps, (batch_size,)",
        "torch.randint(0, num_timesteps - 1, (batch_size,)",
        [TRAIN + "::test_objectives_draw_the_training_distributions"],
    ),
    (
        "diffit/diffusion/guidance.py",
        "guided[:, :k] = uncond[:, :k] + s *",
        "guided[:, :k] = cond[:, :k] + s *",
        ["tests/test_diffusion_guidance.py"],
    ),
    (
        "diffit/diffusion/guidance.py",
        "torch.full_like(y, self.num_classes)])",
        "torch.full_like(y, self.num_classes - 1)])",
        ["tests/test_diffusion_guidance.py"],
    ),
    (
        "diffit/diffusion/guidance.py",
        "(1 - t / T) ** self.power))",
        "(1 - t / T) ** (self.power + 1)))",
        ["tests/test_diffusion_guidance.py"],
    ),
    (
        "diffit/diffusion/guidance.py",
        "return (sigma >= self.interval[0]) &",
        "return (sigma > self.interval[0]) &",
        ["tests/test_diffusion_guidance.py"],
    ),
    # multistep samplers
    ("diffit/diffusion/multistep.py", "phi_3 = phi_2 / h - 0.5", "phi_3 = phi_2 / h - 0.4", [MULTISTEP]),
    ("diffit/diffusion/multistep.py", "/ (r0 + r1)", "/ (r0 + r1 + 0.1)", [MULTISTEP]),
    ("diffit/diffusion/multistep.py", "phi_2 * d1 - 2 * phi_3 * d2", "phi_2 * d1 - phi_3 * d2", [MULTISTEP]),
    ("diffit/diffusion/multistep.py", "(23 / 12, -16 / 12, 5 / 12)", "(23 / 12, -15 / 12, 4 / 12)", [MULTISTEP]),
    (
        "diffit/diffusion/multistep.py",
        "(55 / 24, -59 / 24, 37 / 24, -9 / 24)",
        "(55 / 24, -59 / 24, 36 / 24, -8 / 24)",
        [MULTISTEP],
    ),
    ("diffit/diffusion/multistep.py", "h_phi_k / hh - 1 / factorial", "h_phi_k / hh - 1.01 / factorial", [MULTISTEP]),
    # training: objectives, EMA, learning rate, checkpoints
    ("diffit/ema.py", "(1.0 + step) / (10.0 + step)", "(1.0 + step) / (9.0 + step)", [EMA_TEST]),
    ("diffit/ema.py", "dtype), 1.0 - decay)", "dtype), decay)", [EMA_TEST]),
    ("diffit/train.py", "min(1.0, (step + 1) / warmup)", "min(1.0, step / warmup)", [EMA_TEST]),
    (
        "diffit/train.py",
        "ema_decay(run.step - 1, decay=ema",
        "ema_decay(run.step, decay=ema",
        [TRAIN + "::test_training_steps_update_the_ema_with_the_warmup_decay_of_their_index"],
    ),
    (
        "diffit/checkpoint.py",
        "checkpoint_dirs(run_dir)[:-keep_last]",
        "checkpoint_dirs(run_dir)[: -keep_last - 1]",
        [TRAIN + "::test_rotation_keeps_the_newest_keep_last_and_the_kept_steps"],
    ),
    (
        "diffit/checkpoint.py",
        "        if old not in protected:\n",
        "        if True:\n",
        [TRAIN + "::test_rotation_keeps_the_newest_keep_last_and_the_kept_steps"],
    ),
    (
        "diffit/checkpoint.py",
        'and _CKPT_RE.match(p.name) and (p / "state.json").is_file()]',
        "and _CKPT_RE.match(p.name)]",
        [TRAIN + "::test_rotation_keeps_the_newest_keep_last_and_the_kept_steps"],
    ),
    # generation: guidance settings as they reach the guided denoiser
    (
        "diffit/generate.py",
        "guidance_channels=guidance.channels, interval=guidance.interval",
        "guidance_channels=None, interval=guidance.interval",
        [SAMPLE],
    ),
    (
        "diffit/generate.py",
        "guidance_channels=guidance.channels, interval=guidance.interval",
        "guidance_channels=guidance.channels, interval=None",
        [SAMPLE],
    ),
    (
        "diffit/generate.py",
        "    if guidance.scale == 1.0:\n        _warn_unused(guidance)\n        return bind_labels",
        "    if guidance.scale <= 1.0:\n        _warn_unused(guidance)\n        return bind_labels",
        [SAMPLE],
    ),
    ("diffit/generate.py", "((levels >= lo) & (levels <= hi))", "((levels > lo) & (levels <= hi))", [SAMPLE]),
    # training step: micro-batches, clipping, the optimizer; EDM's augmentation
    ("diffit/train.py", "(loss * (micro_batch / n)).backward()", "loss.backward()", [TRAIN]),
    (
        "diffit/train.py",
        "grad_clip if grad_clip > 0 else math.inf",
        "2 * grad_clip if grad_clip > 0 else math.inf",
        [TRAIN],
    ),
    ("diffit/train.py", "total += loss.detach() * (micro_batch / n)", "total += loss.detach()", [TRAIN]),
    ("diffit/train.py", "betas=betas, weight_decay=weight_decay\n", "betas=betas, weight_decay=0.0\n", [TRAIN]),
    ("diffit/augment.py", "[1 - 2 * fx, 1 - 2 * fy]", "[1 - 2 * fy, 1 - 2 * fx]", [AUGMENT]),
    (
        "diffit/augment.py",
        "shift = torch.stack([tx, ty], dim=1) * 2",
        "shift = torch.stack([tx, ty], dim=1)",
        [AUGMENT],
    ),
    ("diffit/augment.py", "[2.0**w, 2.0**-w]", "[2.0**w, 2.0**w]", [AUGMENT]),
    # nn
    (
        "diffit/nn/windows.py",
        "rel = coords[:, :, None] - coords[:, None, :]",
        "rel = coords[:, None, :] - coords[:, :, None]",
        ["tests/test_nn_core.py"],
    ),
    (
        "diffit/nn/embeddings.py",
        "dtype=dtype, device=t.device) / half)",
        "dtype=dtype, device=t.device) / (half - 1))",
        ["tests/test_nn_core.py"],
    ),
    (
        "diffit/nn/embeddings.py",
        "torch.cat([one_axis(cols), one_axis(rows)], dim=1)",
        "torch.cat([one_axis(rows), one_axis(cols)], dim=1)",
        ["tests/test_nn_core.py"],
    ),
    ("diffit/nn/attention.py", "else self.qkv(x) + qkv_t", "else self.qkv(x) - qkv_t", ["tests/test_nn_core.py"]),
    (
        "diffit/nn/latent.py",
        '"b (h w) (p q c) -> b c (h p) (w q)"',
        '"b (h w) (q p c) -> b c (h p) (w q)"',
        ["tests/test_nn_latent.py"],
    ),
    # nn: the image-space U-Net and its blocks (paper Eq. 7-10)
    (
        "diffit/nn/unet.py",
        "torch.cat([h, skips.pop()], dim=1)",
        "torch.cat([h, 0 * skips.pop()], dim=1)",
        [UNET],
    ),
    ("diffit/nn/unet.py", 'scale_factor=2.0, mode="nearest")', 'scale_factor=2.0, mode="bilinear")', [UNET]),
    (
        "diffit/nn/unet.py",
        "self.head_conv(self.head_act(self.head_norm(h)))",
        "self.head_conv(self.head_norm(h))",
        [UNET],
    ),
    (
        "diffit/nn/unet.py",
        "t = t + self.augment_embed(",
        "t = t - self.augment_embed(",
        [UNET, "tests/test_augment.py"],
    ),
    ("diffit/nn/blocks.py", '"b h w c -> b c h w").to(x.dtype) + x', '"b h w c -> b c h w").to(x.dtype)', [UNET]),
    ("diffit/nn/blocks.py", "self.conv(self.act(self.norm(x)))", "self.act(self.conv(self.norm(x)))", [UNET]),
    ("diffit/nn/blocks.py", "return x + self.mlp(layer_norm_fp32(x))", "return x + self.mlp(x)", [UNET, LATENT]),
    ("diffit/nn/blocks.py", "x = x + attend(h, t)", "x = h + attend(h, t)", [UNET, LATENT]),
    ("diffit/nn/blocks.py", "x * (1 + _per_token(scale, x))", "x * _per_token(scale, x)", ["tests/test_nn_core.py"]),
    (
        "diffit/nn/blocks.py",
        'Float[Tensor, "*batch d"], eps: float = 1e-6)',
        'Float[Tensor, "*batch d"], eps: float = 1e-5)',
        [UNET, LATENT],
    ),
    ("diffit/nn/blocks.py", "self.weight, self.bias, self.eps)", "self.weight, self.bias, 1e-5)", [UNET]),
    # the release loader
    ("diffit/release.py", "return model.eval()", "return model", [RELEASE]),
    ("diffit/release.py", "pos_embed.requires_grad_(False)", "pos_embed.requires_grad_(True)", [RELEASE]),
    ("diffit/release.py", "{k: v.to(dtype) if v.is_floating_point()", "{k: v if v.is_floating_point()", [RELEASE]),
    ("diffit/release.py", "if len(found) == 1:", "if len(found) >= 1:", [RELEASE]),
    # the CLI's wiring of its options into the library
    ("cli/sample.py", "use_ema=not raw", "use_ema=True", ["tests/test_sample.py"]),
    ("cli/sample.py", "    return lo, hi\n", "    return 0.0, hi\n", ["tests/test_sample.py"]),
    ("cli/sample.py", "channels=cfg_channels, interval", "channels=None, interval", ["tests/test_sample.py"]),
    (
        "cli/train.py",
        "micro_batch=micro_batch, lr=lr, warmup",
        "micro_batch=micro_batch, lr=lr * 2, warmup",
        [TRAIN_CLI],
    ),
    ("cli/train.py", "torch.manual_seed(seed)  # the initial", "torch.manual_seed(0)  # the initial", [TRAIN_CLI]),
    (
        "cli/train.py",
        "label_dropout=label_dropout, ckpt_every=ckpt_every, keep_last=keep_last, log_every",
        "label_dropout=0.0, ckpt_every=ckpt_every, keep_last=keep_last, log_every",
        [TRAIN_CLI],
    ),
    # evaluation
    (
        "diffit/evaluation/inception.py",
        "src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)",
        "src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)",
        [EVAL],
    ),
    ("diffit/evaluation/inception.py", "return (x - 128.0) / 128.0", "return (x - 127.5) / 127.5", [EVAL]),
    (
        "diffit/evaluation/statistics.py",
        "np.trace(sigma2) - 2.0 * trace_sqrt",
        "np.trace(sigma2) - 1.9 * trace_sqrt",
        ["tests/test_eval.py::test_frechet_1d_closed_form"],
    ),
    (
        "diffit/evaluation/manifold.py",
        "(d <= radii[None, c0:c1])",
        "(d < radii[None, c0:c1])",
        ["tests/test_eval_manifold.py"],
    ),
    (
        "diffit/evaluation/manifold.py",
        "radii[r0:r1] = best[:, k]",
        "radii[r0:r1] = best[:, k - 1]",
        ["tests/test_eval_manifold.py"],
    ),
    # runs: what a run decides from the data before it starts (pass 6)
    ("diffit/runs.py", "flip = data is not None if flip is None else flip", "flip = data is not None", RUNS),
    ("diffit/runs.py", "counts = shard_counts(urls, manifest)", "counts = None", RUNS),
    (
        "diffit/runs.py",
        "rank=rank, world_size=world_size, flip=self.flip)",
        "rank=rank, world_size=1, flip=self.flip)",
        RUNS,
    ),
    ("diffit/runs.py", "net.set_grad_checkpointing(True)", "net.set_grad_checkpointing(False)", RUNS),
    ("diffit/runs.py", "manifest.classes > 0 else None", "manifest.classes > 1 else None", RUNS),
    (
        "diffit/runs.py",
        'writes no sample grids", UserWarning, stacklevel=2)\n        return False',
        'writes no sample grids", UserWarning, stacklevel=2)\n        return True',
        RUNS,
    ),
    # distributed: collectives and the process group
    (
        "diffit/distributed.py",
        "return _all_reduce(x, dist.ReduceOp.SUM, info) / info.world_size if info.enabled else x",
        "return _all_reduce(x, dist.ReduceOp.SUM, info) if info.enabled else x",
        [TRAIN],
    ),
    ("diffit/distributed.py", "zip(flats, sizes, strict=True)", "zip(flats[::-1], sizes[::-1], strict=True)", [TRAIN]),
    (
        "diffit/distributed.py",
        'launched = world > 1 or ("MASTER_ADDR" in os.environ and "RANK" in os.environ)',
        "launched = world > 1",
        [TRAIN, "tests/test_train_cli.py"],
    ),
    # generation: seeds over ranks, the fitted schedule, grids
    ("diffit/generate.py", "return gathered[order]", "return gathered", [SAMPLE]),
    ("diffit/generate.py", "x * sigma_max, steps, sigma_min", "x, steps, sigma_min", [SAMPLE, NFE]),
    (
        "diffit/generate.py",
        "len(FIT_SEEDS) * (1 if guidance.scale == 1.0 else 2)",
        "len(FIT_SEEDS)",
        [SAMPLE, NFE],
    ),
    ("diffit/generate.py", "cols = nrow or int(np.ceil(np.sqrt(b)))", "cols = int(np.ceil(np.sqrt(b)))", [SAMPLE]),
    # data writing: deterministic shards, the content hash, image sources (pass 7)
    ("diffit/data/shards.py", "fileobj=self._files[0], mtime=0))", "fileobj=self._files[0], mtime=None))", WRITE),
    ("diffit/data/shards.py", 'gzip.GzipFile(filename="", mode="wb"', 'gzip.GzipFile(filename=path, mode="wb"', WRITE),
    (
        "diffit/data/shards.py",
        '"\\n".join(s.sha256 for s in shards).encode()',
        '"\\n".join(sorted(s.sha256 for s in shards)).encode()',
        WRITE + [PIPELINES, "tests/test_reliability.py"],
    ),
    ("diffit/data/shards.py", "        if key in self._keys:\n", "        if False:\n", WRITE),
    ("diffit/data/shards.py", "os.remove(self._files[-1].name)", "pass", WRITE),
    (
        "diffit/data/writing.py",
        "for d, found in subfolders.items() if found]",
        "for d, found in subfolders.items()]",
        WRITE,
    ),
    (
        "diffit/data/writing.py",
        "img = img.resize((self.resolution, self.resolution), resample=Image.Resampling.BICUBIC)",
        "img = img.resize((self.resolution, self.resolution), resample=Image.Resampling.BILINEAR)",
        WRITE,
    ),
    # shard writing in worker processes
    (
        "diffit/data/writing.py",
        "workers:\n                yield from pending.popleft()",
        "workers:\n                yield from pending.pop()",
        WRITE,
    ),
    (
        "diffit/data/writing.py",
        "pending:\n            yield from pending.popleft()",
        "pending:\n            yield from pending.pop()",
        WRITE,
    ),
    ("diffit/data/writing.py", "log.skip(str(size[0]), key, str(size[1]))", "pass  # log.skip", WRITE),
    # regional compilation
    ("diffit/train.py", "block._compiled_call_impl = None", "pass  # left compiled", [TRAIN]),
    (
        "diffit/train.py",
        "if not any(isinstance(s, nn.ModuleList) for b",
        "if any(isinstance(s, nn.ModuleList) for b",
        [TRAIN],
    ),
    ("diffit/train.py", 'if compile is True or compile == "model":', "if compile:", [TRAIN]),
]


def tree_copy(dest: str) -> None:
    """The working tree's files (not .git, the venv or build outputs) under ``dest``."""
    files = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.dirname(os.path.join(dest, name)) or dest, exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(dest, name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the mutants whose file or text contains this")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if args.only in m[0] or args.only in m[2]]
    survived = 0
    with tempfile.TemporaryDirectory() as tmp:
        tree_copy(tmp)
        # The copy's diffit and CLI must be the ones imported, also by the processes tests start from other
        # folders (two-rank workers, the CLI): the copy comes first on PYTHONPATH, with diffit_cli (installed
        # from cli/) linked to the copy's cli/.
        env = {**os.environ, "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")]))}  # fmt: skip
        os.symlink("cli", os.path.join(tmp, "diffit_cli"))
        for package, cwd in [(p, c) for p in ("diffit", "diffit_cli") for c in (tmp, os.path.dirname(tmp))]:
            where = subprocess.run([sys.executable, "-c", f"import {package}; print({package}.__file__)"], cwd=cwd,
                                   env=env, capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
            if not where.startswith((os.path.realpath(tmp), tmp)):
                sys.exit(f"{package} imports from {where} (run in {cwd}), not from the copy: mutants go untested")
        print(f"{'#':>3} | {'result':<8} | {'s':>4} | mutant")
        for i, (path, old, new, tests) in enumerate(chosen):
            source = open(os.path.join(tmp, path)).read()
            if source.count(old) != 1:
                sys.exit(f"mutant {i}: {old!r} is not in {path} exactly once (the code changed: update the list)")
            with open(os.path.join(tmp, path), "w") as f:
                f.write(source.replace(old, new))
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                                  cwd=tmp, env=env, capture_output=True, text=True)  # fmt: skip
            with open(os.path.join(tmp, path), "w") as f:
                f.write(source)
            # 1: a test failed. 0: none did. Anything else (collection error, interrupt) is no verdict.
            result = {1: "caught", 0: "SURVIVED"}.get(proc.returncode, f"ERROR {proc.returncode}")
            survived += result != "caught"
            what = f"{path}: {old.strip()[:50]!r} -> {new.strip()[:50]!r}"
            print(f"{i:>3} | {result:<8} | {time.perf_counter() - start:>4.0f} | {what}", flush=True)
    print(f"{len(chosen)} mutants, {len(chosen) - survived} caught, {survived} survived or gave no verdict")
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()

"""Mutation check: inject small bugs (a flipped sign, an off-by-one, a dropped case) into diffit's core formulas
and confirm that the tests meant to guard each one fail.

    python benchmarks/mutants.py [--only SUBSTRING] [--list CANDIDATES.json]

Each mutant is one source edit, applied to a copy of the working tree in a temporary folder (the checkout is never
touched), then the named tests run there with ``-x``. A mutant is caught when they fail. The list holds the
mutants that a hand-made pass (2026-11-27) found surviving the suite, with the tests added for them, beside the
caught ones that guard the same promises: resume and exact-once data, the shards' bytes and content hash, the
EDM/ADM formulas, samplers, guidance, EMA, checkpoint rotation, the U-Net and its blocks, the release loader, what a
run decides from its data, the collectives, the CLI's options and evaluation. Prints one row per mutant and exits 1
if any survived (docs/benchmarks.md, "Mutation check", lists each pass).
"""

import argparse
import json
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
        "if p.name <= final.name][:-keep_last]",
        "if p.name <= final.name][: -keep_last - 1]",
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
    # data (pass of 2026-11-27, second): latent encoding and its resume record, image sources, the shard CLI
    (
        "diffit/data/encode.py",
        "mix_seed(seed, index, i, done)",
        "mix_seed(seed, index, i, 0)",
        ["tests/test_data_encode.py::test_sampled_latents_draw_fresh_noise_for_every_sample_from_the_seed"],
    ),
    (
        "diffit/data/encode.py",
        "mix_seed(seed, index, i, done)",
        "mix_seed(0, index, i, done)",
        ["tests/test_data_encode.py::test_sampled_latents_draw_fresh_noise_for_every_sample_from_the_seed"],
    ),
    (
        "diffit/data/encode.py",
        "(max_label + 1 if labelled else 0)",
        "(max_label if labelled else 0)",
        ["tests/test_data_encode.py::test_without_a_dataset_json_the_class_count_is_the_largest_label_plus_one"],
    ),
    (
        "diffit/data/encode.py",
        "resolution=int(latent_shape[-1])",
        "resolution=int(latent_shape[0])",
        [
            "tests/test_data_encode.py::test_the_manifest_takes_channels_and_side_from_the_latents_also_when_every_shard_is_resumed"
        ],
    ),
    (
        "diffit/data/encode.py",
        'first["latent.npy"])).shape[1:]',
        'first["latent.npy"])).shape[2:]',
        [
            "tests/test_data_encode.py::test_the_manifest_takes_channels_and_side_from_the_latents_also_when_every_shard_is_resumed"
        ],
    ),
    (
        "diffit/data/encode.py",
        "(now[0], now[2]) != (stamp[0], stamp[2])",
        "now[0] != stamp[0]",
        ["tests/test_data_encode.py::test_encode_resumes_only_its_own_intact_shards"],
    ),
    (
        "diffit/data/encode.py",
        "if label >= 0:",
        "if label > 0:",
        ["tests/test_data_encode.py::test_encode_stores_posterior_of_image_and_mirror"],
    ),
    (
        "cli/data.py",
        "batch_size=batch_size,",
        "batch_size=32,",
        ["tests/test_data_cli.py::test_every_encode_option_reaches_encode_latents_with_its_value"],
    ),
    (
        "cli/data.py",
        "png_compress_level=0 if digits else 6,",
        "png_compress_level=0,",
        ["tests/test_data_cli.py::test_shard_writes_the_bytes_the_library_writes_with_its_defaults"],
    ),
    (
        "diffit/data/writing.py",
        "labels.min(initial=0) < 0 or ",
        "",
        [
            "tests/test_data_shards.py::test_array_labels_must_be_one_class_index_per_image_and_name_every_class_up_to_the_largest"
        ],
    ),
    (
        "diffit/data/writing.py",
        "if labels is not None and len(labels) != len(images):",
        "if False:",
        [
            "tests/test_data_shards.py::test_array_labels_must_be_one_class_index_per_image_and_name_every_class_up_to_the_largest"
        ],
    ),
    (
        "diffit/data/writing.py",
        "range(labels.max(initial=-1) + 1)",
        "range(len(np.unique(labels)))",
        [
            "tests/test_data_shards.py::test_array_labels_must_be_one_class_index_per_image_and_name_every_class_up_to_the_largest"
        ],
    ),
    (
        "diffit/data/writing.py",
        "if classes and flat:",
        "if False:",
        [
            "tests/test_data_shards.py::test_folder_source_skips_hidden_files_refuses_mixed_layouts_and_records_no_single_size"
        ],
    ),
    (
        "diffit/data/writing.py",
        "channels = channels if channels is not None else source.channels or 3",
        "channels = channels if channels is not None else 3",
        ["tests/test_data_shards.py::test_an_array_source_keeps_its_channel_count"],
    ),
    (
        "diffit/data/writing.py",
        "resolution=sides.pop() if len(sides) == 1 else None,",
        "resolution=max(sides),",
        [
            "tests/test_data_shards.py::test_folder_source_skips_hidden_files_refuses_mixed_layouts_and_records_no_single_size"
        ],
    ),
    (
        "diffit/data/writing.py",
        "if not shards:\n            raise",
        "if False:\n            raise",
        ["tests/test_data_shards.py::test_a_source_without_one_readable_image_writes_nothing"],
    ),
    (
        "diffit/data/images.py",
        "while min(img.size) >= 2 * resolution:",
        "while min(img.size) > 2 * resolution:",
        ["tests/test_data_shards.py::test_center_crop_halves_with_a_box_filter_while_at_least_twice_the_target"],
    ),
    (
        "diffit/data/writing.py",
        ' in IMAGE_EXTENSIONS and not name.startswith(".")',
        " in IMAGE_EXTENSIONS",
        [
            "tests/test_data_shards.py::test_folder_source_skips_hidden_files_refuses_mixed_layouts_and_records_no_single_size"
        ],
    ),
    (
        "diffit/data/writing.py",
        "images.transpose(0, 2, 3, 1)",
        "images.transpose(0, 3, 2, 1)",
        ["tests/test_data_shards.py::test_array_sources_round_trip_exactly"],
    ),
    (
        "diffit/data/encode.py",
        "done, max_label = done + shard.count, max(max_label, shard_max)",
        "done, max_label = done + shard.count, max_label",
        ["tests/test_data_encode.py::test_without_a_dataset_json_the_class_count_is_the_largest_label_plus_one"],
    ),
    (
        "diffit/data/encode.py",
        "if not isinstance(max_label, int) or isinstance(max_label, bool):\n            return None",
        "if not isinstance(max_label, int) or isinstance(max_label, bool):\n            max_label = -1",
        ["tests/test_data_encode.py::test_without_a_dataset_json_the_class_count_is_the_largest_label_plus_one"],
    ),
    # diffusion (pass of 2026-11-27, second): schedules, step schedules, planner, noise, samplers, objectives
    (
        "diffit/diffusion/step_schedules.py",
        "    power: float = 2.0,\n",
        "    power: float = 1.0,\n",
        ["tests/test_diffusion_step_schedules.py::test_vp_time_defaults_to_the_time_quadratic_spacing"],
    ),
    (
        "diffit/diffusion/step_schedules.py",
        "if sigma_next > 0:\n            nxt",
        "if False:\n            nxt",
        ["tests/test_diffusion_step_schedules.py::test_optimized_schedule_is_a_fine_grid_path_that_beats_karras"],
    ),
    (
        "diffit/diffusion/step_schedules.py",
        "(traj[i] - sig[i] * slope[i] - x_end.flatten(1))",
        "(traj[i] - x_end.flatten(1))",
        [
            "tests/test_diffusion_step_schedules.py::test_optimized_schedule_is_the_cheapest_path_of_n_steps_by_brute_force"
        ],
    ),
    (
        "diffit/diffusion/step_schedules.py",
        "return torch.cat([sigmas[:-2], sigmas[-1:]])",
        "return torch.cat([sigmas[:-3], sigmas[-2:]])",
        ["tests/test_diffusion_step_schedules.py::test_schedules_span_the_range_and_end_with_zero"],
    ),
    (
        "diffit/diffusion/step_schedules.py",
        "sigmas = torch.expm1(0.5 * VP_BETA_D * t**2 + VP_BETA_MIN * t).sqrt()",
        "sigmas = torch.expm1(VP_BETA_D * t**2 + VP_BETA_MIN * t).sqrt()",
        ["tests/test_diffusion_step_schedules.py::test_closed_forms"],
    ),
    (
        "diffit/diffusion/schedules.py",
        "kept.add(start + round(cur))",
        "kept.add(start + int(cur))",
        ["tests/test_diffusion_schedules.py::test_space_timesteps_matches_adm_also_for_uneven_sections"],
    ),
    (
        "diffit/diffusion/schedules.py",
        "size = size_per + (1 if i < extra else 0)",
        "size = size_per",
        ["tests/test_diffusion_schedules.py::test_space_timesteps_matches_adm_also_for_uneven_sections"],
    ),
    (
        "diffit/diffusion/schedules.py",
        "max_beta: float = 0.999)",
        "max_beta: float = 0.99)",
        ["tests/test_diffusion_schedules.py::test_cosine_betas_match_adm_and_clip_at_max_beta"],
    ),
    (
        "diffit/diffusion/schedules.py",
        "t64 = t.double().clamp(0, len(alphas_cumprod) - 1)",
        "t64 = t.double()",
        ["tests/test_diffusion_schedules.py::test_sigma_alpha_bar_timestep_round_trips"],
    ),
    (
        "diffit/diffusion/schedules.py",
        "hi = (lo + 1).clamp(max=len(alphas_cumprod) - 1)",
        "hi = lo.clamp(max=len(alphas_cumprod) - 1)",
        ["tests/test_diffusion_schedules.py::test_sigma_alpha_bar_timestep_round_trips"],
    ),
    (
        "diffit/diffusion/noise.py",
        "else torch.float32\n",
        "else self.dtype\n",
        [
            "tests/test_diffusion_samplers.py::test_per_sample_noise_draws_one_stream_whatever_the_dtype_and_takes_every_64_bit_seed"
        ],
    ),
    (
        "diffit/diffusion/noise.py",
        "return is_integer(s) and 0 <= s < 2**64",
        "return is_integer(s) and 0 <= s",
        [
            "tests/test_diffusion_samplers.py::test_per_sample_noise_draws_one_stream_whatever_the_dtype_and_takes_every_64_bit_seed"
        ],
    ),
    (
        "diffit/diffusion/noise.py",
        "manual_seed(int(s)) for s in seeds]",
        "manual_seed(int(seeds[0])) for s in seeds]",
        ["tests/test_diffusion_samplers.py::test_per_sample_seeds_are_batch_invariant"],
    ),
    (
        "diffit/diffusion/sampling.py",
        "if any(a <= b for a, b in",
        "if any(a < b for a, b in",
        ["tests/test_diffusion_samplers.py::test_a_repeated_sigma_is_not_strictly_decreasing"],
    ),
    (
        "diffit/diffusion/sampling.py",
        "return functools.partial(method, *args, **kwargs) if bind else method",
        "return method",
        [
            "tests/test_diffusion_samplers.py::test_ddpm_counts_the_evaluations_of_a_learned_variance_denoiser_and_binds_the_outer_labels"
        ],
    ),
    (
        "diffit/diffusion/sampling.py",
        "        s = self._sigma(x, sigma)\n        self._count(s)\n        denoised, variance",
        "        s = self._sigma(x, sigma)\n        denoised, variance",
        [
            "tests/test_diffusion_samplers.py::test_ddpm_counts_the_evaluations_of_a_learned_variance_denoiser_and_binds_the_outer_labels"
        ],
    ),
    (
        "diffit/diffusion/planning.py",
        '(4, MAX_STEPS + 1, "unipc", "vp-time")',
        '(4, MAX_STEPS + 1, "unipc", "karras")',
        ["tests/test_diffusion_planning.py::test_each_budget_gets_the_measured_sampler_and_schedule"],
    ),
    (
        "diffit/diffusion/planning.py",
        "steps = (calls + 1) // 2 if sampler in TWO_STAGE else calls",
        "steps = calls // 2 if sampler in TWO_STAGE else calls",
        ["tests/test_diffusion_planning.py::test_known_budgets"],
    ),
    (
        "diffit/objectives.py",
        "return karras_sigmas(steps, self.sigma_min, self.sigma_max, rho=self.rho)",
        "return karras_sigmas(steps, self.sigma_min, self.sigma_max)",
        ["tests/test_diffusion_losses.py::test_objectives_apply_their_own_settings"],
    ),
    (
        "diffit/objectives.py",
        'noise=draws["noise"], sigma_data=self.sigma_data,',
        'noise=draws["noise"],',
        ["tests/test_diffusion_losses.py::test_objectives_apply_their_own_settings"],
    ),
    (
        "diffit/objectives.py",
        "return respaced_sigmas(self.alphas_cumprod, steps)",
        'return respaced_sigmas(self.alphas_cumprod, f"ddim{steps}")',
        ["tests/test_diffusion_losses.py::test_objectives_apply_their_own_settings"],
    ),
    # evaluation (pass of 2026-11-27, second): statistics, FID, Inception Score, sources, k-NN manifolds, eval CLI
    (
        "diffit/evaluation/statistics.py",
        "self.scatter / (self.count - 1), self.count)",
        "self.scatter / self.count, self.count)",
        ["tests/test_eval.py::test_streaming_statistics_match_numpy_for_any_batching"],
    ),
    (
        "diffit/evaluation/statistics.py",
        "self.scatter = self.scatter + scatter_b + np.outer(delta, delta) * (n_a * n_b / n)",
        "self.scatter = self.scatter + scatter_b",
        ["tests/test_eval.py::test_streaming_statistics_match_numpy_for_any_batching"],
    ),
    (
        "diffit/evaluation/statistics.py",
        "self.mean = self.mean + delta * (n_b / n)",
        "self.mean = self.mean + delta * (n_a / n)",
        ["tests/test_eval.py::test_streaming_statistics_match_numpy_for_any_batching"],
    ),
    (
        "diffit/evaluation/statistics.py",
        "middle = root1 @ sigma2 @ root1",
        "middle = sigma1 @ sigma2",
        ["tests/test_eval.py::test_frechet_matches_scipy_sqrtm_on_general_covariances"],
    ),
    (
        "diffit/evaluation/statistics.py",
        "trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()",
        "trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None).sum())",
        ["tests/test_eval.py::test_frechet_commuting_covariances_closed_form"],
    ),
    (
        "diffit/evaluation/statistics.py",
        "sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2",
        "sigma1, sigma2 = sigma1, sigma2",
        ["tests/test_eval.py::test_frechet_uses_the_symmetric_part_of_covariances_with_round_off"],
    ),
    (
        "diffit/evaluation/statistics.py",
        "return max(float(d2), 0.0)",
        "return float(d2)",
        ["tests/test_eval.py::test_frechet_singular_covariances_are_stable"],
    ),
    (
        "diffit/evaluation/statistics.py",
        '    _check_covariance("sigma2", np.linalg.eigvalsh(sigma2))',
        "    pass",
        ["tests/test_eval.py::test_frechet_bad_input"],
    ),
    (
        "diffit/evaluation/statistics.py",
        "if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):",
        "if False:",
        ["tests/test_eval.py::test_statistics_of_the_wrong_shape_are_refused_and_an_unknown_count_stays_unknown"],
    ),
    (
        "diffit/evaluation/statistics.py",
        "np.int64(-1 if stats.count is None else stats.count)",
        "np.int64(0 if stats.count is None else stats.count)",
        ["tests/test_eval.py::test_statistics_of_the_wrong_shape_are_refused_and_an_unknown_count_stays_unknown"],
    ),
    (
        "diffit/evaluation/statistics.py",
        'members is None or not members <= {"mu", "sigma", "count"}',
        'members is None or not {"mu", "sigma"} <= members',
        ["tests/test_eval.py::test_statistics_never_replace_images_the_source_itself_or_a_reference_batch"],
    ),
    (
        "diffit/evaluation/statistics.py",
        "part = p[i * n // splits : (i + 1) * n // splits]",
        "part = p[i * (n // splits) : (i + 1) * (n // splits)]",
        ["tests/test_eval.py::test_inception_score_matches_the_definition_on_uneven_splits"],
    ),
    (
        "diffit/evaluation/statistics.py",
        "marginal = part.mean(dim=0, keepdim=True)",
        "marginal = p.mean(dim=0, keepdim=True)",
        ["tests/test_eval.py::test_inception_score_matches_the_definition_on_uneven_splits"],
    ),
    (
        "diffit/evaluation/statistics.py",
        "return float(np.mean(scores)), float(np.std(scores))",
        "return float(np.mean(scores)), float(np.std(scores, ddof=1))",
        ["tests/test_eval.py::test_inception_score_matches_the_definition_on_uneven_splits"],
    ),
    (
        "diffit/evaluation/sources.py",
        "images.transpose(0, 3, 1, 2)",
        "images.transpose(0, 3, 2, 1)",
        ["tests/test_eval.py::test_npz_folder_and_shards_yield_the_same_images"],
    ),
    (
        "diffit/evaluation/sources.py",
        "((x + 1.0) * 127.5).round_()",
        "((x + 1.0) * 127.5)",
        ["tests/test_eval.py::test_npz_folder_and_shards_yield_the_same_images"],
    ),
    (
        "diffit/evaluation/sources.py",
        "if pending and (len(pending) == batch_size or image.shape != pending[0].shape):",
        "if pending and image.shape != pending[0].shape:",
        ["tests/test_eval.py::test_folder_batches_hold_at_most_batch_size_images_of_one_size"],
    ),
    (
        "diffit/evaluation/sources.py",
        "if pending and (len(pending) == batch_size or image.shape != pending[0].shape):",
        "if pending and len(pending) == batch_size:",
        ["tests/test_eval.py::test_folder_batches_hold_at_most_batch_size_images_of_one_size"],
    ),
    (
        "diffit/evaluation/sources.py",
        "count = shape[0] if limit is None else min(shape[0], limit)",
        "count = shape[0] if limit is None else limit",
        ["tests/test_eval.py::test_max_count_above_the_number_of_images_reads_them_all"],
    ),
    (
        "diffit/evaluation/sources.py",
        "if limit is not None and done + len(x) > limit:",
        "if False:",
        ["tests/test_eval.py::test_npz_folder_and_shards_yield_the_same_images"],
    ),
    (
        "diffit/evaluation/extract.py",
        "open_images(src, batch_size=batch_size, max_count=max_count) if",
        "open_images(src, batch_size=batch_size) if",
        ["tests/test_eval_manifold.py::test_max_count_and_progress_reach_a_source_given_by_path"],
    ),
    (
        "diffit/evaluation/extract.py",
        "if stats.mu.shape != (FEATURE_DIM,):",
        "if False:",
        ["tests/test_eval_manifold.py::test_no_images_and_statistics_of_another_width_are_refused"],
    ),
    (
        "diffit/evaluation/extract.py",
        '    if not features:\n        raise ValueError("src: no images were read")',
        "    if False:\n        pass",
        ["tests/test_eval_manifold.py::test_no_images_and_statistics_of_another_width_are_refused"],
    ),
    (
        "diffit/evaluation/extract.py",
        "if source is not None and not is_statistics_file(ref):",
        "if source is not None:",
        ["tests/test_eval_manifold.py::test_one_pass_gives_statistics_and_features_and_the_reference_kinds"],
    ),
    (
        "diffit/evaluation/extract.py",
        "done += len(images)",
        "done = len(images)",
        ["tests/test_eval_manifold.py::test_max_count_and_progress_reach_a_source_given_by_path"],
    ),
    (
        "diffit/evaluation/extract.py",
        "progress(acc.count, source.count)",
        "progress(len(images), source.count)",
        ["tests/test_eval_manifold.py::test_max_count_and_progress_reach_a_source_given_by_path"],
    ),
    (
        "diffit/evaluation/manifold.py",
        "torch.promote_types(features.dtype, torch.float32)",
        "torch.float32",
        ["tests/test_eval_manifold.py::test_float64_features_stay_float64_and_mixed_precisions_meet_in_float64"],
    ),
    (
        "diffit/evaluation/manifold.py",
        "if real.dtype != fake.dtype:",
        "if False:",
        ["tests/test_eval_manifold.py::test_float64_features_stay_float64_and_mixed_precisions_meet_in_float64"],
    ),
    (
        "diffit/evaluation/manifold.py",
        "if bool(inside[r0:r1].all()):",
        "if bool(inside[r0:r1].any()):",
        ["tests/test_eval_manifold.py::test_matches_a_brute_force_reference_for_any_block"],
    ),
    (
        "diffit/evaluation/manifold.py",
        "inside[r0:r1] |= (d <= radii",
        "inside[r0:r1] = (d <= radii",
        ["tests/test_eval_manifold.py::test_matches_a_brute_force_reference_for_any_block"],
    ),
    (
        "diffit/evaluation/manifold.py",
        "if len(features) <= k:",
        "if len(features) < k:",
        ["tests/test_eval_manifold.py::test_bad_input_is_one_line_naming_the_argument"],
    ),
    (
        "cli/eval.py",
        "ref_source = open_reference(ref, features=with_pr, batch_size=batch_size, max_count=max_count)",
        "ref_source = open_reference(ref, features=with_pr, batch_size=batch_size)",
        ["tests/test_eval.py::test_cli_max_count_reaches_ref_and_ref_is_the_real_side_of_precision_recall"],
    ),
    (
        "cli/eval.py",
        "inception_score_from_probabilities(result.probabilities, min(splits, len(result.probabilities)))",
        "inception_score_from_probabilities(result.probabilities, min(10, len(result.probabilities)))",
        ["tests/test_eval.py::test_cli_splits_reach_the_inception_score"],
    ),
    (
        "cli/eval.py",
        '    _check_count(None if ref_source is None or ref_is_stats else ref_source.count, "REF")',
        "    pass",
        ["tests/test_eval.py::test_cli_a_reference_of_one_image_is_refused_naming_ref_before_any_work"],
    ),
    (
        "cli/eval.py",
        "pr = precision_recall(reference.features.to(device), result.features.to(device))",
        "pr = precision_recall(result.features.to(device), reference.features.to(device))",
        ["tests/test_eval.py::test_cli_max_count_reaches_ref_and_ref_is_the_real_side_of_precision_recall"],
    ),
    (
        "cli/eval.py",
        'source = _open(ctx, src, "SRC", batch_size, max_count)',
        'source = _open(ctx, src, "SRC", 50, max_count)',
        ["tests/test_eval.py::test_cli_a_batch_out_of_memory_is_one_line_naming_batch_size_and_writes_nothing"],
    ),
    (
        "diffit/evaluation/sources.py",
        "    if fortran:\n",
        "    if False:\n",
        ["tests/test_eval.py::test_open_images_bad_input"],
    ),
    (
        "diffit/evaluation/sources.py",
        "(sum(counts) if limit is None else min(sum(counts), limit))",
        "sum(counts)",
        ["tests/test_eval.py::test_npz_folder_and_shards_yield_the_same_images"],
    ),
    (
        "cli/eval.py",
        'source = _open(ctx, src, "SRC", batch_size, max_count)',
        'source = _open(ctx, src, "SRC", batch_size, None)',
        ["tests/test_eval.py::test_cli_errors_exit_2_with_one_line_and_no_output"],
    ),
    # checkpoints and runs (pass of 2026-11-27, second): saving, rotation, loading, resume checks, files
    (
        "diffit/checkpoint.py",
        'check_integer("keep_last", keep_last)',
        "pass",
        ["tests/test_reliability.py::test_save_checkpoint_checks_everything_before_writing_anything"],
    ),
    (
        "diffit/checkpoint.py",
        "shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]",
        "shapes = []",
        [
            "tests/test_reliability.py::test_weights_that_do_not_fit_the_model_are_named_in_one_line_and_wrapper_prefixes_are_dropped"
        ],
    ),
    (
        "diffit/checkpoint.py",
        "missing = sorted(set(own) - set(state))",
        "missing = []",
        [
            "tests/test_reliability.py::test_weights_that_do_not_fit_the_model_are_named_in_one_line_and_wrapper_prefixes_are_dropped"
        ],
    ),
    (
        "diffit/checkpoint.py",
        "state = strip_wrapper_prefixes(state)\n",
        "state = dict(state)\n",
        [
            "tests/test_reliability.py::test_weights_that_do_not_fit_the_model_are_named_in_one_line_and_wrapper_prefixes_are_dropped"
        ],
    ),
    (
        "diffit/checkpoint.py",
        'if saved.get("class") != current["class"] or not _same_config(saved.get("config"), current["config"], model):',
        'if saved.get("class") != current["class"]:',
        ["tests/test_open_library.py::test_runs_saved_before_an_argument_existed_still_resume"],
    ),
    (
        "diffit/checkpoint.py",
        "return _without_legacy(saved) | filled == current",
        "return _without_legacy(saved) == current",
        ["tests/test_open_library.py::test_runs_saved_before_an_argument_existed_still_resume"],
    ),
    (
        "diffit/checkpoint.py",
        'load_state_strict(ema, load_file(str(ckpt_dir / "ema.safetensors"))',
        'load_state_strict(ema, load_file(str(ckpt_dir / "model.safetensors"))',
        [
            "tests/test_train.py::test_a_checkpoint_restores_weights_ema_optimizer_and_rng_bit_exactly_and_a_step_saved_again_replaces_it"
        ],
    ),
    (
        "diffit/checkpoint.py",
        "    if optimizer is not None:\n        optimizer.load_state_dict",
        "    if optimizer is None:\n        optimizer.load_state_dict",
        [
            "tests/test_train.py::test_a_checkpoint_restores_weights_ema_optimizer_and_rng_bit_exactly_and_a_step_saved_again_replaces_it"
        ],
    ),
    (
        "diffit/checkpoint.py",
        'return record, load_file(str(ckpt_dir / "rng.safetensors"))',
        "return record, {}",
        [
            "tests/test_train.py::test_a_checkpoint_restores_weights_ema_optimizer_and_rng_bit_exactly_and_a_step_saved_again_replaces_it"
        ],
    ),
    (
        "diffit/checkpoint.py",
        'if not (ckpt_dir / "rng.safetensors").is_file():',
        "if False:",
        ["tests/test_reliability.py::test_a_checkpoint_without_rng_states_fails_its_check"],
    ),
    (
        "diffit/checkpoint.py",
        "if not (ckpt_dir / name).is_file() or sha256_file(ckpt_dir / name) != expected:",
        "if not (ckpt_dir / name).is_file():",
        ["tests/test_reliability.py::test_a_damaged_latest_checkpoint_is_passed_over_on_resume"],
    ),
    (
        "diffit/checkpoint.py",
        "        if final.exists():  # re-saving the same step (e.g. a signal right after a periodic save)\n"
        "            shutil.rmtree(final)\n",
        "",
        [
            "tests/test_train.py::test_a_checkpoint_restores_weights_ema_optimizer_and_rng_bit_exactly_and_a_step_saved_again_replaces_it"
        ],
    ),
    (
        "diffit/checkpoint.py",
        'ckpt = path if (path / "state.json").is_file() else latest_checkpoint(path)',
        "ckpt = latest_checkpoint(path.parent if _CKPT_RE.match(path.name) else path)",
        ["tests/test_train.py::test_load_model_takes_the_checkpoint_it_is_named_in_eval_mode"],
    ),
    (
        "diffit/checkpoint.py",
        'return ckpt / ("ema.safetensors" if use_ema else "model.safetensors")',
        'return ckpt / "ema.safetensors"',
        ["tests/test_sample.py::test_cli_raw_samples_the_raw_weights_of_a_training_checkpoint"],
    ),
    (
        "diffit/checkpoint.py",
        "return model.to(map_location).eval(), metadata",
        "return model.to(map_location), metadata",
        ["tests/test_train.py::test_load_model_takes_the_checkpoint_it_is_named_in_eval_mode"],
    ),
    (
        "diffit/checkpoint.py",
        'extra_metadata={WEIGHTS_METADATA_KEY: "ema"})',
        'extra_metadata={WEIGHTS_METADATA_KEY: "raw"})',
        [
            "tests/test_train.py::test_a_checkpoint_restores_weights_ema_optimizer_and_rng_bit_exactly_and_a_step_saved_again_replaces_it"
        ],
    ),
    (
        "diffit/util/files.py",
        "        elif tmp.exists():\n            tmp.unlink()\n",
        "        elif tmp.exists():\n            pass\n",
        [
            "tests/test_util.py::test_an_atomic_write_is_fsynced_before_its_rename_and_one_that_fails_leaves_the_old_file_and_no_temporary"
        ],
    ),
    (
        "diffit/util/files.py",
        "        if durable:\n            fsync_file(tmp)\n",
        "        if False:\n            fsync_file(tmp)\n",
        [
            "tests/test_util.py::test_an_atomic_write_is_fsynced_before_its_rename_and_one_that_fails_leaves_the_old_file_and_no_temporary"
        ],
    ),
    (
        "diffit/util/files.py",
        "if created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:",
        "if [p.name for p in folder.iterdir()] == [LOCK_NAME]:",
        [
            "tests/test_util.py::test_a_failed_block_removes_only_the_folder_locked_folder_made_and_the_lock_names_its_holder_alone"
        ],
    ),
    (
        "diffit/util/files.py",
        "            os.ftruncate(fd, 0)\n",
        "",
        [
            "tests/test_util.py::test_a_failed_block_removes_only_the_folder_locked_folder_made_and_the_lock_names_its_holder_alone"
        ],
    ),
    (
        "diffit/util/files.py",
        '        os.rmdir(tempfile.mkdtemp(prefix=".diffit-probe-", dir=ancestor))',
        "        os.stat(ancestor)",
        ["tests/test_reliability.py::test_bad_invocations_are_clean_refusals[train --out /proc/run]"],
    ),
    (
        "diffit/util/files.py",
        'name, limit = f".{path.stem}.tmp-{os.getpid()}{path.suffix}", _name_max(path.parent)',
        'name, limit = f".{path.stem}.tmp-{os.getpid()}", _name_max(path.parent)',
        [
            "tests/test_util.py::test_an_atomic_write_is_fsynced_before_its_rename_and_one_that_fails_leaves_the_old_file_and_no_temporary"
        ],
    ),
    (
        "diffit/runs.py",
        '    recorded = recorded or state.get("args", {}).get("data_content_hash")',
        "    recorded = recorded",
        [
            "tests/test_reliability.py::test_resumed_data_is_checked_against_the_newest_readable_record_and_that_of_diffit_0_1_0"
        ],
    ),
    (
        "diffit/runs.py",
        "if recorded is not None and recorded != content_hash:",
        "if recorded != content_hash:",
        ["tests/test_reliability.py::test_a_newest_checkpoint_with_a_damaged_state_json_is_passed_over"],
    ),
    (
        "diffit/runs.py",
        "state = next((s for s in states if s is not None), None)",
        "state = next(states, None)",
        [
            "tests/test_reliability.py::test_resumed_data_is_checked_against_the_newest_readable_record_and_that_of_diffit_0_1_0"
        ],
    ),
    (
        "diffit/runs.py",
        'for part in attr.split("."):',
        "for part in [attr]:",
        ["tests/test_reliability.py::test_import_factory_follows_dotted_names_and_augment_is_refused_for_latent_data"],
    ),
    (
        "diffit/runs.py",
        "if augment > 0 and data.latent:",
        "if False:",
        ["tests/test_reliability.py::test_import_factory_follows_dotted_names_and_augment_is_refused_for_latent_data"],
    ),
    (
        "diffit/checkpoint.py",
        "if p.name <= final.name][:-keep_last]",
        "][:-keep_last]",
        ["tests/test_reliability.py::test_a_resume_past_a_damaged_newer_checkpoint_keeps_the_checkpoints_it_writes"],
    ),
    (
        "diffit/train.py",
        "run.step == first_step + 1 and (missed := compiled.missed())",
        "run.step == first_step + 1 and (missed := compiled.missed()) and False",
        ["tests/test_open_library.py::test_compile_blocks_warns_once_when_the_model_bypasses_its_compiled_blocks"],
    ),
    # layers (pass of 2026-11-27, ninth): embeddings, windows, TMSA, the latent ViT, flex masks, the backbone contract
    (
        "diffit/nn/embeddings.py",
        "drop = drop | (u < self.dropout_prob)",
        "drop = u < self.dropout_prob",
        ["tests/test_nn_core.py::test_label_drops_follow_force_drop_in_training_and_the_generator"],
    ),
    (
        "diffit/nn/embeddings.py",
        'u = torch.rand(labels.shape, generator=generator, device="cpu")',
        'u = torch.rand(labels.shape, device="cpu")',
        ["tests/test_nn_core.py::test_label_drops_follow_force_drop_in_training_and_the_generator"],
    ),
    (
        "diffit/nn/embeddings.py",
        "emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)",
        "emb = torch.cat([torch.zeros_like(emb[:, :1]), emb], dim=-1)",
        ["tests/test_nn_core.py::test_sinusoidal_embedding_odd_dim_float64_and_max_period"],
    ),
    (
        "diffit/nn/embeddings.py",
        "dtype = torch.promote_types(t.dtype, torch.float32)",
        "dtype = torch.float32",
        ["tests/test_nn_core.py::test_sinusoidal_embedding_odd_dim_float64_and_max_period"],
    ),
    (
        "diffit/nn/embeddings.py",
        "freq = sinusoidal_embedding(t, self.frequency_dim, max_period=self.max_period)",
        "freq = sinusoidal_embedding(t, self.frequency_dim)",
        ["tests/test_nn_core.py::test_sinusoidal_embedding_odd_dim_float64_and_max_period"],
    ),
    (
        "diffit/nn/windows.py",
        "    if windows.shape[0] % per_image:\n",
        "    if False:\n",
        ["tests/test_nn_core.py::test_window_errors_name_the_argument"],
    ),
    (
        "diffit/nn/flex.py",
        "block_mask = None if (h, w) == (window, window) else",
        "block_mask = None if h == window else",
        ["tests/test_nn_flex.py::test_flex_equals_sdpa_outputs_and_all_gradients[windowed-3x6]"],
    ),
    (
        "diffit/nn/attention.py",
        "qkv_t = qkv_t.repeat_interleave(per_sample, dim=0)",
        "qkv_t = qkv_t.repeat(per_sample, 1, 1)",
        ["tests/test_nn_core.py::test_tmsa_windowed_matches_paper_equations_per_window"],
    ),
    (
        "diffit/nn/attention.py",
        "bias_t = bias_t.repeat_interleave(per_sample, dim=0)",
        "bias_t = bias_t.repeat(per_sample, 1, 1, 1)",
        ["tests/test_nn_core.py::test_time_bias_attention_matches_its_equations"],
    ),
    (
        "diffit/nn/attention.py",
        "out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)",
        "out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0 / self.head_dim)",
        ["tests/test_nn_core.py::test_tmsa_global_matches_paper_equations"],
    ),
    (
        "diffit/nn/attention.py",
        'if x.device.type != "cuda" or not flex_available():',
        "if not flex_available():",
        ["tests/test_nn_flex.py::test_auto_never_times_flex_on_cpu"],
    ),
    (
        "diffit/nn/contract.py",
        'autocast = x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type)',
        "autocast = False",
        [
            "tests/test_nn_latent.py::test_inputs_on_another_device_are_named_and_autocast_takes_low_precision_latents",
            "tests/test_nn_unet.py::test_forward_refuses_inputs_torch_would_fail_on_deep_inside_naming_them",
        ],
    ),
    (
        "diffit/nn/contract.py",
        "        if value is not None and value.device != x.device:\n",
        "        if False:\n",
        ["tests/test_nn_latent.py::test_inputs_on_another_device_are_named_and_autocast_takes_low_precision_latents"],
    ),
    (
        "diffit/nn/latent.py",
        'return rearrange(self.proj(x), "b d h w -> b (h w) d")',
        'return rearrange(self.proj(x), "b d h w -> b (w h) d")',
        ["tests/test_nn_latent.py::test_forward_matches_paper_reference"],
    ),
    (
        "diffit/nn/contract.py",
        "config.update(value)",
        "config[name] = value",
        ["tests/test_open_library.py::test_capture_config_records_the_actual_arguments"],
    ),
    (
        "diffit/nn/embeddings.py",
        "int(labels.max()) > self.num_classes",
        "int(labels.max()) >= self.num_classes",
        ["tests/test_nn_latent.py::test_none_label_is_the_null_class"],
    ),
    (
        "diffit/nn/embeddings.py",
        "checkable and labels.numel() and",
        "checkable and",
        ["tests/test_nn_core.py::test_empty_batches_of_labels_and_windows"],
    ),
    (
        "diffit/nn/attention.py",
        "if x.ndim != ndim or x.shape[-1] != self.dim:",
        "if x.ndim != ndim:",
        ["tests/test_nn_core.py::test_blocks_name_x_or_t_where_torch_failed_in_a_matmul"],
    ),
    (
        "diffit/nn/contract.py",
        "if not is_integer(value) or value < 1:",
        "if not is_integer(value) or value < 0:",
        ["tests/test_nn_core.py::test_backbone_problems_name_each_missing_part_of_the_contract"],
    ),
    (
        "diffit/nn/contract.py",
        "if n is not None and (not is_integer(n) or n < 1):",
        "if n is not None and not is_integer(n):",
        ["tests/test_nn_core.py::test_backbone_problems_name_each_missing_part_of_the_contract"],
    ),
    (
        "diffit/nn/contract.py",
        "problems = [] if isinstance(model, nn.Module) else",
        "problems = [] if True else",
        ["tests/test_nn_core.py::test_backbone_problems_name_each_missing_part_of_the_contract"],
    ),
    (
        "diffit/nn/contract.py",
        "raise ValueError(f\"{what or f'model {type(model).__name__}'} {problems[0]} (see diffit.nn.Backbone)\")",
        "raise ValueError(f\"{what or f'model {type(model).__name__}'} {problems[-1]} (see diffit.nn.Backbone)\")",
        ["tests/test_nn_core.py::test_backbone_problems_name_each_missing_part_of_the_contract"],
    ),
    (
        "diffit/nn/flex.py",
        "same_col = (q_idx % grid_w) // window == (kv_idx % grid_w) // window",
        "same_col = (q_idx % grid_w) // window <= (kv_idx % grid_w) // window",
        ["tests/test_nn_flex.py::test_flex_equals_sdpa_outputs_and_all_gradients"],
    ),
    # sampling (pass of 2026-11-27, ninth): generate, guidance, preconditioning, EMA, augmentation, the sample CLI
    (
        "diffit/generate.py",
        "None if labels is None else labels[idx], guidance",
        "None if labels is None else labels[: len(idx)], guidance",
        ["tests/test_sample.py::test_generate_gives_each_batch_the_labels_of_its_own_seeds"],
    ),
    (
        "diffit/generate.py",
        ".round().to(torch.uint8).permute(0, 2, 3, 1)",
        ".round().to(torch.uint8).permute(0, 3, 2, 1)",
        ["tests/test_sample.py::test_uint8_and_grid_layout"],
    ),
    (
        "diffit/generate.py",
        "nrow = 10 if labels is not None and len(images) % 10 == 0 else None",
        "nrow = None",
        ["tests/test_sample.py::test_a_labelled_png_grid_has_10_columns_and_is_upscaled_to_128_pixels_an_image"],
    ),
    (
        "diffit/generate.py",
        "upscale=max(1, 128 // images.shape[1])",
        "upscale=max(1, 64 // images.shape[1])",
        ["tests/test_sample.py::test_a_labelled_png_grid_has_10_columns_and_is_upscaled_to_128_pixels_an_image"],
    ),
    (
        "diffit/generate.py",
        "guidance.channels > channels:",
        "guidance.channels >= channels:",
        ["tests/test_sample.py::test_guided_channels_may_be_all_the_models_channels_and_no_more"],
    ),
    (
        "diffit/diffusion/guidance.py",
        "not 0 <= interval[0] <= interval[1]:",
        "not 0 <= interval[0] < interval[1]:",
        ["tests/test_diffusion_guidance.py::test_an_interval_of_one_sigma_guides_at_that_noise_level_only"],
    ),
    (
        "diffit/diffusion/denoisers.py",
        "sigma = sigma if sigma.dtype == torch.float64 else sigma.float()",
        "sigma = sigma",
        ["tests/test_diffusion_denoisers.py::test_edm_precond_computes_low_precision_sigmas_coefficients_in_float32"],
    ),
    (
        "diffit/diffusion/denoisers.py",
        "continuous=self.continuous_timesteps)",
        "continuous=False)",
        ["tests/test_diffusion_denoisers.py::test_vp_eps_denoiser_passes_fractional_timesteps_only_when_asked"],
    ),
    (
        "diffit/augment.py",
        "float(xflip)",
        "float(True)",
        ["tests/test_augment.py::test_without_xflip_no_label_flips_and_p_0_is_the_identity"],
    ),
    (
        "diffit/augment.py",
        "torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], dim=1)",
        "torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], dim=1)",
        ["tests/test_augment.py::test_the_rotation_label_turns_the_x_axis_towards_y"],
    ),
    (
        "cli/sample.py",
        "total=-(-mine // batch_size) * steps",
        "total=(mine // batch_size) * steps",
        ["tests/test_sample.py::test_the_progress_bar_counts_the_steps_of_every_batch_of_this_rank"],
    ),
    (
        "cli/sample.py",
        'completed=s["batch"] * steps + s["i"] + 1',
        'completed=s["i"] + 1',
        ["tests/test_sample.py::test_the_progress_bar_counts_the_steps_of_every_batch_of_this_rank"],
    ),
    (
        "cli/sample.py",
        "precision=precision, batch_size=batch_size",
        'precision="fp32", batch_size=batch_size',
        ["tests/test_sample.py::test_cli_sampling_options_reach_generate_with_their_values"],
    ),
    (
        "cli/sample.py",
        "labels = class_labels(seed_list, model.num_classes, classes)",
        "labels = class_labels(seed_list, model.num_classes, classes[:1] if classes else None)",
        ["tests/test_sample.py::test_cli_sampling_options_reach_generate_with_their_values"],
    ),
    (
        "cli/common.py",
        "if total > limit:",
        "if total >= limit:",
        ["tests/test_sample.py::test_seed_and_class_ranges_parse_inclusively_up_to_their_limit"],
    ),
    (
        "cli/common.py",
        "if len(bounds) > 2 or",
        "if len(bounds) > 3 or",
        ["tests/test_sample.py::test_seed_and_class_ranges_parse_inclusively_up_to_their_limit"],
    ),
    (
        "diffit/ema.py",
        "        ema_buffers[name].copy_(b)",
        "        ema_buffers[name].add_(0)",
        ["tests/test_train.py::test_ema_update_and_warmup"],
    ),
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
    parser.add_argument("--list", help="a JSON list of [file, original, mutated, [tests]] to run instead (a new pass)")
    args = parser.parse_args()
    mutants = MUTANTS
    if args.list:
        with open(args.list) as f:
            mutants = [(path, old, new, list(tests)) for path, old, new, tests in json.load(f)]
    chosen = [m for m in mutants if args.only in m[0] or args.only in m[2]]
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

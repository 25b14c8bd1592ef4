"""Call diffit's Python API as a careless or hostile user would; count the clean outcomes. Run from the repository
root: python benchmarks/bad_api_calls.py [-v]  (-v lists the clean calls too; a few seconds on one core)

Calls run as users run them: without ``DIFFIT_TYPECHECK`` (beartype's checks are the test suite's). Each line of
``cases`` is ``EXPECT CALL``: EXPECT names the argument a clean refusal names, or is ``ok`` for a call that must
work, followed by ``-> CHECK`` on its result ``out``. A refusal is clean when it is a ValueError or TypeError (or
diffit's OutOfMemory, for allocations) of one line naming EXPECT among its first words and nothing was written.
Everything else is reported as (b) another error, or one naming no argument of ours (a torch, einops or numpy
traceback), (c) a silent wrong result (returned garbage or NaN, ignored the argument, wrote files) or (d) a hang
or a huge allocation.
"""

import os
import re
import signal
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.pop("DIFFIT_TYPECHECK", None)  # as users run it
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402, F401 (the calls below are evaluated from text)
import torch  # noqa: E402

from diffit import checkpoint, data, evaluation, generate, nn, objectives, runs  # noqa: E402, F401
from diffit import diffusion as dif  # noqa: E402
from diffit.distributed import DistInfo  # noqa: E402
from diffit.train import train  # noqa: E402
from diffit.util import OutOfMemory  # noqa: E402

cases = """
window           nn.window_partition(Z(1, 6, 6, 2), 4)
x                nn.window_partition(Z(4, 4, 2), 2)
window           nn.window_partition(Z(1, 4, 4, 2), 0)
window           nn.window_partition(Z(1, 4, 4, 2), 2.0)
windows          nn.window_merge(Z(4, 3, 2), 2, 4, 4)
window           nn.window_merge(Z(4, 4, 2), 2, 5, 4)
windows          nn.window_merge(Z(4, 4), 2, 4, 4)
window           nn.relative_position_index(0)
window           nn.relative_position_index(2.5)
dim              tmsa(dim=10, num_heads=4)
window           tmsa(window=0)
window           tmsa(window=2.5)
time_dim         tmsa(time_dim=0)
x                ATTN(Z(2, 5, 8), TT)
x                ATTN(Z(2, 4, 6), TT)
x                ATTN(Z(4, 8), TT)
t                ATTN(TOK, Z(2, 5))
t                ATTN(TOK, Z(4))
window           ATTN.forward_grid(Z(2, 3, 4, 8), TT)
x                ATTN.forward_grid(Z(2, 4, 4, 8, dtype=torch.long), TT)
mlp_ratio        block(mlp_ratio=0)
mlp_ratio        block(mlp_ratio=nan)
time_conditioning block(time_conditioning="film")
gelu             block(gelu="exact")
window           BLOCK.forward_grid(Z(2, 3, 3, 8), TT)
x                BLOCK.forward_grid(Z(2, 4, 4, 6), TT)
x                BLOCK.forward_grid(Z(2, 8, 4, 4), TT)
t                BLOCK.forward_grid(GRID, Z(1, 4))
t                block(time_conditioning="adaln").forward_grid(GRID, Z(2, 5))
x                BLOCK(TOK.double(), TT)
ok               BLOCK(Z(0, 4, 8), Z(0, 4)) -> out.shape == (0, 4, 8)
x                RES(Z(2, 6, 4, 4), TT)
window           RES(Z(2, 8, 5, 4), TT)
groups           nn.ResBlock(dim=8, time_dim=4, num_heads=2, window=2, groups=0)
dim              nn.sinusoidal_embedding(T, 1)
dim              nn.sinusoidal_embedding(T, 7.5)
t                nn.sinusoidal_embedding(Z(2, 3), 8)
max_period       nn.TimestepEmbedding(dim=8, max_period=1)
dim              nn.TimestepEmbedding(dim=0)
labels           nn.LabelEmbedding(num_classes=3, dim=4)(torch.tensor([5]))
labels           nn.LabelEmbedding(num_classes=3, dim=4)(torch.tensor([1.0]))
dropout_prob     nn.LabelEmbedding(num_classes=3, dim=4, dropout_prob=1)
dim              nn.sincos_pos_embed_2d(6, 2)
grid_size        nn.sincos_pos_embed_2d(8, 0)
window           tiny(resolution=12)
resolution       tiny(resolution=8.0)
ok               tiny(resolution=np.int64(8)) -> out.resolution == 8
channels         tiny(channels=(8.5, 16))
channels         tiny(channels="816")
blocks_per_stage tiny(blocks_per_stage=(1.5, 1))
window           tiny(window=(4, 4, 4))
num_classes      tiny(num_classes=2.5)
num_classes      tiny(num_classes=True)
time_dim         tiny(time_dim=16.0)
in_channels      tiny(in_channels=0)
mlp_ratio        tiny(mlp_ratio=-1)
class_dropout_prob tiny(class_dropout_prob=1.5)
groups           tiny(groups=-1)
augment_dim      tiny(augment_dim=-1)
nope             tiny(nope=1)
window           nn.diffit_tiny(resolution=12)
x                M(Z(2, 1, 6, 6), T, Y)
x                M(Z(2, 3, 8, 8), T, Y)
x                M(Z(1, 8, 8), T[:1], Y[:1])
x                M(Z(2, 1, 8, 8, dtype=torch.long), T, Y)
x                M(X.half(), T, Y)
x                M(X.double(), T, Y)
x                M(X.to("meta"), T, Y)
noise_label      M(X, torch.tensor(0.5), Y)
noise_label      M(X, torch.tensor([nan, 0.0]), Y)
ok               M(X, torch.tensor([0, 1]), Y) -> finite(out)
y                M(X, T, torch.tensor([0, 7]))
y                M(X, T, torch.tensor([0, -1]))
y                M(X, T, torch.tensor([0.0, 1.0]))
y                M(X, T, torch.tensor([True, False]))
y                M(X, T, Y[:, None])
y                U(X, T, Y)
ok               M(X, T, Y.int()) -> torch.equal(out, M(X, T, Y))
ok               M(X[:0], T[:0], Y[:0]) -> out.shape == (0, 1, 8, 8)
augment_labels   M(X, T, Y, Z(2, 9))
augment_labels   tiny(augment_dim=9)(X, T, Y, Z(2, 4))
augment_labels   tiny(augment_dim=9)(X, T, Y, Z(1, 9))
backend          tiny().set_attention_backend("fast")
backend          nn.set_attention_backend(M, "fast")
model            nn.check_backbone(object())
patch_size       lat(input_size=5)
patch_size       lat(patch_size=2.0)
hidden_size      lat(hidden_size=18)
num_classes      lat(num_classes=0)
depth            lat(depth=1.5)
class_dropout_prob lat(class_dropout_prob=-0.1)
patch_size       nn.latent_diffit_s_2(input_size=31, depth=1)
x                L(Z(2, 2, 6, 6), T, Y)
x                L(Z(2, 4, 4), T, Y)
ok               L(Z(2, 2, 4, 4), T, torch.tensor([3, 3])) -> finite(out)
n                dif.karras_sigmas(0, 0.002, 80)
n                dif.karras_sigmas(2.5, 0.002, 80)
n                dif.karras_sigmas(True, 0.002, 80)
n                dif.karras_sigmas(10**10, 0.002, 80)
ok               dif.karras_sigmas(np.int64(3), 0.002, 80) -> out.shape == (4,)
ok               dif.karras_sigmas(3, torch.tensor(0.002), 80) -> out.shape == (4,)
sigma_min        dif.karras_sigmas(5, 80, 0.002)
sigma_max        dif.karras_sigmas(5, 0.002, inf)
sigma_min        dif.karras_sigmas(5, nan, 80)
rho              dif.karras_sigmas(5, 0.002, 80, 0)
sigma_min        dif.loglinear_sigmas(5, 0, 80)
power            dif.vp_time_sigmas(5, 0.002, 80, -1)
schedule         dif.schedule_sigmas("cosine", 5, 0.002, 80)
final            dif.schedule_sigmas("karras", 5, 0.002, 80, final="none")
num_timesteps    dif.linear_betas(0)
num_timesteps    dif.linear_betas(10.5)
beta_start       dif.linear_betas(10, beta_start=nan)
s                dif.cosine_betas(10, s=-1)
s                dif.cosine_betas(10, s=nan)
max_beta         dif.cosine_betas(10, max_beta=2)
betas            dif.betas_to_alphas_cumprod(torch.tensor([0.1, 1.5]))
betas            dif.betas_to_alphas_cumprod(Z(0))
betas            dif.betas_to_alphas_cumprod(torch.full((2, 3), 0.1))
betas            dif.betas_to_alphas_cumprod([0.1, 0.2])
section_counts   dif.space_timesteps(100, "ddimx")
section_counts   dif.space_timesteps(100, "10,a")
section_counts   dif.space_timesteps(100, 10.5)
section_counts   dif.space_timesteps(100, 200)
num_timesteps    dif.space_timesteps(0, 10)
alphas_cumprod   dif.respaced_sigmas(ACP[None], 5)
alphas_cumprod   dif.respaced_sigmas(ACP.flip(0), 5)
alphas_cumprod   dif.respaced_sigmas(torch.cat([torch.ones(1).double(), ACP]), 5)
t                dif.timestep_to_sigma(torch.tensor([nan]), ACP)
sigma            dif.sigma_to_timestep(torch.tensor([-1.0]), ACP)
alphas_cumprod   dif.sigma_to_timestep(torch.tensor([1.0]), Z(0).double())
alphas_cumprod   dif.VPEpsDenoiser(L, alphas_cumprod=Z(0))
alphas_cumprod   dif.VPEpsDenoiser(L, alphas_cumprod=ACP.flip(0))
alphas_cumprod   dif.VPEpsDenoiser(L, alphas_cumprod=[0.9, 0.5])
sigmas           eul(Z2, SIG.flip(0))
sigmas           eul(Z2, SIG[None])
sigmas           eul(Z2, SIG[:-1])
sigmas           eul(Z2, torch.tensor([nan, 1.0, 0.0]))
sigmas           eul(Z2, torch.tensor([1.0, -0.5, 0.0]))
sigmas           eul(Z2, [1.0, 0.0])
sigmas           eul(Z2, Z(1))
x                eul(torch.full((2, 2), nan), SIG)
x                eul(Z(2, 2, dtype=torch.long), SIG)
x                eul(torch.tensor(1.0), SIG)
x                eul([[0.0, 0.0]], SIG)
ok               eul(Z(0, 2), SIG) -> out.shape == (0, 2)
ok               eul(Z2.double(), SIG) -> out.dtype == torch.float64
denoiser         dif.sample_euler("gm", Z2, SIG)
denoiser         dif.sample_euler(lambda x, s: x[:1], Z2, SIG)
sigmas           dif.sample_heun(gm, Z2, torch.tensor([1.0, 1.0, 0.0]))
eta              dif.sample_ddim(gm, Z2, SIG, eta=nan)
noise            dif.sample_ddim(gm, Z2, SIG, eta=1, noise=lambda: Z(3))
S_churn          dif.sample_edm_stochastic(gm, Z2, SIG, S_churn=-1)
S_tmin           dif.sample_edm_stochastic(gm, Z2, SIG, S_tmin=2, S_tmax=1)
variance         dif.sample_ddpm(gm, Z2, SIG, variance="big")
order            dif.sample_unipc(gm, Z2, SIG, order=2.0)
order            dif.sample_unipc(gm, Z2, SIG, order=5)
ok               dif.sample_unipc(gm, Z2, SIG, order=np.int64(2)) -> finite(out)
order            dif.sample_ipndm(gm, Z2, SIG, order=0)
sigmas           dif.sample_dpmpp_3m(gm, Z2, SIG.flip(0))
fine_steps       dif.optimized_sigmas(gm, Z2, 5, 0.01, 10, fine_steps=3)
n                dif.optimized_sigmas(gm, Z2, 2.5, 0.01, 10, fine_steps=4)
seeds            dif.per_sample_noise([-1], (2,))
shape            dif.per_sample_noise([0], (2.5,))
shape            dif.per_sample_noise([0], 4)
seeds            dif.check_seeds("0-9")
nfe              dif.steps_for_nfe("heun", 0)
sigma_data       dif.EDMPrecond(M, sigma_data=0)
sigma_data       dif.EDMPrecond(M, sigma_data=nan)
sigma            PRE(X, torch.tensor(1.0), Y)
sigma            PRE(X, torch.ones(2, 1), Y)
sigma            PRE(X, -T, Y)
sigma            dif.EDMPrecond(flat)(Z2, torch.ones(1))
sigma_data       dif.edm_coefficients(T, -1)
sigma            VP(Z(2, 2, 4, 4), -T, Y)
scale            cfg(scale=nan)
scale            cfg(scale=-1)
interval         cfg(interval=(2, 1))
interval         cfg(interval=(0, nan))
guidance_channels cfg(guidance_channels=0)
guidance_channels cfg(guidance_channels=1.5)
num_classes      cfg(num_classes=0)
y                cfg()(X, T + 0.1, None)
y                cfg()(X, T + 0.1, torch.tensor([0, 9]))
w                dif.PowerCosineScale(nan, alphas_cumprod=ACP)
alphas_cumprod   dif.PowerCosineScale(2.0, alphas_cumprod=ACP[None])
x0               dif.edm_loss(PRE, Z(2, 1, 8, 8, dtype=torch.long), y=Y)
noise            dif.edm_loss(PRE, X, y=Y, noise=torch.randn(1, 1, 8, 8))
sigma            dif.edm_loss(dif.EDMPrecond(flat), Z2, sigma=torch.tensor(1.0))
sigma            dif.edm_loss(dif.EDMPrecond(flat), Z2, sigma=torch.tensor([-1.0, 1.0]))
P_std            dif.edm_loss(PRE, X, y=Y, P_std=nan)
sigma_data       dif.edm_loss(PRE, X, y=Y, sigma_data=0)
batch_size       dif.sample_timesteps(0, 10)
batch_size       dif.sample_training_sigmas(-1)
batch_size       dif.sample_training_sigmas(2.5)
P_std            dif.sample_training_sigmas(4, P_std=0)
P_std            dif.sample_training_sigmas(4, P_std=inf)
P_mean           dif.sample_training_sigmas(4, P_mean=nan)
P_mean           dif.check_log_normal(-inf, 1.2)
ok               dif.sample_training_sigmas(0) -> out.shape == (0,)
ok               dif.sample_training_sigmas(3, P_mean=0.0, P_std=1e-3) -> (out - 1).abs().max() < 0.01
batch_size       dif.sample_timesteps(2.5, 10)
t                adm(torch.tensor([0, 50]))
t                adm(torch.tensor([0.0, 1.0]))
t                adm(torch.tensor([3]))
alphas_cumprod   adm(torch.tensor([0, 0]), alphas_cumprod=ACP[:1])
stds             dif.GaussianMixture(Z(2, 2), torch.ones(3))
augment_p        objectives.EDMObjective(augment_p=2)
sigma_min        objectives.EDMObjective(sigma_min=1, sigma_max=0.5)
steps            objectives.EDMObjective().sampling_sigmas(0)
num_timesteps    objectives.ADMObjective(num_timesteps=1)
steps            objectives.ADMObjective().sampling_sigmas(0)
steps            objectives.ADMObjective().sampling_sigmas(2000)
sampler          gen(sampler="heun")
sigmas           gen(sigmas=[10.0, 0.0])
sigmas           gen(sigmas=SIG.flip(0))
batch_size       gen(batch_size=0)
batch_size       gen(batch_size=1.5)
seeds            gen(seeds=[], labels=None)
labels           gen(labels=torch.tensor([0, 5]))
labels           gen(labels=torch.tensor([0.0, 1.0]))
labels           gen(labels=torch.tensor([[0], [1]]))
labels           gen(labels=[0, 1])
labels           gen(labels=torch.tensor([0, 1, 2]))
labels           gen(labels=None)
labels           generate.generate(U, sampler=EUL, sigmas=SIG, seeds=[0, 1], labels=Y)
precision        gen(precision="fp16")
model            generate.generate(object(), sampler=EUL, sigmas=SIG, seeds=[0])
ok               gen(labels=torch.tensor([0, 1], dtype=torch.int32)) -> torch.equal(out, gen())
ok               gen(seeds=range(2)) -> out.shape == (2, 8, 8, 1)
sampler          smp(sampler="euler")
sigmas           smp(sigmas=[10.0, 0.0])
model            generate.sample(object(), sampler=EUL, sigmas=SIG, seeds=[0])
scale            generate.Guidance(scale=nan)
scale            generate.Guidance(scale="2")
channels         generate.Guidance(scale=2, channels=1.5)
interval         generate.Guidance(scale=2, interval=(1,))
schedule         generate.Guidance(scale=2, schedule="cosine")
channels         gen(guidance=generate.Guidance(scale=2, channels=2))
interval         gen(guidance=generate.Guidance(scale=2, interval=(100, 200)))
steps            generate.default_sigmas(M, 0)
steps            generate.default_sigmas(M, 2.5)
schedule         generate.default_sigmas(M, 5, schedule="cosine")
classes          generate.class_labels([0, 1], 3, [1.5])
classes          generate.class_labels([0, 1], 3, [5])
classes          generate.class_labels([0], None, [1])
num_classes      generate.random_labels([0], 0)
nrow             generate.make_grid(Z(4, 2, 2, 1, dtype=torch.uint8), nrow=0)
images           generate.make_grid(Z(4, 2, 2, 1), nrow=2)
images           generate.save_images(Z(2, 2, 2, 1), TMP / "a.png")
out              generate.save_images(Z(2, 2, 2, 1, dtype=torch.uint8), TMP / "a.jpg")
images           generate.to_uint8(Z(1, 8, 8))
step             ckpt(step=-1)
step             ckpt(step=1.5)
keep_last        ckpt(keep_last=0)
rng_states       ckpt(rng_states={"a": 1})
state            ckpt(state={"x": object()})
source           checkpoint.load_model(str(TMP / "missing"))
source           checkpoint.load_model(__file__)
source           checkpoint.load_model(42)
release_resolution checkpoint.load_model(None, release_resolution=300)
batch_size       mb(Z(4, 1, 2, 2, dtype=torch.uint8), Z(4, dtype=torch.long), batch_size=0)
images           mb(Z(4, 1, 2, 2), Z(4, dtype=torch.long))
labels           mb(Z(4, 1, 2, 2, dtype=torch.uint8), Z(3, dtype=torch.long))
images           mb(Z(0, 1, 2, 2, dtype=torch.uint8), Z(0, dtype=torch.long))
model            trn(model=object())
objective        trn(objective=object())
data             trn(data=None)
data             trn(data=lambda step: iter([(Z(4, 1, 16, 16), Z(4, dtype=torch.long))]))
data             trn(data=lambda step: iter([(Z(4, 1, 8, 8), Z(4))]))
steps            trn(steps=1.5)
batch_size       trn(batch_size=0)
lr               trn(lr=nan)
precision        trn(precision="fp16")
out              trn(run_dir=__file__)
ok               trn() -> out.step == 1
resolution       runs.latent_side(12)
model_factory    runs.import_factory("no_such_module:f")
pattern          data.ShardWriter(str(TMP / "x.tar"))
img              data.encode_image(np.zeros((4, 4, 3)), "png")
image_format     data.encode_image(PIL.Image.new("RGB", (4, 4)), "gif")
png_compress_level data.encode_image(PIL.Image.new("RGB", (4, 4)), png_compress_level=10)
quality          data.encode_image(PIL.Image.new("RGB", (4, 4)), "jpg", quality=500)
resolution       data.center_crop_resize(PIL.Image.new("RGB", (4, 4)), 0)
workers          data.write_image_shards(data.digits_source(), str(TMP / "w" / "d-%03d.tar"), workers=-1)
source           data.write_image_shards(data.ImageSource(lambda: [("a", 3, 0)], 1, [], False), str(TMP / "w%d.tar"))
mu2              fid(mu2=np.zeros(4))
sigma1           fid(sigma1=np.ones((3, 2)))
mu1              fid(mu1=np.full(3, nan))
features         evaluation.feature_statistics(Z(5))
features         evaluation.feature_statistics(Z(1, 3))
probs            evaluation.inception_score_from_probabilities(torch.full((4, 3), -1.0), splits=1)
splits           evaluation.inception_score_from_probabilities(torch.full((4, 3), 1 / 3), splits=0)
k                evaluation.precision_recall(torch.rand(8, 3), torch.rand(8, 3), k=0)
fake_features    evaluation.precision_recall(torch.rand(8, 3), torch.rand(8, 4))
k                evaluation.manifold_radii(torch.rand(5, 3), k=10)
block            evaluation.manifold_radii(torch.rand(5, 3), block=0)
splits           evaluation.inception_score(torch.rand(4, 3), splits=10)
noise            dif.sample_ddim(gm, Z2, SIG, eta=1, noise=lambda: "x")
sigma_max        dif.karras_sigmas(3, 0.002, 1e300)
window           lat(input_size=256, patch_size=1)
""".strip().splitlines()

TIMEOUT_S = 5  # a call still running then is a hang (or a huge allocation)
NAMED_WITHIN = 8  # a clean refusal names the argument among its first words
torch.set_num_threads(1)
warnings.simplefilter("ignore")
nan, inf = float("nan"), float("inf")
Z = torch.zeros
TMP = Path(tempfile.mkdtemp())


def tiny(**kw: object) -> nn.ImageDiffiT:
    torch.manual_seed(0)
    args = dict(resolution=8, in_channels=1, channels=(8, 16), blocks_per_stage=(1, 1), window=4, num_heads=2,
                time_dim=16, num_classes=3)  # fmt: skip
    return nn.ImageDiffiT(**(args | kw)).eval()


def lat(**kw: object) -> nn.LatentDiffiT:
    torch.manual_seed(0)
    args = dict(input_size=4, patch_size=2, in_channels=2, hidden_size=16, depth=1, num_heads=2, num_classes=3)
    return nn.LatentDiffiT(**(args | kw)).eval()


def tmsa(**kw: object) -> nn.TMSA:
    return nn.TMSA(**(dict(dim=8, time_dim=4, num_heads=2, window=2) | kw))


def block(**kw: object) -> nn.TMSABlock:
    return nn.TMSABlock(**(dict(dim=8, time_dim=4, num_heads=2, window=2) | kw))


M, U, L = tiny(), tiny(num_classes=None), lat()
X, T, Y = torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 2])
ATTN, BLOCK = tmsa(), block()
RES = nn.ResBlock(dim=8, time_dim=4, num_heads=2, window=2, groups=2)
GRID, TOK, TT = torch.randn(2, 4, 4, 8), torch.randn(2, 4, 8), torch.randn(2, 4)
SIG = dif.karras_sigmas(3, 0.01, 10.0)
ACP = dif.betas_to_alphas_cumprod(dif.linear_betas(50))
GM = dif.GaussianMixture(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]), torch.tensor([0.3, 0.3]))
PRE = dif.EDMPrecond(M)
VP = dif.VPEpsDenoiser(L, alphas_cumprod=ACP)
EUL = dif.sample_euler
Z2 = Z(2, 2)


def gm(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact denoiser of a 2-D Gaussian mixture."""
    return GM(x, sigma)


def flat(x: torch.Tensor, noise_label: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """A backbone of a user's own that checks nothing: zeros."""
    return torch.zeros_like(x)


def finite(out: object) -> bool:
    return isinstance(out, torch.Tensor) and bool(out.isfinite().all())


def eul(x: object, sigmas: object) -> torch.Tensor:
    return dif.sample_euler(gm, x, sigmas)


def cfg(**kw: object) -> dif.ClassifierFreeGuidance:
    return dif.ClassifierFreeGuidance(PRE, **(dict(num_classes=3, scale=2.0) | kw))


def adm(t: torch.Tensor, **kw: object) -> torch.Tensor:
    return dif.adm_hybrid_loss(L, Z(2, 2, 4, 4), t, **(dict(y=Y, alphas_cumprod=ACP) | kw))


def gen(**kw: object) -> torch.Tensor:
    args = dict(sampler=EUL, sigmas=SIG, seeds=[0, 1], labels=torch.tensor([0, 1]), batch_size=2)
    return generate.generate(M, **(args | kw))


def smp(**kw: object) -> torch.Tensor:
    return generate.sample(M, **(dict(sampler=EUL, sigmas=SIG, seeds=[0, 1], labels=torch.tensor([0, 1])) | kw))


def ckpt(**kw: object) -> Path:
    opt = torch.optim.AdamW(U.parameters())
    args = dict(step=1, model=U, ema=U, optimizer=opt, rng_states={}, state={})
    return checkpoint.save_checkpoint(TMP / "run", **(args | kw))


def trn(**kw: object) -> object:
    images, labels = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8), torch.arange(8) % 3
    cpu, count = DistInfo(0, 1, 0, torch.device("cpu")), len(list(TMP.glob("run-*")))
    args = dict(model=tiny(), objective=objectives.EDMObjective(), steps=1, batch_size=4, lr=1e-3, dist=cpu,
                data=lambda step: data.memory_batches(images, labels, batch_size=4, seed=0, start_step=step),
                run_dir=TMP / f"run-{count}")  # fmt: skip
    return train(**(args | kw))


def mb(images: torch.Tensor, labels: torch.Tensor, **kw: object) -> tuple:
    return next(data.memory_batches(images, labels, **(dict(batch_size=2, seed=0) | kw)))


def fid(**kw: object) -> float:
    return evaluation.frechet_distance(
        **(dict(mu1=np.zeros(3), sigma1=np.eye(3), mu2=np.ones(3), sigma2=np.eye(3)) | kw)
    )


class Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang


def describe(out: object) -> str:
    if isinstance(out, torch.Tensor):
        bad = " holding NaN/inf" if out.is_floating_point() and not bool(out.isfinite().all()) else ""
        return f"a tensor {tuple(out.shape)} {out.dtype}{bad}"
    return f"a {type(out).__name__}"


def classify(line: str) -> tuple[str, str]:
    """('a' clean | 'b' unclear error | 'c' silent wrong result | 'd' hang or huge allocation, what happened)."""
    expect, call = line.split(maxsplit=1)
    call, _, check = call.partition(" -> ")
    before = sorted(TMP.rglob("*"))
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIMEOUT_S)
    try:
        out = eval(call, globals())
    except Hang:
        return "d", f"still running after {TIMEOUT_S} s"
    except (ValueError, TypeError, OutOfMemory) as err:  # OutOfMemory: diffit's one line naming the argument
        text = str(err).strip()
        words = [w.split(".")[-1] for w in re.findall(r"[A-Za-z_][\w.]*", " ".join(text.split()[:NAMED_WITHIN]))]
        wrote = sorted(TMP.rglob("*")) != before
        clean = expect != "ok" and "\n" not in text and (expect in words or f"'{expect}'" in text) and not wrote
        return ("a" if clean else "b"), f"{type(err).__name__}: {text}" + (" (and wrote files)" if wrote else "")
    except Exception as err:  # noqa: BLE001 - what users would meet
        kind = "d" if "allocate" in str(err) else "b"
        return kind, f"{type(err).__name__}: {err}"
    finally:
        signal.alarm(0)
    if expect == "ok":
        ok = bool(eval(check, globals(), {"out": out}))
        return ("a" if ok else "c"), f"returned {describe(out)}"
    return "c", f"returned {describe(out)}"


def main() -> None:
    verbose = "-v" in sys.argv
    counts = dict.fromkeys("abcd", 0)
    for line in cases:
        kind, detail = classify(line)
        counts[kind] += 1
        if kind != "a" or verbose:
            print(f"{kind}  {line[:100]}\n     -> {detail.splitlines()[0][:160] if detail else ''}")
    print(f"(b) unclear error {counts['b']}, (c) silent wrong result {counts['c']}, (d) hang or huge allocation "
          f"{counts['d']}")  # fmt: skip
    print(f"{len(cases)} calls, {counts['a']} clean")


if __name__ == "__main__":
    main()

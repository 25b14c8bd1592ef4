"""Drive the CLI with bad invocations of every command; count the clean refusals (exit 2, one line, no traceback,
nothing written). Run from the repository root: python benchmarks/bad_invocations.py"""

import os
import pathlib
import shlex
import tempfile

import numpy as np
from typer.testing import CliRunner

from diffit_cli.main import app

r = CliRunner()
cases = """
train --lr -1
train --lr inf
train --lr nan
train --beta1 2
train --beta2 -0.1
train --weight-decay -1
train --weight-decay nan
train --micro-batch 0
train --micro-batch 3
train --batch-size 0
train --batch-size -4
train --num-workers -1
train --steps 0
train --steps -5
train --ckpt-every 0
train --keep-last 0
train --log-every 0
train --sample-every -1
train --warmup -1
train --ema 1.5
train --ema nan
train --grad-clip -1
train --grad-clip nan
train --label-dropout 1
train --label-dropout -0.1
train --augment 2
train --augment nan
train --max-bad-steps 0
train --precision fp8
train --model xl9
train --model s2
train --model-factory nope
train --model-factory os:nothing
train --model-factory nopkg.x:y
train --res 0
train --res 32
train --res -16
train --data ''
train --data /nonexistent/x-{000..003}.tar
train --data notes.txt
train --latent
train --latent --data notes.txt
train --out ''
train --out notes.txt
train --out notes.txt/run
train --out /proc/run
train --device cuda
train --device cuda:3
train --device tpu
train --device ''
train --vae nothere --latent --data notes.txt
train --seed -1
train --lr abc
train --unknown 3
sample --n 0
sample --n -3
sample --batch-size 0
sample --steps 0
sample --steps -2
sample --sampler nope
sample --cfg nan
sample --cfg -1
sample --cfg inf
sample --cfg-schedule zigzag
sample --cfg-channels 0
sample --cfg-channels 5
sample --guidance-interval 1
sample --guidance-interval a,b
sample --guidance-interval 3,1
sample --guidance-interval 1,nan
sample --guidance-interval -1,2
sample --class 12
sample --class -3
sample --class abc
sample --class ''
sample --seeds 0-99999999999
sample --seeds 5-1
sample --seeds ''
sample --seeds -1
sample --seeds a-b
sample --ckpt missing-run
sample --ckpt notes.txt
sample --out x.jpg
sample --out ''
sample --out notes.txt/x.png
sample --out nodir/x.png
sample --out full
sample --out notes.txt
sample --device cuda
sample --device tpu
sample --precision fp16
sample --release-res 300
sample --model-factory nope
sample --raw --ckpt notes.txt
sample --out /proc/x.png
sample --out .png
sample --class ²
sample --seeds 0-٣
sample --cfg 1e39 --class 0
sample --nfe 1000000000
sample --steps 1000000000
sample --n 20000000
sample --device meta
train --device meta
train --seed 18446744073709551615
info --res 0
info --res -8
info --model giant
info --model xl2 --res 100
info --model tiny --res 12
info --model cifar10 --res 30
eval stats nothing.npz out.npz
eval stats notes.txt out.npz
eval stats empty out.npz
eval stats full out.npz --batch-size 0
eval stats full out.npz --max-count 0
eval stats full out.npz --device tpu
eval stats full out.npz --inception notes.txt
eval stats full notes.txt/out.npz
eval fid full missing.npz
eval fid full notes.txt
eval fid full full --splits 0
eval fid full full --batch-size -1
eval fid full full --json notes.txt/x.json
data shard notes.txt out/x-%03d.tar
data shard full out/x.tar
data shard full out/x-%03d.tar --res 0
data shard full out/x-%03d.tar --max-count 0
data shard full out/x-%03d.tar --workers -1
data digits --res 0
data digits --res 100000
data shard full out/x-%03d.tar --center-crop
data encode nothing.tar out/l-%03d.tar --vae none
data encode nothing.tar out/l-%03d.tar --vae none --batch-size 0
train --res abc
sample --nope
sample --cfg
sample --n 2 extra
info --res 1.5
eval fid full
data encode
data shard full
nope
train --vae nothere
train --batch-size 1000000000000000
sample --cfg 2 --class 0 --guidance-interval 100,200
sample --cfg 2 --class 0 --guidance-interval 0.0001,0.001
sample --cfg 2 --class 0 --steps 2 --guidance-interval 1,2
sample --out {near}.png
sample --out {long}
train --out {long}
eval stats full {long}.npz
eval stats full /proc/x.npz
eval fid full full --json /proc/x.json
data shard full o/{near}-%06d.tar
train --data full
eval stats images.npz images.npz
eval fid images.npz stats.npz --precision-recall
eval fid images.npz images.npz --precision-recall
eval fid images.npz garbage.npz
""".strip().splitlines()
NAMES = {"near": "n" * 251, "long": "n" * 256}  # a name that fits (255 bytes with .png), and one that does not
root = pathlib.Path(tempfile.mkdtemp())
os.chdir(root)
(root / "notes.txt").write_text("x")
(root / "garbage.npz").write_text("x")  # an .npz that is no zip
(root / "full").mkdir()
(root / "full" / "000000.png").write_bytes(b"x")
(root / "empty").mkdir()
np.savez(root / "images.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))  # images that are never to be replaced
np.savez(root / "stats.npz", mu=np.zeros(2), sigma=np.eye(2))  # statistics only: no images for precision/recall
bad = 0
for line in cases:
    args = shlex.split(line.replace("{near}", NAMES["near"]).replace("{long}", NAMES["long"]))
    if args[0] == "train" and "--steps" not in args:
        args[1:1] = ["--steps", "1"]
    if args[0] == "train" and "--batch-size" not in args:
        args[1:1] = ["--batch-size", "4"]
    if args[0] == "train" and "--out" not in args:
        args += ["--out", "run-x"]
    before = sorted(map(str, root.rglob("*")))
    res = r.invoke(app, args)
    after = sorted(map(str, root.rglob("*")))
    out = res.output.strip()
    lines = out.splitlines()
    tb = "Traceback" in out or res.exception is not None and not isinstance(res.exception, SystemExit)
    ok = res.exit_code == 2 and not tb and len(lines) == 1 and before == after  # typer's usage errors too
    if not ok:
        bad += 1
        exc = type(res.exception).__name__ if res.exception else None
        print(f"UNCLEAN [{res.exit_code}] {line}\n   -> {out[:300]!r} exc={exc} changed={before != after}")
print(f"{len(cases)} invocations, {len(cases) - bad} clean, {bad} unclean")

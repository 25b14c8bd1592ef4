"""Regenerate the bundled digits shards (diffit/data/assets/digits16/) from scikit-learn.

    python examples/make_digits_shards.py [OUT_FOLDER]

The tar contents are byte-identical on every run (fixed member order, times and owners; PNGs stored
without compression), so the printed content hash matches the committed dataset.json.
"""

import os
import sys

from diffit.data import digits_folder, write_digits_shards
from diffit.data.writing import DIGITS_PATTERN

out = sys.argv[1] if len(sys.argv) > 1 else digits_folder()
manifest = write_digits_shards(os.path.join(out, DIGITS_PATTERN), replace=True)
size = sum(os.path.getsize(os.path.join(out, s.name)) for s in manifest.shards)
print(
    f"{manifest.count} digits, {manifest.resolution}x{manifest.resolution}, {manifest.classes} classes, "
    f"{len(manifest.shards)} shard(s), {size / 1e6:.2f} MB in {out}"
)
print(f"content_hash {manifest.content_hash}")

"""WebDataset shards for images and pre-encoded latents, their pipelines, and the bundled digits."""

from diffit.data.badinput import BadSample, BadSampleLog, BadSampleWarning
from diffit.data.digits import (
    DIGITS_CITATION,
    DIGITS_RESOLUTION,
    digits_folder,
    digits_manifest,
    digits_source,
    digits_urls,
    write_digits_shards,
)
from diffit.data.images import center_crop_resize, decode_image, encode_image
from diffit.data.manifest import Manifest, find_manifest, read_manifest, verify_shards, write_manifest
from diffit.data.shards import ShardInfo, ShardWriter, read_shard
from diffit.data.urls import expand_urls, mix_seed, resolve_rank
from diffit.data.writing import ImageSource, array_source, folder_source, write_image_shards

__all__ = [
    "DIGITS_CITATION", "DIGITS_RESOLUTION", "BadSample", "BadSampleLog", "BadSampleWarning", "ImageSource",
    "Manifest", "ShardInfo", "ShardWriter", "array_source", "center_crop_resize", "decode_image",
    "digits_folder", "digits_manifest", "digits_source", "digits_urls", "encode_image", "expand_urls",
    "find_manifest", "folder_source", "mix_seed", "read_manifest", "read_shard", "resolve_rank",
    "verify_shards", "write_digits_shards", "write_image_shards", "write_manifest",
]

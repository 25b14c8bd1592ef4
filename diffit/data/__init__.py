"""WebDataset shards for images and pre-encoded latents, their pipelines, and the bundled digits."""

from diffit.data.badinput import BadSample, BadSampleLog, BadSampleWarning
from diffit.data.decoders import UNLABELLED, ImageDecoder, LatentDecoder
from diffit.data.digits import (
    DIGITS_CITATION,
    DIGITS_RESOLUTION,
    digits_folder,
    digits_manifest,
    digits_source,
    digits_urls,
    write_digits_shards,
)
from diffit.data.encode import encode_latents, load_vae, vae_posterior
from diffit.data.images import center_crop_resize, decode_image, encode_image
from diffit.data.manifest import Manifest, find_manifest, read_manifest, verify_shards, write_manifest
from diffit.data.memory import batch_indices, load_images, memory_batches
from diffit.data.pipelines import SD_SCALE_FACTOR, Batches, eval_pipeline, image_pipeline, latent_pipeline
from diffit.data.shards import ShardInfo, ShardWriter, read_shard
from diffit.data.urls import expand_urls, mix_seed, resolve_rank
from diffit.data.writing import ImageSource, array_source, folder_source, write_image_shards

__all__ = [
    "DIGITS_CITATION",
    "DIGITS_RESOLUTION",
    "SD_SCALE_FACTOR",
    "UNLABELLED",
    "array_source",
    "BadSample",
    "BadSampleLog",
    "BadSampleWarning",
    "batch_indices",
    "Batches",
    "center_crop_resize",
    "decode_image",
    "digits_folder",
    "digits_manifest",
    "digits_source",
    "digits_urls",
    "encode_image",
    "encode_latents",
    "eval_pipeline",
    "expand_urls",
    "find_manifest",
    "folder_source",
    "image_pipeline",
    "ImageDecoder",
    "ImageSource",
    "latent_pipeline",
    "LatentDecoder",
    "load_images",
    "load_vae",
    "Manifest",
    "memory_batches",
    "mix_seed",
    "read_manifest",
    "read_shard",
    "resolve_rank",
    "ShardInfo",
    "ShardWriter",
    "vae_posterior",
    "verify_shards",
    "write_digits_shards",
    "write_image_shards",
    "write_manifest",
]

"""Evaluation: TF-FID Inception features, Frechet Inception Distance, Inception Score, improved precision and
recall, statistics files."""

from diffit.evaluation.extract import (
    ImageEvaluation,
    Progress,
    evaluate_images,
    evaluate_reference,
    extract_features,
    is_statistics_file,
    open_reference,
    reference_statistics,
)
from diffit.evaluation.inception import (
    FEATURE_DIM,
    INCEPTION_RESOLUTION,
    InceptionV3,
    default_inception_path,
    load_inception,
    tf_bilinear_resize,
)
from diffit.evaluation.manifold import DEFAULT_BLOCK, DEFAULT_K, manifold_radii, precision_recall
from diffit.evaluation.sources import ImageBatches, npz_keys, open_images
from diffit.evaluation.statistics import (
    FeatureStats,
    StatsAccumulator,
    check_statistics_out,
    feature_statistics,
    frechet_distance,
    inception_score,
    inception_score_from_probabilities,
    load_statistics,
    save_statistics,
)

__all__ = [
    "DEFAULT_BLOCK",
    "DEFAULT_K",
    "FEATURE_DIM",
    "INCEPTION_RESOLUTION",
    "FeatureStats",
    "ImageBatches",
    "ImageEvaluation",
    "InceptionV3",
    "Progress",
    "StatsAccumulator",
    "check_statistics_out",
    "default_inception_path",
    "evaluate_images",
    "evaluate_reference",
    "extract_features",
    "feature_statistics",
    "frechet_distance",
    "inception_score",
    "inception_score_from_probabilities",
    "is_statistics_file",
    "load_inception",
    "load_statistics",
    "manifold_radii",
    "npz_keys",
    "open_images",
    "open_reference",
    "precision_recall",
    "reference_statistics",
    "save_statistics",
    "tf_bilinear_resize",
]

"""MimiQ losses: synthesis (L_IHC, L_CL, L_TV, PSAQ-ViT entropy) and fine-tuning (L_KL, L_HAD), and the
baselines' generator and student losses (GDFQ, Qimera, AdaDFQ, PSAQ-ViT V2)."""
from .dfq import (DifferenceEntropyLoss, LabelCrossEntropyLoss, adaptability_margin_loss, difference_entropy,
                  normalised_adaptability, output_divergence, soft_cross_entropy)
from .distill import KLDistillLoss
from .had import HAD_METRICS, HeadAttentionDistillLoss
from .ihc import InterHeadCoherencyLoss, head_coherency, spatial_head_maps, spatial_scores
from .ssim import global_ssim, minmax_normalize, pairwise_global_ssim, ssim_from_moments, upcast_half
from .psaq import PatchSimilarityEntropyLoss, kde_differential_entropy
from .synthesis import ClassPriorLoss, TotalVariationLoss
from .utils import require_field, select_records

__all__ = ['ClassPriorLoss', 'DifferenceEntropyLoss', 'HAD_METRICS', 'HeadAttentionDistillLoss',
           'InterHeadCoherencyLoss', 'KLDistillLoss', 'LabelCrossEntropyLoss', 'PatchSimilarityEntropyLoss',
           'TotalVariationLoss', 'adaptability_margin_loss', 'difference_entropy', 'global_ssim', 'head_coherency',
           'kde_differential_entropy', 'minmax_normalize', 'normalised_adaptability', 'output_divergence',
           'pairwise_global_ssim', 'require_field', 'select_records', 'soft_cross_entropy', 'spatial_head_maps',
           'spatial_scores', 'ssim_from_moments', 'upcast_half']

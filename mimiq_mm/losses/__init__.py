"""MimiQ losses: synthesis (L_IHC, L_CL, L_TV, PSAQ-ViT entropy) and fine-tuning (L_KL, L_HAD)."""
from .distill import KLDistillLoss
from .had import HAD_METRICS, HeadAttentionDistillLoss
from .ihc import InterHeadCoherencyLoss, head_coherency, spatial_head_maps, spatial_scores
from .ssim import global_ssim, minmax_normalize, pairwise_global_ssim, ssim_from_moments, upcast_half
from .psaq import PatchSimilarityEntropyLoss, kde_differential_entropy
from .synthesis import ClassPriorLoss, TotalVariationLoss
from .utils import require_field, select_records

__all__ = ['ClassPriorLoss', 'HAD_METRICS', 'HeadAttentionDistillLoss', 'InterHeadCoherencyLoss', 'KLDistillLoss',
           'PatchSimilarityEntropyLoss', 'TotalVariationLoss', 'upcast_half', 'global_ssim', 'head_coherency',
           'kde_differential_entropy', 'minmax_normalize', 'pairwise_global_ssim', 'require_field', 'ssim_from_moments',
           'select_records', 'spatial_head_maps', 'spatial_scores']

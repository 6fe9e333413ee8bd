"""Attention analysis behind ``tools/analysis``: per-head maps of a query patch (paper Fig. 2),
per-image inter-head similarity of real vs synthetic images (Fig. 3), synthetic sample grids and
teacher vs quantized-student head distances per layer.

Plotting needs matplotlib; it is imported only when a figure is drawn.
"""
from .attention_stats import (attention_layer_names, check_layers, image_head_similarity,
                              patch_centre_pixel, patch_grid_of, query_head_maps, record_attention,
                              records_head_similarity, resolve_query)
from .distance import HeadDistances, head_distances, record_head_distances
from .errors import AnalysisInputError, LayerIndexError
from .images import (ImageBatch, find_images, load_image_folder, load_synthetic_set, normalize_pixels,
                     resize_center_crop)
from .model_loading import (AnalysisModel, calibrate_fresh_student, calibrate_student, config_class_names,
                            config_model, read_class_names, timm_model)
from .reports import format_summary_table, save_json, summarize

__all__ = ['AnalysisInputError', 'AnalysisModel', 'HeadDistances', 'ImageBatch', 'LayerIndexError',
           'attention_layer_names', 'calibrate_fresh_student', 'calibrate_student', 'check_layers',
           'config_class_names', 'config_model', 'find_images', 'format_summary_table',
           'head_distances', 'image_head_similarity', 'load_image_folder', 'load_synthetic_set',
           'normalize_pixels', 'patch_centre_pixel', 'patch_grid_of', 'query_head_maps', 'read_class_names',
           'record_attention', 'record_head_distances', 'records_head_similarity', 'resize_center_crop',
           'resolve_query', 'save_json', 'summarize', 'timm_model']

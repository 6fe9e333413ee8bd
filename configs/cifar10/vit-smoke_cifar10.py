# Tiny ViT for the `smoke` scale (CPU tests of the benchmark driver, figures meaningless):
# 32x32 input, patch 4 (8x8 grid), class token, embedding 24, depth 2, 3 heads.
_base_ = ['./vit-mini_p2_cifar10.py']

model = dict(patch_size=4, embed_dim=24, depth=2, num_heads=3, mlp_ratio=2.0, drop_path_rate=0.0)

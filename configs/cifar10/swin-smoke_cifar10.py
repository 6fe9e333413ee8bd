# Tiny Swin for the `smoke` scale (CPU checks only): patch 4 (8x8 tokens), window 4, two stages 8->4,
# embedding 24, depths (1, 1), heads (3, 3).
_base_ = ['./swin-mini_p2w4_cifar10.py']

model = dict(patch_size=4, embed_dim=24, depths=(1, 1), num_heads=(3, 3), mlp_ratio=2.0, drop_path_rate=0.0)

# Swin teacher of the `cpu-2core` benchmark scale: patch 4 (8x8 grid), window 4 (shifted in every
# second block), two stages 8x8 -> 4x4 with 3 and 6 heads, embedding 48. Sized for a 2-core CPU.
_base_ = ['./swin-mini_p2w4_cifar10.py']

model = dict(patch_size=4, embed_dim=48, depths=(2, 2), num_heads=(3, 6), drop_path_rate=0.0)

# Main CIFAR-10 teacher of the `cpu-2core` benchmark scale: the DeiT-S-style ViT of the GPU scales
# shrunk until the whole table fits in about 1.5 hours of a 2-core CPU. 32x32 input, patch 4 -> 8x8
# patch grid (attention maps over 64 keys, coarser than the paper's 14x14), class token, 6 heads of
# dimension 16 (the head count of DeiT-S, which is what the head-wise losses act on), embedding 96,
# depth 4 (0.45 M parameters). No drop-path: the teacher trains for a few epochs only.
_base_ = ['./vit-mini_p2_cifar10.py']

model = dict(patch_size=4, embed_dim=96, depth=4, num_heads=6, drop_path_rate=0.0)

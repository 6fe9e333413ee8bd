# DeiT-S dimensions on CIFAR-10 (the `paper` benchmark scale): 32x32 input, patch 2 -> 16x16 grid,
# class token, embedding 384, depth 12, 6 heads (21 M parameters). About 4x the compute of
# vit-mini_p2_cifar10.py per image.
_base_ = ['./vit-mini_p2_cifar10.py']

model = dict(embed_dim=384, depth=12, num_heads=6)

# The cpu-2core study's fine-grid teacher (configs/cifar10/study.py): patch 2 -> a 16x16 patch grid
# (attention maps over 256 keys, nearer the paper's 14x14 than the 8x8 of patch 4), class token,
# 4 heads of dimension 16, embedding 64, depth 4, so that it trains on a 2-core CPU.
_base_ = ['./vit-mini_p2_cifar10.py']

model = dict(patch_size=2, embed_dim=64, depth=4, num_heads=4, drop_path_rate=0.0)

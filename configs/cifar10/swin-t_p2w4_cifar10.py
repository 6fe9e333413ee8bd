# Swin-T-like CIFAR-10 teacher of the `paper` scale: patch 2, window 4, three stages 16->8->4,
# embedding 96, depths (2, 6, 2), heads (3, 6, 12).
_base_ = ['./swin-mini_p2w4_cifar10.py']

model = dict(embed_dim=96, depths=(2, 6, 2), num_heads=(3, 6, 12), drop_path_rate=0.2)

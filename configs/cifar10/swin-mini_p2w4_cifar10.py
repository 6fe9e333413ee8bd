# Swin-style CIFAR-10 teacher of the `gpu-30min` scale: timm SwinTransformer through TimmClassifier,
# 32x32 input, patch 2 (16x16 tokens), window 4 (shifted windows), three stages 16->8->4,
# embedding 64, depths (2, 4, 2), heads (2, 4, 8) (2.7 M parameters).
_base_ = ['./cifar10_teacher_base.py']

model = dict(
    type='TimmClassifier',
    model_name='swin_tiny_patch4_window7_224',
    pretrained=False,
    img_size=32,
    patch_size=2,
    window_size=4,
    embed_dim=64,
    depths=(2, 4, 2),
    num_heads=(2, 4, 8),
    mlp_ratio=4.0,
    drop_path_rate=0.1,
    num_classes=10,
    loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1))

# Main CIFAR-10 teacher of the `gpu-30min` benchmark scale: a DeiT-S-style ViT shrunk to train in
# about five H100 minutes. 32x32 input, patch 2 -> 16x16 patch grid (attention maps over 256 keys),
# class token, 6 heads of dimension 32, embedding 192, depth 6 (2.7 M parameters).
# timm VisionTransformer through mmpretrain's TimmClassifier; label smoothing 0.1.
_base_ = ['./cifar10_teacher_base.py']

model = dict(
    type='TimmClassifier',
    model_name='vit_small_patch16_224',
    pretrained=False,
    img_size=32,
    patch_size=2,
    embed_dim=192,
    depth=6,
    num_heads=6,
    mlp_ratio=4.0,
    drop_path_rate=0.1,
    class_token=True,
    global_pool='token',
    num_classes=10,
    loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1))

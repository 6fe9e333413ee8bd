# As upernet_deit-s_mimiq_w4a4.py, with the other synthesis prior: L_CL from mmpretrain's ImageNet
# DeiT-S classifier, on the synthetic images resized to 224x224 (the segmentor's DeiT-S was
# initialised from the original DeiT-S weights; this is the same architecture trained by
# mmpretrain). The targets then range over the 1000 ImageNet classes; L_IHC still runs on the
# segmentor's own backbone at 512x512.
_base_ = ['./upernet_deit-s_mimiq_w4a4.py']

train_cfg = dict(
    synthesis=dict(
        prior=dict(
            _delete_=True,
            type='classifier',
            model=dict(
                type='ImageClassifier', _scope_='mmpretrain',
                backbone=dict(type='VisionTransformer', arch='deit-small', img_size=224, patch_size=16),
                neck=None,
                head=dict(type='VisionTransformerClsHead', num_classes=1000, in_channels=384)),
            checkpoint='https://download.openmmlab.com/mmclassification/v0/deit/'
                       'deit-small_pt-4xb256_in1k_20220218-9425b9bb.pth',
            image_size=224)))

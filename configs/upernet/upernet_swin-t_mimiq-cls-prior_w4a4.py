# As upernet_swin-t_mimiq_w4a4.py, with the other synthesis prior: L_CL from the ImageNet Swin-T
# classifier whose backbone the segmentor was initialised from (the original Swin-T weights,
# converted by mmpretrain), on the synthetic images resized to 224x224. The targets then range
# over the 1000 ImageNet classes; L_IHC still runs on the segmentor's own backbone at 512x512.
_base_ = ['./upernet_swin-t_mimiq_w4a4.py']

train_cfg = dict(
    synthesis=dict(
        prior=dict(
            _delete_=True,
            type='classifier',
            model=dict(
                type='ImageClassifier', _scope_='mmpretrain',
                backbone=dict(type='SwinTransformer', arch='tiny', img_size=224, drop_path_rate=0.0),
                neck=dict(type='GlobalAveragePooling'),
                head=dict(type='LinearClsHead', num_classes=1000, in_channels=768)),
            checkpoint='https://download.openmmlab.com/mmclassification/v0/swin-transformer/convert/'
                       'swin_tiny_patch4_window7_224-160bb0a5.pth',
            image_size=224)))

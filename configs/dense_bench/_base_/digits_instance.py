# Digits on CIFAR-10 (benchmarks.make_dense_data; benchmarks/dense/README.md) for mmdet's
# COCO-style configs: the base pipelines with their sizes shrunk to the 128x128 images, as
# `digits_*` variables (mmengine forbids a key in two bases; a teacher config takes them over
# explicitly). Move the data elsewhere: --cfg-options on the dataloaders, or edit digits_data_root.
digits_data_root = 'data/dense_digits/'
digits_image_size = (128, 128)
digits_metainfo = dict(classes=('0', '1', '2', '3', '4', '5', '6', '7', '8', '9'))

digits_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=digits_image_size, keep_ratio=True),
    # no RandomFlip: a mirrored digit is not the same digit
    dict(type='PackDetInputs')
]
digits_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=digits_image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
# one single-threaded process per run on this CPU: no dataloader workers
digits_train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(type='CocoDataset', data_root=digits_data_root, metainfo=digits_metainfo,
                 ann_file='annotations/instances_training.json', data_prefix=dict(img='images/training/'),
                 filter_cfg=dict(filter_empty_gt=True, min_size=32),
                 pipeline=digits_train_pipeline))
digits_test_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(type='CocoDataset', data_root=digits_data_root, metainfo=digits_metainfo,
                 ann_file='annotations/instances_validation.json', data_prefix=dict(img='images/validation/'),
                 test_mode=True,
                 pipeline=digits_test_pipeline))
digits_evaluator = dict(ann_file=digits_data_root + 'annotations/instances_validation.json')

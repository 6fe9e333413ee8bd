# Digits on CIFAR-10 (benchmarks.make_dense_data; benchmarks/dense/README.md) for mmseg's
# ADE20K-style configs: the base pipelines with their sizes shrunk to the 128x128 images, as
# `digits_*` variables (mmengine forbids a key in two bases; a teacher config takes them over
# explicitly). Label PNGs follow ADE20K (0 = ignored, reduce_zero_label=True): 11 classes after
# the reduction, background and the ten digits.
digits_data_root = 'data/dense_digits/'
digits_crop_size = (128, 128)
digits_num_classes = 11
# About 92% of the pixels are background and strokes are 1-6 px wide, under one cell of the stride-4
# decode map: with plain cross entropy a head trained from scratch for ~15 CPU-minutes predicts
# background everywhere (mIoU 8.35, measured; also with mmseg's OHEMPixelSampler). Background pixels therefore weigh 0.2 in the cross entropy; within
# 800 iterations that did not help either (benchmarks/dense/README.md, "What was tried"). The loss is
# left unreduced ('none'; mmengine averages it over the pixels): with reduction 'mean' mmseg 1.2.2
# indexes class_weight with the ignore label 255 and fails (cross_entropy's avg_factor).
digits_loss = dict(type='CrossEntropyLoss', use_sigmoid=False, class_weight=[0.2] + [1.0] * 10, reduction='none')
digits_dataset = dict(
    type='BaseSegDataset', data_root=digits_data_root, reduce_zero_label=True, img_suffix='.jpg',
    seg_map_suffix='.png',
    metainfo=dict(classes=('background', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9')))

digits_train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=digits_crop_size, cat_max_ratio=0.75),
    # no RandomFlip: a mirrored digit is not the same digit
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
digits_test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
# one single-threaded process per run on this CPU: no dataloader workers
digits_train_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(digits_dataset, data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
                 pipeline=digits_train_pipeline))
digits_test_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(digits_dataset, data_prefix=dict(img_path='images/validation',
                                                  seg_map_path='annotations/validation'),
                 pipeline=digits_test_pipeline))

# Two classes, background and digit (all ten digits one class): label maps in
# annotations/<split>_foreground/ (written with the set); the ten-class teachers find the digits
# but do not tell them apart (benchmarks/dense/README.md, "What was tried").
digits_fg_classes = ('background', 'digit')
digits_fg_loss = dict(type='CrossEntropyLoss', use_sigmoid=False, class_weight=[0.2, 1.0], reduction='none')
digits_fg_train_dataset = dict(metainfo=dict(classes=digits_fg_classes),
                               data_prefix=dict(seg_map_path='annotations/training_foreground'))
digits_fg_test_dataset = dict(metainfo=dict(classes=digits_fg_classes),
                              data_prefix=dict(seg_map_path='annotations/validation_foreground'))
digits_fg_heads = dict(decode_head=dict(num_classes=2, loss_decode=dict(digits_fg_loss, loss_weight=1.0)),
                       auxiliary_head=dict(num_classes=2, loss_decode=dict(digits_fg_loss, loss_weight=0.4)))

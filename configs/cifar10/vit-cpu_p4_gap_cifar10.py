# A second teacher shape for the cpu-2core study (configs/cifar10/study.py): the cpu-2core ViT
# without a class token (global average pooling) and with 4 heads of dimension 24, so the head-wise
# losses see another head count and no prefix token.
_base_ = ['./vit-cpu_p4_cifar10.py']

model = dict(num_heads=4, class_token=False, global_pool='avg')

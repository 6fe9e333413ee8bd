# A backbone without a supported attention family (a timm ResNet): must be refused clearly.
_base_ = ['./tiny_cls_mimiq.py']

model = dict(architecture=dict(_delete_=True, type='TimmClassifier', model_name='resnet10t', pretrained=False,
                               num_classes=4))

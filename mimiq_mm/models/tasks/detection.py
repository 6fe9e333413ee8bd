"""MimiQ for dense prediction: mmseg segmentors (UPerNet) and mmdet two-stage detectors (Mask R-CNN).

The paper (Table 2) applies MimiQ unchanged to ViT/Swin backbones under CNN decoders; it leaves
open what the synthesis prior and the output distillation are for a model without a single
logit vector. The choices made here:

Synthesis (``L_G = L_IHC + α·L_CL + β·L_TV``)
    L_IHC and L_TV are those of classification: L_IHC runs on every attention call of the dense
    teacher's backbone at the synthesis size (Swin windows and shifted windows; DeiT's global
    attention on the segmentor's 512x512 grid). For L_CL two priors are selectable with
    ``train_cfg.synthesis.prior``:

    * ``None`` / ``'head'`` (default): the dense model's own head. Segmentation: per-pixel cross
      entropy of the decode head's logits towards the image's target class. Detection: cross
      entropy of the RoI classifier's scores on the teacher's top RPN proposals towards the
      target class. It needs nothing but the checkpoint being quantized, speaks the task's label
      space (COCO/ADE20K classes), and reads the very weights being quantized (the dense model's
      backbone has moved away from the ImageNet backbone it was initialised from).
    * ``dict(type='classifier', model=..., checkpoint=..., image_size=224)``: an ImageNet
      classifier with the same backbone architecture (the pretrained model the dense model
      started from), run on the synthetic images resized to its input size
      (:class:`ClassifierPrior`). Its 1000-way prior is the paper's original L_CL; it costs a
      second model and checkpoint.

Fine-tuning (``L_T = L_KD + γ·L_HAD``)
    L_HAD is the paper's, on the backbone's attention heads. The output term fits each task and
    uses only what the student can match without labels:

    * segmentation: per-pixel KL between teacher and student class distributions of the decode
      head, plus the auxiliary head's per-pixel KL (weight 0.4, its training weight; it keeps
      every parameter in the graph and calibrates the auxiliary head's quantizers).
    * detection (two-stage): the student runs on the *teacher's* proposals, so box and mask
      outputs are compared RoI by RoI without any assignment: relative MSE of the FPN features;
      binary KL of RPN objectness and objectness-weighted L1 of RPN deltas; KL of the RoI class
      distribution and class-probability-weighted L1 of the box deltas on the teacher's top
      ``num_rois`` proposals; binary KL of the mask logits of the teacher's class on its
      ``num_mask_rois`` most confident RoIs.

    Normalisation layers (BatchNorm/SyncBN of UPerNet's heads) and dropout/drop-path stay in
    eval mode in the student: the teacher's running statistics are those of real data and must
    not be replaced by synthetic-batch statistics, and the KD target is the teacher's
    deterministic output.
"""
import copy
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.logging import print_log

from ..losses import ClassPriorLoss, KLDistillLoss
from ..losses.ssim import as_float32
from .tasks import ClassifierTask, TaskAdapter


def freeze_stochastic_and_norm(model: nn.Module) -> None:
    """Put normalisation layers with running statistics and dropout / drop-path modules of
    ``model`` into eval mode (the rest of the model keeps its mode)."""
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)) \
                or type(m).__name__ in ('DropPath', 'DropBlock'):
            m.eval()


def _binary_kl(student_logits, teacher_logits):
    """Elementwise KL(Bernoulli(σ(t)) ‖ Bernoulli(σ(s)))."""
    s, t = as_float32(student_logits), as_float32(teacher_logits.detach())
    p = t.sigmoid()
    return (F.binary_cross_entropy_with_logits(s, p, reduction='none')
            - F.binary_cross_entropy_with_logits(t, p, reduction='none'))


# ------------------------------------------------------------------------------------------ segmentation
class SegmentorTask(TaskAdapter):
    """mmseg ``EncoderDecoder`` (UPerNet etc.).

    ``forward_tensor`` returns ``dict(seg=decode logits (B, C, h, w), aux=[auxiliary logits])``.

    Args:
        aux_weight (float): weight of the auxiliary heads' per-pixel KL (0 drops it).
    """
    name = 'segmentation'

    def __init__(self, aux_weight=0.4):
        self.aux_weight = aux_weight
        self._prior = ClassPriorLoss()

    @staticmethod
    def matches(model):
        return hasattr(model, 'decode_head') and hasattr(model, 'extract_feat')

    def num_classes(self, model):
        head = model.decode_head
        head = head[-1] if isinstance(head, nn.ModuleList) else head
        return head.num_classes

    @staticmethod
    def _aux_heads(model):
        aux = getattr(model, 'auxiliary_head', None)
        if aux is None:
            return []
        return list(aux) if isinstance(aux, nn.ModuleList) else [aux]

    def forward_backbone(self, model, inputs):
        return model.extract_feat(inputs)

    def forward_prior(self, model, inputs):
        """Decode-head logits only (the synthesis prior)."""
        if isinstance(model.decode_head, nn.ModuleList):  # cascade: the model's own path
            return model(inputs, mode='tensor')
        return model.decode_head.forward(model.extract_feat(inputs))

    def forward_tensor(self, model, inputs):
        if isinstance(model.decode_head, nn.ModuleList):
            return dict(seg=model(inputs, mode='tensor'), aux=[])
        feats = model.extract_feat(inputs)
        out = dict(seg=model.decode_head.forward(feats), aux=[])
        if self.aux_weight:
            out['aux'] = [head.forward(feats) for head in self._aux_heads(model)]
        return out

    def forward_student(self, model, inputs, teacher_outputs):
        freeze_stochastic_and_norm(model)
        return self.forward_tensor(model, inputs)

    def prior_loss(self, outputs, targets):
        logits = outputs['seg'] if isinstance(outputs, dict) else outputs
        return self._prior(logits, targets)

    def distill_loss(self, student_outputs, teacher_outputs, temperature=1.0):
        kl = KLDistillLoss(temperature=temperature)
        losses = dict(loss_kd=kl(student_outputs['seg'], teacher_outputs['seg']))
        aux_s, aux_t = student_outputs.get('aux', []), teacher_outputs.get('aux', [])
        if self.aux_weight and aux_s:
            losses['loss_kd_aux'] = self.aux_weight * sum(kl(s, t) for s, t in zip(aux_s, aux_t)) / len(aux_s)
        return losses


# ------------------------------------------------------------------------------------------ detection
DETECTION_LOSS_WEIGHTS = dict(fpn=1.0, rpn_cls=1.0, rpn_bbox=1.0, roi_cls=1.0, roi_bbox=1.0, mask=1.0)


class DetectorTask(TaskAdapter):
    """mmdet two-stage detectors with a standard RoI head (Faster/Mask R-CNN).

    ``forward_tensor`` returns a dict: ``feats`` (FPN levels), ``rpn_cls``/``rpn_reg`` (per-level
    RPN maps), ``rois`` (K, 5) (the model's own top proposals), ``cls_score`` (K, C+1),
    ``bbox_pred`` (K, 4C or 4), and with a mask head ``mask_rois`` (M, 5), ``mask_labels`` (M,),
    ``mask_pred`` (M, C, 28, 28).

    Args:
        num_rois (int): proposals per image sent through the box head (training samples 512).
        num_mask_rois (int): most confident RoIs per image sent through the mask head.
        prior_rois (int): top proposals per image whose class scores form the synthesis prior.
        loss_weights (dict): weights of the distillation terms (keys of ``DETECTION_LOSS_WEIGHTS``).
    """
    name = 'detection'

    def __init__(self, num_rois=512, num_mask_rois=64, prior_rois=16, loss_weights: Optional[dict] = None):
        self.num_rois, self.num_mask_rois, self.prior_rois = int(num_rois), int(num_mask_rois), int(prior_rois)
        unknown = set(loss_weights or {}) - set(DETECTION_LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f'unknown detection loss weights {sorted(unknown)}; known: '
                             f'{sorted(DETECTION_LOSS_WEIGHTS)}')
        self.loss_weights = dict(DETECTION_LOSS_WEIGHTS, **(loss_weights or {}))

    @staticmethod
    def matches(model):
        return hasattr(model, 'rpn_head') or hasattr(model, 'bbox_head') or hasattr(model, 'roi_head')

    @staticmethod
    def _check(model):
        roi = getattr(model, 'roi_head', None)
        if getattr(model, 'rpn_head', None) is None or roi is None or isinstance(
                getattr(roi, 'bbox_head', None), nn.ModuleList) or not hasattr(roi, '_bbox_forward'):
            raise NotImplementedError(
                f'{type(model).__name__}: only two-stage detectors with an RPN and a single-stage RoI head '
                '(Faster/Mask R-CNN) are supported by the detection task')
        return roi

    def num_classes(self, model):
        return self._check(model).bbox_head.num_classes

    @staticmethod
    def _metas(inputs):
        b, _, h, w = inputs.shape
        return [dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
                     scale_factor=(1.0, 1.0)) for _ in range(b)]

    def _proposals(self, model, rpn_cls, rpn_reg, inputs, top):
        """The model's own RPN proposals (no gradient), the ``top`` best per image, as rois (K, 5)."""
        from mmdet.structures.bbox import bbox2roi
        with torch.no_grad():
            results = model.rpn_head.predict_by_feat(
                [c.detach().float() for c in rpn_cls], [r.detach().float() for r in rpn_reg],
                batch_img_metas=self._metas(inputs),
                cfg=model.rpn_head.test_cfg, rescale=False)
        return bbox2roi([r.bboxes[:top].float() for r in results]), [min(len(r), top) for r in results]

    def forward_backbone(self, model, inputs):
        return model.backbone(inputs)

    def forward_prior(self, model, inputs):
        """RoI class scores of the model's top ``prior_rois`` proposals (the synthesis prior)."""
        roi = self._check(model)
        feats = model.extract_feat(inputs)
        rpn_cls, rpn_reg = model.rpn_head(feats)
        rois, counts = self._proposals(model, rpn_cls, rpn_reg, inputs, self.prior_rois)
        return dict(cls_score=roi._bbox_forward(feats, rois)['cls_score'], counts=counts)

    def forward_tensor(self, model, inputs, rois=None, mask_rois=None, mask_labels=None):
        roi = self._check(model)
        feats = model.extract_feat(inputs)
        rpn_cls, rpn_reg = model.rpn_head(feats)
        out = dict(feats=list(feats), rpn_cls=rpn_cls, rpn_reg=rpn_reg)
        if rois is None:
            rois, _ = self._proposals(model, rpn_cls, rpn_reg, inputs, self.num_rois)
        bbox = roi._bbox_forward(feats, rois)
        out.update(rois=rois, cls_score=bbox['cls_score'], bbox_pred=bbox['bbox_pred'])
        if roi.with_mask and self.num_mask_rois > 0:
            if mask_rois is None:
                mask_rois, mask_labels = self._mask_rois(rois, bbox['cls_score'], len(inputs))
            out.update(mask_rois=mask_rois, mask_labels=mask_labels)
            if len(mask_rois):
                out['mask_pred'] = roi._mask_forward(feats, mask_rois)['mask_preds']
        return out

    def _mask_rois(self, rois, cls_score, batch_size):
        """Per image, the ``num_mask_rois`` RoIs with the highest foreground probability, and the
        most probable foreground class of each."""
        with torch.no_grad():
            fg = cls_score.detach().float().softmax(-1)[:, :-1]
            conf, labels = fg.max(-1)
            keep = []
            for i in range(batch_size):
                idx = (rois[:, 0] == i).nonzero(as_tuple=True)[0]
                keep.append(idx[conf[idx].argsort(descending=True)[:self.num_mask_rois]])
            keep = torch.cat(keep) if keep else rois.new_zeros(0, dtype=torch.long)
        return rois[keep], labels[keep]

    def forward_student(self, model, inputs, teacher_outputs):
        """The student on the teacher's proposals and mask RoIs."""
        freeze_stochastic_and_norm(model)
        t = teacher_outputs
        return self.forward_tensor(model, inputs, rois=t['rois'], mask_rois=t.get('mask_rois'),
                                   mask_labels=t.get('mask_labels'))

    def prior_loss(self, outputs, targets):
        counts = outputs['counts']
        cls_score = as_float32(outputs['cls_score'])
        if cls_score.shape[0] == 0:
            return cls_score.sum() * 0
        per_roi = torch.repeat_interleave(targets.long().to(cls_score.device),
                                          torch.as_tensor(counts, device=cls_score.device))
        return F.cross_entropy(cls_score, per_roi)

    def distill_loss(self, student_outputs, teacher_outputs, temperature=1.0):
        s, t, w = student_outputs, teacher_outputs, self.loss_weights
        losses = {}
        if w['fpn']:
            per_level = [(as_float32(fs) - as_float32(ft.detach())).pow(2).mean() /
                         as_float32(ft.detach()).pow(2).mean().clamp_min(1e-6) for fs, ft in zip(s['feats'], t['feats'])]
            losses['loss_kd_fpn'] = w['fpn'] * torch.stack(per_level).mean()
        if w['rpn_cls'] or w['rpn_bbox']:
            cls_s = torch.cat([c.flatten(1) for c in s['rpn_cls']], 1)
            cls_t = torch.cat([c.flatten(1) for c in t['rpn_cls']], 1)
            if w['rpn_cls']:
                losses['loss_kd_rpn_cls'] = w['rpn_cls'] * _binary_kl(cls_s, cls_t).mean()
            if w['rpn_bbox']:
                # (B, A·4, h, w) -> (B, h·w·A, 4), weighted by the teacher's objectness (B, h·w·A).
                reg_s = torch.cat([_anchor_major(r, 4) for r in s['rpn_reg']], 1)
                reg_t = torch.cat([_anchor_major(r, 4) for r in t['rpn_reg']], 1)
                obj = torch.cat([_anchor_major(c, 1) for c in t['rpn_cls']], 1).squeeze(-1).detach().float().sigmoid()
                l1 = (as_float32(reg_s) - as_float32(reg_t.detach())).abs().mean(-1)
                losses['loss_kd_rpn_bbox'] = w['rpn_bbox'] * (obj * l1).sum() / obj.sum().clamp_min(1.0)
        zero = s['cls_score'].sum() * 0
        if w['roi_cls']:
            losses['loss_kd_roi_cls'] = (w['roi_cls'] * KLDistillLoss(temperature)(s['cls_score'], t['cls_score'])
                                         if len(t['cls_score']) else zero)
        if w['roi_bbox']:
            losses['loss_kd_roi_bbox'] = w['roi_bbox'] * self._roi_bbox_loss(s, t) if len(t['cls_score']) else zero
        if w['mask'] and 'mask_pred' in t and 'mask_pred' in s:
            idx = torch.arange(len(t['mask_labels']), device=t['mask_labels'].device)
            ms = s['mask_pred'][idx, t['mask_labels']] if s['mask_pred'].shape[1] > 1 else s['mask_pred'][:, 0]
            mt = t['mask_pred'][idx, t['mask_labels']] if t['mask_pred'].shape[1] > 1 else t['mask_pred'][:, 0]
            losses['loss_kd_mask'] = w['mask'] * _binary_kl(ms, mt).mean()
        elif w['mask'] and 'mask_rois' in t:
            losses['loss_kd_mask'] = zero
        return losses

    @staticmethod
    def _roi_bbox_loss(s, t):
        prob = t['cls_score'].detach().float().softmax(-1)[:, :-1]          # (K, C) foreground probs
        ds, dt = as_float32(s['bbox_pred']), as_float32(t['bbox_pred'].detach())
        k = ds.shape[0]
        if ds.shape[1] == 4:                                                 # class-agnostic
            weight = prob.sum(-1, keepdim=True)
            l1 = (ds - dt).abs().mean(-1, keepdim=True)
        else:
            weight = prob
            l1 = (ds.view(k, -1, 4) - dt.view(k, -1, 4)).abs().mean(-1)
        return (weight * l1).sum() / weight.sum().clamp_min(1e-6)


def _anchor_major(x, channels):
    """(B, A·c, h, w) -> (B, h·w·A, c), the order of mmdet's anchors."""
    b, _, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, -1, channels)


# ------------------------------------------------------------------------------------------ classifier prior
class ClassifierPrior(nn.Module):
    """L_CL from an ImageNet classifier instead of the dense model's head.

    The classifier (an mmpretrain model config, typically the ImageNet model whose backbone the
    dense model was initialised from) sees the synthetic images resized to ``image_size`` and
    renormalised with its own mean/std; the loss is the cross entropy of its logits towards the
    target labels, which then range over its classes.

    Args:
        model (dict | nn.Module): mmpretrain classifier config (default scope ``mmpretrain``)
            or a built module.
        checkpoint (str | None): its weights (path or URL).
        image_size (int | tuple | None): input size of the classifier (None: the synthesis size).
        pixel_mean, pixel_std: normalisation of the images handed in (the dense teacher's).
        num_classes (int | None): classes of the classifier (default: read from its head).
    """

    def __init__(self, model, checkpoint=None, image_size=224, pixel_mean=None, pixel_std=None, num_classes=None):
        super().__init__()
        if isinstance(model, dict):
            from mmengine.registry import MODELS
            cfg = copy.deepcopy(dict(model))
            cfg.setdefault('_scope_', 'mmpretrain')
            model = MODELS.build(cfg)
        if checkpoint:
            from mmengine.runner import load_checkpoint
            load_checkpoint(model, checkpoint, map_location='cpu', strict=False, logger='current')
        else:
            print_log('ClassifierPrior: no checkpoint given, the classifier prior is randomly initialised',
                      logger='current', level=30)
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.task = ClassifierTask()
        self.image_size = None if image_size is None else (
            (image_size, image_size) if isinstance(image_size, int) else tuple(image_size))
        pre = getattr(model, 'data_preprocessor', None)
        own_mean = getattr(pre, 'mean', None)
        own_std = getattr(pre, 'std', None)
        in_mean = torch.as_tensor(pixel_mean if pixel_mean is not None else [0.] * 3, dtype=torch.float32)
        in_std = torch.as_tensor(pixel_std if pixel_std is not None else [1.] * 3, dtype=torch.float32)
        self.register_buffer('in_mean', in_mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer('in_std', in_std.view(1, -1, 1, 1), persistent=False)
        self.register_buffer('own_mean', (own_mean if own_mean is not None else in_mean).float().view(1, -1, 1, 1)
                             .clone(), persistent=False)
        self.register_buffer('own_std', (own_std if own_std is not None else in_std).float().view(1, -1, 1, 1)
                             .clone(), persistent=False)
        self._num_classes = num_classes

    def train(self, mode=True):
        return super().train(False)  # always frozen

    def num_classes(self):
        return self._num_classes or self.task.num_classes(self.model)

    def forward(self, images, targets):
        """images: (B, 3, H, W) normalised like the dense teacher's inputs; targets (B,)."""
        x = (images * self.in_std + self.in_mean - self.own_mean) / self.own_std
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode='bilinear', align_corners=False)
        logits = self.task.forward_tensor(self.model, x)
        return self.task.prior_loss(as_float32(logits), targets)


def build_synthesis_prior(cfg, pixel_mean, pixel_std, device=None):
    """``train_cfg.synthesis.prior`` -> None (the task model's own head) or a :class:`ClassifierPrior`.

    Accepts None, ``'head'``, ``dict(type='head')`` or ``dict(type='classifier', model=...,
    checkpoint=..., image_size=224, num_classes=None)``.
    """
    if cfg is None or cfg == 'head':
        return None
    if not isinstance(cfg, dict):
        raise ValueError(f"synthesis.prior must be None, 'head' or a dict with type 'head'/'classifier', got {cfg!r}")
    cfg = dict(cfg)
    kind = cfg.pop('type', 'classifier')
    if kind == 'head':
        return None
    if kind != 'classifier':
        raise ValueError(f"synthesis.prior type must be 'head' or 'classifier', got {kind!r}")
    if 'model' not in cfg:
        raise ValueError('synthesis.prior of type "classifier" needs model=<mmpretrain classifier config>')
    prior = ClassifierPrior(pixel_mean=pixel_mean, pixel_std=pixel_std, **cfg)
    return prior.to(device) if device is not None else prior

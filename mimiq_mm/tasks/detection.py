"""Object detection and instance segmentation: mmdet two-stage detectors (Faster/Mask R-CNN).

Synthesis prior (``train_cfg.synthesis.prior`` None / 'head'): cross entropy of the RoI
classifier's scores on the teacher's top RPN proposals towards the image's target class.

Distillation uses only what a student can match without labels: the student runs on the
*teacher's* proposals, so box and mask outputs are compared RoI by RoI without any assignment:
relative MSE of the FPN features; binary KL of RPN objectness and objectness-weighted L1 of RPN
deltas; KL of the RoI class distribution and class-probability-weighted L1 of the box deltas on
the teacher's top ``num_rois`` proposals; binary KL of the mask logits of the teacher's class on
its ``num_mask_rois`` most confident RoIs. BatchNorm and dropout of the student stay in eval mode.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..losses import KLDistillLoss
from ..losses.ssim import upcast_half
from ..registry import TASKS
from .base import TaskAdapter, freeze_stochastic_and_norm


def _binary_kl(student_logits, teacher_logits):
    """Elementwise KL(Bernoulli(σ(t)) ‖ Bernoulli(σ(s)))."""
    s, t = upcast_half(student_logits), upcast_half(teacher_logits.detach())
    p = t.sigmoid()
    return (F.binary_cross_entropy_with_logits(s, p, reduction='none')
            - F.binary_cross_entropy_with_logits(t, p, reduction='none'))


DETECTION_LOSS_WEIGHTS = dict(fpn=1.0, rpn_cls=1.0, rpn_bbox=1.0, roi_cls=1.0, roi_bbox=1.0, mask=1.0)


@TASKS.register_module(name='detection')
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
    priority = 5
    # The box head starts from min-max: from the least-squared-error range it lost the boxes of the
    # dense benchmark's Mask R-CNN (W4/A4 box fidelity 52.1, noise PTQ 53.7, min-max in the box head
    # alone 54.8; in the RPN, backbone or neck it does not help). Measured, not derived:
    # benchmarks/dense/README.md, "Defaults that never lose".
    activation_starts = {r'roi_head\.bbox_head\.': 'minmax'}

    def __init__(self, num_rois=512, num_mask_rois=64, prior_rois=16, loss_weights: Optional[dict] = None):
        self.num_rois, self.num_mask_rois, self.prior_rois = int(num_rois), int(num_mask_rois), int(prior_rois)
        unknown = set(loss_weights or {}) - set(DETECTION_LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f'unknown detection loss weights {sorted(unknown)}; known: '
                             f'{sorted(DETECTION_LOSS_WEIGHTS)}')
        self.loss_weights = dict(DETECTION_LOSS_WEIGHTS, **(loss_weights or {}))

    @classmethod
    def matches(cls, model):
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
        cls_score = upcast_half(outputs['cls_score'])
        if cls_score.shape[0] == 0:
            return cls_score.sum() * 0
        per_roi = torch.repeat_interleave(targets.long().to(cls_score.device),
                                          torch.as_tensor(counts, device=cls_score.device))
        return F.cross_entropy(cls_score, per_roi)

    def distill_loss(self, student_outputs, teacher_outputs, temperature=1.0):
        s, t, w = student_outputs, teacher_outputs, self.loss_weights
        losses = {}
        if w['fpn']:
            per_level = [(upcast_half(fs) - upcast_half(ft.detach())).pow(2).mean() /
                         upcast_half(ft.detach()).pow(2).mean().clamp_min(1e-6) for fs, ft in zip(s['feats'], t['feats'])]
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
                l1 = (upcast_half(reg_s) - upcast_half(reg_t.detach())).abs().mean(-1)
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
        ds, dt = upcast_half(s['bbox_pred']), upcast_half(t['bbox_pred'].detach())
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

"""What "the model's output" means for a task, for synthesis priors and distillation.

A task adapter knows how to run a task model on a batch of normalised images and get the
tensor(s) the teacher's knowledge is read from (classifier logits, per-pixel segmentation logits,
detector features and RoI outputs), how to turn them into a synthesis prior against target
labels, and how to compare teacher and student outputs. Adapters are registered in
:data:`mimiq_mm.registry.TASKS` under their ``name``; :func:`build_task` picks one by name or by
asking each registered adapter, highest ``priority`` first, whether it ``matches`` the model.
"""
import torch.nn as nn

from ..registry import TASKS


class TaskAdapter:
    """Interface of a task. ``model`` is an OpenMMLab task model (or any nn.Module classifier).

    Subclasses implement the four abstract methods; the optional ones default to the full
    forward pass, which is always correct and only sometimes more than needed.
    """
    #: registry name, also the value of ``QuantDistiller(task=...)``
    name = ''
    #: order of auto-detection (higher first); the catch-all classification task is lowest
    priority = 0
    #: regexes of module names → LSQ start of their activation quantizers where it must differ from
    #: ``QuantConfig.lsq_init`` (applied when ``module_lsq_init`` is left None)
    activation_starts = {}

    @classmethod
    def matches(cls, model) -> bool:
        """Whether this task describes ``model`` (used when the task is 'auto')."""
        return False

    # ------------------------------------------------------------------ required
    def forward_tensor(self, model, inputs):
        """Run ``model`` on normalised images (B, 3, H, W); returns the task output tensor(s)."""
        raise NotImplementedError

    def num_classes(self, model) -> int:
        raise NotImplementedError

    def prior_loss(self, outputs, targets):
        """Synthesis prior L_CL: how well the outputs express the target labels (B,)."""
        raise NotImplementedError

    def distill_loss(self, student_outputs, teacher_outputs, temperature=1.0):
        """Output distillation term(s): a scalar tensor or a dict of named scalar tensors."""
        raise NotImplementedError

    # ------------------------------------------------------------------ optional
    def forward_prior(self, model, inputs):
        """What :meth:`prior_loss` reads, when that is less than :meth:`forward_tensor`."""
        return self.forward_tensor(model, inputs)

    def forward_backbone(self, model, inputs):
        """Enough of the model to run every attention layer (used when a separate prior model
        gives L_CL and only the attention terms need the teacher)."""
        return self.forward_tensor(model, inputs)

    def forward_student(self, model, inputs, teacher_outputs):
        """The student's forward during fine-tuning; may reuse the teacher's intermediate
        results (the detector runs the student on the teacher's proposals)."""
        return self.forward_tensor(model, inputs)


def is_openmmlab_model(model) -> bool:
    from mmengine.model import BaseModel
    return isinstance(model, BaseModel)


def freeze_stochastic_and_norm(model: nn.Module) -> None:
    """Put normalisation layers with running statistics and dropout / drop-path modules of
    ``model`` into eval mode (the rest of the model keeps its mode).

    The teacher's running statistics come from real data and must not be replaced by
    synthetic-batch statistics, and the distillation target is the teacher's deterministic output.
    """
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)) \
                or type(m).__name__ in ('DropPath', 'DropBlock'):
            m.eval()


def build_task(model, task='auto') -> TaskAdapter:
    """The task adapter for ``model``: the registered task named ``task``, or the first registered
    task (by priority) that matches the model when ``task`` is None or 'auto'.

    ``task`` may also be a dict ``dict(type=NAME_OR_'auto', **options)``; the options go to the
    adapter's constructor (e.g. ``dict(type='detection', num_rois=256)``).
    """
    options = {}
    if isinstance(task, dict):
        options = dict(task)
        task = options.pop('type', 'auto')
    if task not in (None, 'auto'):
        if task not in TASKS:
            raise ValueError(f'unknown task {task!r}; choose one of {sorted(TASKS.module_dict)} or "auto"')
        return TASKS.get(task)(**options)
    for cls in sorted(TASKS.module_dict.values(), key=lambda c: -c.priority):
        if cls.matches(model):
            return cls(**options)
    raise ValueError(f'cannot tell the task of {type(model).__name__}; set model.task to one of '
                     f'{sorted(TASKS.module_dict)}')

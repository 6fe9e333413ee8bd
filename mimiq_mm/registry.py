"""The ``mimiq_mm`` registry scope.

Every registry is a child of mmengine's root registry of the same kind, so components registered
here are found from mmdet/mmseg/mmpretrain configs as ``type='mimiq_mm.Name'`` once
``custom_imports=dict(imports=['mimiq_mm'])`` has imported the package.
"""
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

SCOPE = 'mimiq_mm'

MODELS = Registry('model', parent=MMENGINE_MODELS, scope=SCOPE, locations=['mimiq_mm.models', 'mimiq_mm.losses'])
LOOPS = Registry('loop', parent=MMENGINE_LOOPS, scope=SCOPE, locations=['mimiq_mm.engine'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope=SCOPE, locations=['mimiq_mm.engine'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope=SCOPE, locations=['mimiq_mm.datasets'])
DATA_SAMPLERS = Registry('data sampler', parent=MMENGINE_DATA_SAMPLERS, scope=SCOPE,
                         locations=['mimiq_mm.datasets'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope=SCOPE, locations=['mimiq_mm.datasets'])
METRICS = Registry('metric', parent=MMENGINE_METRICS, scope=SCOPE, locations=['mimiq_mm.evaluation'])
# Registries of mimiq_mm's own concepts (no mmengine counterpart).
TASKS = Registry('task', scope=SCOPE, locations=['mimiq_mm.tasks'])
SYNTHESIZERS = Registry('synthesizer', scope=SCOPE, locations=['mimiq_mm.synthesis'])
# What makes or changes the fine-tuning batches at every iteration (train_cfg.generator): the
# generators of GDFQ / Qimera / AdaDFQ and PSAQ-ViT V2's sample updates.
GENERATORS = Registry('data generator', scope=SCOPE, locations=['mimiq_mm.generators'])

"""The model inside an mmengine / torch model wrapper (DDP)."""
import torch.nn as nn
from mmengine.model import is_model_wrapper


def unwrap_model(model: nn.Module) -> nn.Module:
    """``model.module`` of a registered model wrapper (MMDistributedDataParallel, torch's DDP...),
    else ``model`` itself; as mmengine's Runner and hooks unwrap ``runner.model``."""
    return model.module if is_model_wrapper(model) else model

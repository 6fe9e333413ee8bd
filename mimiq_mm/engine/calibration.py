"""Initialising the student's activation quantizers before fine-tuning (post-training
quantization is this step alone)."""
import time

import torch
from mmengine.dist import broadcast, is_distributed
from mmengine.logging import print_log

from ..models import SYNTHETIC_KEY
from ..quant import describe_calibration, uncalibrated_quantizers


def first_batches(loader, num_batches: int):
    """The first ``num_batches`` batches of ``loader``'s dataset in order, collated as the loader
    collates (calibration sees the same images on every run, whatever the training shuffle)."""
    ordered = torch.utils.data.DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False,
                                          collate_fn=loader.collate_fn)
    batches = []
    for data in ordered:
        if len(batches) >= num_batches:
            break
        batches.append(data)
    return batches


def broadcast_module_state(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank ``src``'s parameters and buffers (ranks calibrated on different images)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        broadcast(tensor.data, src=src)


def calibration_inputs(distiller, data):
    """The preprocessed inputs (B, 3, H, W) of one loader batch for calibration: a real batch as the
    task model's preprocessor prepares it for training (mmseg pads random crops to one size only
    then), a synthetic one without the fine-tuning augmentation."""
    synthetic = isinstance(data, dict) and SYNTHETIC_KEY in data
    return distiller.data_preprocessor(data, not synthetic)['inputs']


def calibrate_student(distiller, batches) -> None:
    """Calibrate ``distiller.student``'s activation quantizers on ``batches`` of data (as the
    loader yields them), then make all ranks agree on the result."""
    start = time.perf_counter()
    distiller.calibrate([calibration_inputs(distiller, data) for data in batches])
    if is_distributed():
        broadcast_module_state(distiller.student)
    print_log(f'calibrated the quantizers on {len(batches)} batches in {time.perf_counter() - start:.1f} s: '
              f'{describe_calibration(distiller.student)}', logger='current')


def calibrate_missing_quantizers(distiller, batches) -> None:
    """Calibrate only the student's activation quantizers that have no state (a resumed run whose
    checkpoint lacks some), leaving the calibrated and learned ones as they are; all ranks agree."""
    missing = uncalibrated_quantizers(distiller.student)
    distiller.calibrate([calibration_inputs(distiller, data) for data in batches], only_uncalibrated=True)
    if is_distributed():
        broadcast_module_state(distiller.student)
    print_log(f'calibrated {len(missing)} activation quantizers the checkpoint had no state for '
              f'(e.g. {missing[:3]}); the others keep theirs', logger='current', level=30)

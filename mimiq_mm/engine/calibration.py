"""Initialising the student's activation quantizers before fine-tuning (post-training
quantization is this step alone)."""
import torch
from mmengine.dist import broadcast, broadcast_object_list, is_distributed
from mmengine.logging import MessageHub, print_log

from ..models import SYNTHETIC_KEY
from ..quant import reset_activation_ranges, uncalibrated_quantizers
from ..quant.quantizers import LSQ_INITS


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
    loader yields them), then make all ranks agree on the result.

    With ``quant.lsq_init='auto'`` the LSQ quantizers are calibrated with each start of
    ``LSQ_INITS`` and keep the one whose student is closer to the teacher (the task's KD term,
    :meth:`QuantDistiller.output_distance`) on these same images: no fine-tuning has happened
    yet, so they are a fair, data-free judge of where fine-tuning should begin.
    """
    inputs = [calibration_inputs(distiller, data) for data in batches]
    cfg = distiller.quant_cfg
    if cfg.act_method == 'lsq' and cfg.lsq_init == 'auto':
        choose_lsq_start(distiller, inputs)
    else:
        distiller.calibrate(inputs)
    if is_distributed():
        broadcast_module_state(distiller.student)
    print_log(f'calibrated activation quantizers on {len(batches)} batches', logger='current')


def calibrate_missing_quantizers(distiller, batches) -> None:
    """Calibrate only the student's activation quantizers that have no state (a resumed run whose
    checkpoint lacks some), leaving the calibrated and learned ones as they are; all ranks agree."""
    missing = uncalibrated_quantizers(distiller.student)
    distiller.calibrate([calibration_inputs(distiller, data) for data in batches], only_uncalibrated=True)
    if is_distributed():
        broadcast_module_state(distiller.student)
    print_log(f'calibrated {len(missing)} activation quantizers the checkpoint had no state for '
              f'(e.g. {missing[:3]}); the others keep theirs', logger='current', level=30)


def choose_lsq_start(distiller, inputs) -> str:
    """Calibrate with every LSQ start and keep the closest to the teacher on ``inputs``
    (preprocessed batches); rank 0's choice holds on every rank. Returns the chosen start."""
    distances = {}
    for init in LSQ_INITS:
        reset_activation_ranges(distiller.student, lsq_init=init)
        distiller.calibrate(inputs)
        distances[init] = distiller.output_distance(inputs)
    choice = [min(distances, key=distances.get)]
    if is_distributed():
        broadcast_object_list(choice)
    if choice[0] != LSQ_INITS[-1]:  # the last one calibrated is in place; calibration is deterministic
        reset_activation_ranges(distiller.student, lsq_init=choice[0])
        distiller.calibrate(inputs)
    print_log('lsq_init=auto: KD distance to the teacher on the calibration images ' +
              ', '.join(f'{k} {v:.5f}' for k, v in distances.items()) + f'; starting from {choice[0]!r}',
              logger='current')
    MessageHub.get_current_instance().update_info('lsq_start', dict(choice=choice[0], distances=distances))
    return choice[0]

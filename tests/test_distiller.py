"""QuantDistiller: teacher frozen, student quantized, checkpoints round-trip, losses as configured."""
import os.path as osp

import pytest
import torch

pytest.importorskip('mmpretrain')

import mimiq_mm  # noqa: E402,F401
from mimiq_mm.quant import calibration, quant_config_of  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def build(**overrides):
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('mmpretrain')
    cfg = Config.fromfile(osp.join(ROOT, 'tests', 'configs', 'tiny_cls_mimiq.py'))
    cfg.model.setdefault('data_preprocessor', cfg.data_preprocessor)
    cfg.model.update(overrides)
    return MODELS.build(cfg.model)


def calibrated(model, x):
    with calibration(model.student):
        model.student(x, mode='tensor')
    return model


def test_full_checkpoint_round_trips_strictly():
    x = torch.randn(2, 3, 16, 16)
    a, b = calibrated(build(), x), build()
    result = b.load_state_dict(a.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))
    assert torch.equal(a.teacher(x), b.teacher(x))


def test_student_only_checkpoint_loads_into_the_distiller():
    x = torch.randn(2, 3, 16, 16)
    a, b = calibrated(build(), x), build()
    b.load_state_dict(a.student_state_dict(), strict=False)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))


def test_teacher_stays_frozen_and_in_eval_mode():
    model = build()
    model.train()
    assert not model.teacher.training and model.student.training
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert any(p.requires_grad for p in model.student.parameters())
    assert quant_config_of(model.student).w_bits == 4


def test_losses_follow_the_config():
    x = torch.randn(4, 3, 16, 16)
    with_had = calibrated(build(), x)
    assert set(with_had(x, mode='loss')) == {'loss_kd', 'loss_had'}
    without_had = calibrated(build(had=None), x)
    assert set(without_had(x, mode='loss')) == {'loss_kd'}
    losses = with_had(x, mode='loss')
    sum(losses.values()).backward()
    assert all(p.grad is None for p in with_had.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in with_had.student.parameters())


def test_train_steps_lower_the_distillation_loss():
    """QuantDistiller.train_step (what the QAT loop runs) on one fixed batch lowers KL + L_HAD.
    With quantization switched off, from a perturbed copy of the teacher, so that the loss is
    smooth: whether 4-bit fine-tuning improves on calibration is the benchmarks' question."""
    from mmengine.optim import OptimWrapper
    from mimiq_mm.quant import set_quantization
    torch.manual_seed(0)
    model = build()
    set_quantization(model.student, weights=False, activations=False)
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(0.05 * torch.randn_like(p))
    data = dict(pixels=torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8), label=torch.zeros(8))
    inputs = model.data_preprocessor(data, False)['inputs']
    wrapper = OptimWrapper(torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2,
                                           momentum=0.9))

    def loss():
        with torch.no_grad():
            return float(sum(model(inputs, mode='loss').values()))

    before = loss()
    model.train()
    for _ in range(30):
        model.train_step(data, wrapper)
    assert loss() < 0.85 * before


def test_missing_teacher_checkpoint_names_the_setting(tmp_path):
    model = build(teacher_checkpoint=str(tmp_path / 'nope.pth'))
    with pytest.raises(FileNotFoundError, match='model.teacher_checkpoint'):
        model.init_weights()
    with pytest.raises(ValueError, match='teacher_checkpoint'):
        build(teacher_checkpoint=None).init_weights()


def test_teacher_checkpoint_is_copied_into_the_student(tmp_path):
    source = build()
    path = tmp_path / 'teacher.pth'
    torch.save(dict(state_dict=source.teacher.state_dict()), path)
    model = build(teacher_checkpoint=str(path))
    model.init_weights()
    for name, value in source.teacher.state_dict().items():
        assert torch.equal(model.teacher.state_dict()[name], value)
        assert torch.equal(model.student.state_dict()[name], value)

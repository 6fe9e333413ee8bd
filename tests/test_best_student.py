"""Held-out synthetic images and BestStudentHook: the run ends with the student (calibrated or
fine-tuned) that is closest to the teacher on images it never trained on."""
import pytest
import torch

pytest.importorskip('mmpretrain')

from test_classification_e2e import CONFIG, make_image_folder, make_teacher_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow


def run(tmp_path, holdout, hooks, options=None):
    from mmengine.config import Config
    from mmengine.runner import Runner
    import mimiq_mm  # noqa: F401
    data = make_image_folder(str(tmp_path / 'data'))
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict({'model.teacher_checkpoint': make_teacher_checkpoint(str(tmp_path / 'teacher.pth')),
                         'train_dataloader.dataset.data_root': data, 'val_dataloader.dataset.data_root': data,
                         'test_dataloader.dataset.data_root': data, 'train_cfg.holdout_images': holdout,
                         'train_cfg.max_iters': 6, 'optim_wrapper.optimizer.lr': 0.05, 'randomness': dict(seed=0),
                         'val_cfg': None, 'val_dataloader': None, 'val_evaluator': None, **(options or {})})
    cfg.custom_hooks = list(cfg.custom_hooks) + hooks
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def test_best_student_hook_keeps_the_closest_student(tmp_path):
    runner = run(tmp_path, holdout=4, hooks=[dict(type='mimiq_mm.BestStudentHook', interval=2)])
    loop = runner.train_loop
    assert len(loop.dataloader.dataset) == 4 and len(loop.holdout_dataset) == 4
    train_files = set(loop.dataloader.dataset.pixels.flatten(1).sum(1).tolist())
    assert not train_files & set(loop.holdout_dataset.pixels.flatten(1).sum(1).tolist())  # disjoint images
    hook = next(h for h in runner.hooks if type(h).__name__ == 'BestStudentHook')
    measured = dict(hook.history)
    assert sorted(measured) == [0, 2, 4, 6]  # the calibrated student, then every 2 iterations
    best_iter = min(measured, key=measured.get)
    assert runner.message_hub.get_info('best_student_iter') == best_iter
    model = runner.model
    final = model.holdout_distance(loop.holdout_dataset)
    assert final == pytest.approx(measured[best_iter], rel=1e-5)
    exported = torch.load(f'{runner.work_dir}/student_w4a4.pth', weights_only=False)['state_dict']
    assert all(torch.equal(v, exported[k]) for k, v in model.student.state_dict().items())


def test_best_student_hook_needs_held_out_images(tmp_path):
    with pytest.raises(ValueError, match='holdout_images'):
        run(tmp_path, holdout=0, hooks=[dict(type='mimiq_mm.BestStudentHook', interval=2)])


def test_holdout_criterion_tool_compares_checkpoints_with_test_accuracy(tmp_path, capsys):
    """tools/analysis/holdout_criterion.py: the criterion and the test metric of every checkpoint,
    their rank correlation, and the checkpoint the criterion would keep."""
    import json
    import os.path as osp
    import sys
    runner = run(tmp_path, holdout=4, hooks=[])
    work = runner.work_dir
    sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools', 'analysis'))
    try:
        import holdout_criterion
    finally:
        sys.path.pop(0)
    config = str(tmp_path / 'run_config.py')
    runner.cfg.dump(config)
    out = str(tmp_path / 'report.json')
    report = holdout_criterion.main([config, *[f'{work}/iter_{i}.pth' for i in (5, 6)], '--synthetic',
                                     f'{work}/synthetic_mimiq', '--holdout', '4', '--out', out])
    saved = json.load(open(out))
    assert saved == json.loads(json.dumps(report)) and len(saved['checkpoints']) == 2
    chosen = min(saved['checkpoints'], key=lambda r: r['holdout_kd'])
    assert saved['chosen'] == chosen['checkpoint'] and saved['chosen_metric'] == chosen['metric']
    assert 'Spearman' in capsys.readouterr().out

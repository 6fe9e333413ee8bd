"""Attention analysis (mimiq_mm.analysis and tools/analysis): statistics, loading, plots, CLIs.

CPU only, tiny randomly initialised models, no downloads.
"""
import copy
import importlib.util
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from mimiq_mm.analysis import (AnalysisInputError, LayerIndexError, check_layers, config_class_names,
                               find_images, head_distances, image_head_similarity,
                               load_image_folder, load_synthetic_set, query_head_maps, read_class_names,
                               record_attention, records_head_similarity, summarize)
from mimiq_mm.analysis.cli import run_tool
from mimiq_mm.attention import AttentionRecord, TokenLayout, install_attention_capture
from mimiq_mm.losses import HeadAttentionDistillLoss, InterHeadCoherencyLoss, pairwise_global_ssim, spatial_head_maps
from mimiq_mm.quant import calibration, quantize_model
from mimiq_mm.synthesis import SyntheticSet

timm = pytest.importorskip('timm')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, 'tools', 'analysis')
VIT_KWARGS = dict(img_size=16, patch_size=4, embed_dim=48, depth=2, num_heads=3, num_classes=4)
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, **VIT_KWARGS).eval()
    install_attention_capture(model)
    return model


def images(n=4, seed=1):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def w3a3_copy(model, calib):
    student = quantize_model(copy.deepcopy(model), w_bits=3, a_bits=3).eval()
    with torch.no_grad(), calibration(student):
        student(calib)
    return student


def score_record(scores, grid=(4, 4), prefix=1, windows_per_image=1):
    layout = TokenLayout(grid=grid, num_prefix_tokens=prefix, windows_per_image=windows_per_image)
    return AttentionRecord(name='layer', layout=layout, scores=scores)


def assert_png(path):
    assert os.path.isfile(path), path
    with open(path, 'rb') as f:
        head = f.read(8)
    assert head == PNG_MAGIC and os.path.getsize(path) > 1000, path


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f'analysis_tool_{name}', os.path.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def image_folder(tmp_path):
    """ImageFolder with 2 classes x 3 random 20x24 PNGs."""
    root = tmp_path / 'real'
    rng = np.random.default_rng(0)
    for name in ('cat', 'dog'):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / name / f'{i}.png')
    return str(root)


@pytest.fixture
def synthetic_set(tmp_path):
    """A finished synthetic set of 6 images (16x16) in batches of 4, labels 0..3."""
    root = str(tmp_path / 'synthetic')
    settings = dict(method='mimiq', num_images=6, batch_size=4, base_seed=0, image_size=[16, 16])
    store = SyntheticSet(root, settings)
    g = torch.Generator().manual_seed(0)
    for batch in range(2):
        n = 4 if batch == 0 else 2
        pixels = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
        store.write_batch(batch, pixels, torch.arange(n) % 4, losses={})
    store.merge()
    return root


# ----------------------------------------------------------------------------- similarity

def test_identical_heads_are_similar_and_random_heads_less():
    g = torch.Generator().manual_seed(0)
    one_head = torch.randn(2, 1, 17, 17, generator=g)
    identical = score_record(one_head.expand(2, 3, 17, 17).clone())
    inverted = score_record(torch.cat([one_head, -one_head, 2 * one_head + 1], dim=1))
    random = score_record(torch.randn(2, 3, 17, 17, generator=g))
    assert torch.allclose(records_head_similarity([identical]), torch.ones(2), atol=1e-4)
    # |SSIM| also scores an inverted map as similar (paper Sec. 5.1); min-max makes affine maps equal.
    assert records_head_similarity([inverted]).min() > 0.7
    assert records_head_similarity([random]).max() < 0.7


def test_similarity_is_one_minus_ihc_loss_and_batching_does_not_matter():
    model = tiny_vit()
    x = images(3)
    records = record_attention(model, x, ('scores',))
    per_image = records_head_similarity(records)
    assert per_image.shape == (3,)
    for i in range(3):
        one = record_attention(model, x[i:i + 1], ('scores',))
        assert torch.allclose(per_image[i], 1 - InterHeadCoherencyLoss()(one), atol=1e-5)
    batched = image_head_similarity(model, x, batch_size=2)
    assert torch.allclose(batched, per_image, atol=1e-5)


def test_windowed_records_average_their_windows_per_image():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2 * 4, 2, 4, 4, generator=g)  # 2 images x 4 windows of 2x2 tokens
    record = score_record(scores, grid=(2, 2), prefix=0, windows_per_image=4)
    per_image = records_head_similarity([record])
    per_query = pairwise_global_ssim(spatial_head_maps(record)).abs().mean(dim=(-2, -1))  # (8 windows, 4 queries)
    assert per_image.shape == (2,)
    assert torch.allclose(per_image, per_query.view(2, 4 * 4).mean(dim=1), atol=1e-6)


def test_query_head_maps_shape_position_and_bad_query():
    model = tiny_vit()
    record = record_attention(model, images(2), ('scores',), layers=[1])[0]
    maps = query_head_maps(record, 'center')
    assert maps.maps.shape == (2, 3, 4, 4) and maps.query_cell == (2, 2)
    assert maps.maps.min() >= 0 and maps.maps.max() <= 1 + 1e-6
    corner = query_head_maps(record, (0, 3))
    expected = record.scores[:, :, 1 + 3, 1:]  # class token first, then row-major patches
    assert torch.allclose(corner.maps.flatten(2).argmax(-1), expected.argmax(-1))
    with pytest.raises(AnalysisInputError, match='outside the 4x4 patch grid'):
        query_head_maps(record, (4, 0))


@pytest.mark.parametrize('grid, shift', [((8, 8), 2), ((8, 12), 2), ((12, 8), 0)])
def test_query_lands_in_the_right_shifted_window(grid, shift):
    from timm.models.swin_transformer import window_partition

    from mimiq_mm.analysis.attention_stats import _window_position
    window = 4
    token_ids = torch.arange(grid[0] * grid[1]).view(1, *grid, 1)
    rolled = torch.roll(token_ids, shifts=(-shift, -shift), dims=(1, 2))  # what a shifted Swin block does
    windows = window_partition(rolled, (window, window)).view(-1, window * window)
    layout = TokenLayout(grid=(window, window), window_size=(window, window), shift_size=(shift, shift),
                         windows_per_image=windows.shape[0])
    record = AttentionRecord(name='w', layout=layout)
    for r in range(grid[0]):
        for c in range(grid[1]):
            assert windows[_window_position((r, c), grid, record)] == r * grid[1] + c


def test_swin_query_maps_cover_the_query_window():
    torch.manual_seed(0)
    model = timm.create_model('swin_tiny_patch4_window7_224', pretrained=False, img_size=32, patch_size=2,
                              window_size=4, embed_dim=24, depths=(2, 2), num_heads=(2, 4), num_classes=4).eval()
    install_attention_capture(model)
    records = record_attention(model, torch.randn(2, 3, 32, 32), ('scores',))
    last = query_head_maps(records[-1], (5, 9), patch_grid=(16, 16))  # stage 2: 8x8 tokens, shifted by 2
    assert last.windowed and last.maps.shape == (2, 4, 4, 4)
    assert last.query_cell == (0, 2)  # stage cell (2, 4) rolled by -2 -> window 0, local (0, 2)
    assert records_head_similarity(records).shape == (2,)


# ----------------------------------------------------------------------------- head distance

def test_head_distance_zero_for_itself_and_positive_for_w3a3():
    model = tiny_vit()
    x = images(4)
    same = head_distances(model, model, x, metrics=('dssim', 'mse'))
    for metric in ('dssim', 'mse'):
        assert same.per_layer(metric) == pytest.approx([0.0, 0.0], abs=1e-5)
    quantized = head_distances(model, w3a3_copy(model, images(8, seed=2)), x, metrics=('dssim', 'mse'),
                               batch_size=3)
    assert quantized.layer_names == ['blocks.0.attn', 'blocks.1.attn']
    for metric in ('dssim', 'mse'):
        assert all(value > 1e-4 if metric == 'dssim' else value > 0 for value in quantized.per_layer(metric))
    assert [len(h) for h in quantized.per_head['dssim']] == [3, 3]


def test_per_layer_distance_equals_had_loss_of_that_layer():
    model = tiny_vit()
    student = w3a3_copy(model, images(8, seed=2))
    x = images(4)
    result = head_distances(model, student, x, metrics=('dssim',), layers=[-1])
    assert result.layer_indices == [1]
    t = record_attention(model, x, ('outputs',))
    s = record_attention(student, x, ('outputs',))
    expected = HeadAttentionDistillLoss(metric='dssim', layers=[1])(t, s)
    assert result.per_layer('dssim')[0] == pytest.approx(float(expected), rel=1e-5)
    in_batches = head_distances(model, student, x, metrics=('dssim',), layers=[-1], batch_size=3)
    assert in_batches.per_layer('dssim')[0] == pytest.approx(result.per_layer('dssim')[0], rel=1e-5)


def test_layer_index_out_of_range_says_how_many_layers():
    with pytest.raises(LayerIndexError, match='has 2 attention layers'):
        check_layers([2], 2)
    assert check_layers([-1, 0], 2) == [1, 0]
    with pytest.raises(IndexError, match='0..1'):
        record_attention(tiny_vit(), images(1), layers=[5])


# ----------------------------------------------------------------------------- image loading

def test_image_folder_is_resized_with_labels_from_class_folders(image_folder):
    batch = load_image_folder(image_folder, (16, 16), max_images=3)
    assert batch.pixels.shape == (3, 3, 16, 16) and batch.pixels.dtype == torch.uint8
    assert batch.labels == [0, 1, 0]  # round robin over the classes
    assert batch.label_names == ['cat', 'dog'] and batch.label_text(1) == '1: dog'
    assert batch.files[0] == os.path.join('cat', '0.png')


def test_empty_missing_and_unreadable_image_folders(tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(AnalysisInputError, match='no images'):
        find_images(str(empty))
    with pytest.raises(AnalysisInputError, match='does not exist'):
        load_image_folder(str(tmp_path / 'nowhere'), 16)
    (empty / 'broken.png').write_bytes(b'not a png')
    with pytest.warns(UserWarning, match='unreadable'), pytest.raises(AnalysisInputError, match='could be read'):
        load_image_folder(str(empty), 16)


def test_synthetic_set_labels_from_manifest_and_resizing(synthetic_set):
    batch = load_synthetic_set(synthetic_set, size=(8, 8), max_images=5)
    assert batch.pixels.shape == (5, 3, 8, 8) and batch.kind == 'synthetic'
    manifest = json.load(open(os.path.join(synthetic_set, 'manifest.json')))
    assert batch.labels == [im['label'] for im in manifest['images'][:5]]
    assert batch.name.startswith('mimiq')


def test_synthetic_folder_without_manifest_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match='manifest.json missing.*tools/synthesize.py'):
        load_synthetic_set(str(tmp_path))


def test_class_names_from_config_and_file(tmp_path):
    from mmengine.config import Config
    cfg = Config(dict(val_dataloader=dict(dataset=dict(type='CustomDataset', metainfo=dict(classes=['a', 'b'])))))
    assert config_class_names(cfg) == ['a', 'b']
    names = tmp_path / 'classes.txt'
    names.write_text('zero\none\n\n')
    assert read_class_names([str(names)]) == ['zero', 'one']
    assert read_class_names(['x', 'y']) == ['x', 'y']


def test_summary_has_quartiles():
    summary = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert summary['mean'] == 3.0 and summary['median'] == 3.0 and summary['q1'] == 2.0 and summary['q3'] == 4.0


# ----------------------------------------------------------------------------- plots

def test_plots_write_non_empty_pngs(tmp_path):
    from mimiq_mm.analysis.plots import (HeadMapRow, plot_head_maps, plot_layer_distances, plot_sample_grid,
                                         plot_similarity_histograms)
    pixels = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    rows = [HeadMapRow(label=f'row {i}', image=pixels[i], query_pixel=(8, 8), maps=np.random.rand(3, 4, 4),
                       query_cell=(2, 2)) for i in range(2)]
    paths = [plot_head_maps(rows, 'maps', str(tmp_path / 'maps.png')),
             plot_similarity_histograms({'real': [0.5, 0.6, 0.7], 'synthetic': [0.3, 0.4]}, str(tmp_path / 'h.png')),
             plot_sample_grid(pixels, ['0: a', '1: b'], str(tmp_path / 'grid.png'), ncols=2, title='set'),
             plot_layer_distances(['0', '1'], {'real': {'dssim': [0.1, 0.2], 'mse': [1.0, 2.0]}},
                                  str(tmp_path / 'sub' / 'dist.png'))]
    for path in paths:
        assert_png(path)


# ----------------------------------------------------------------------------- command lines

def timm_args(out_dir):
    return ['--timm-model', 'vit_tiny_patch16_224', '--timm-kwargs', json.dumps(VIT_KWARGS), '--device', 'cpu',
            '--out-dir', str(out_dir)]


@pytest.mark.filterwarnings('ignore:timm model')
def test_attention_maps_and_head_distance_tools(image_folder, synthetic_set, tmp_path):
    out = tmp_path / 'out'
    maps = load_tool('attention_maps')
    maps.main(timm_args(out) + ['--real', image_folder, '--synthetic', synthetic_set, '--num-images', '2',
                                '--layers', '0', '-1', '--query', '1,2'])
    report = json.load(open(out / 'attention_maps.json'))
    assert report['query'] == [1, 2] and [layer['index'] for layer in report['layers']] == [0, 1]
    assert len(report['layers'][0]['rows']) == 4
    for layer in report['layers']:
        assert_png(layer['figure'])

    distance = load_tool('head_distance')
    distance.main(timm_args(out) + ['--real', image_folder, '--w-bits', '3', '--a-bits', '3'])
    report = json.load(open(out / 'head_distance.json'))
    assert {'figure', 'metrics', 'sources', 'calibrated_on'} <= set(report)
    per_layer = next(iter(report['sources'].values()))['per_layer']
    assert set(per_layer) == {'dssim', 'mse'} and all(v > 0 for v in per_layer['dssim'])
    assert_png(report['figure'])


def test_sample_grid_tool(synthetic_set, tmp_path):
    load_tool('sample_grid').main([synthetic_set, '--classes', 'w', 'x', 'y', 'z', '--out-dir', str(tmp_path)])
    report = json.load(open(tmp_path / 'sample_grid.json'))
    assert len(report['images']) == 6
    for image in report['images']:
        assert image['caption'] == f"{image['label']}: {'wxyz'[image['label']]}"
    assert_png(report['figure'])


@pytest.mark.filterwarnings('ignore:timm model')
def test_tools_report_bad_inputs_in_one_line(image_folder, tmp_path, capsys):
    maps = load_tool('attention_maps')
    assert run_tool(maps.main, timm_args(tmp_path) + ['--real', image_folder, '--layers', '7']) == 2
    assert 'out of range: the model has 2 attention layers' in capsys.readouterr().err
    assert run_tool(maps.main, timm_args(tmp_path) + ['--synthetic', str(tmp_path)]) == 2
    assert 'manifest.json missing' in capsys.readouterr().err
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert run_tool(maps.main, timm_args(tmp_path) + ['--real', str(empty)]) == 2
    assert 'no images' in capsys.readouterr().err
    assert run_tool(maps.main, ['no/such/config.py', '--real', image_folder]) == 2
    assert 'config file' in capsys.readouterr().err
    resnet = ['--timm-model', 'resnet18', '--timm-kwargs', '{"num_classes": 4}', '--real', image_folder]
    assert run_tool(maps.main, resnet) == 2
    assert 'Supported backbone families' in capsys.readouterr().err


def test_head_similarity_cli_subprocess(image_folder, synthetic_set, tmp_path):
    command = [sys.executable, os.path.join(TOOLS, 'head_similarity.py'), *timm_args(tmp_path),
               '--real', image_folder, '--synthetic', synthetic_set, '--names', 'real', 'mimiq', '--density']
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONWARNINGS='ignore')
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert 'median' in done.stdout and 'mimiq' in done.stdout
    report = json.load(open(tmp_path / 'head_similarity.json'))
    assert set(report['sources']) == {'real', 'mimiq'}
    for summary in report['sources'].values():
        assert {'mean', 'q1', 'median', 'q3', 'count', 'images'} <= set(summary)
        assert 0 < summary['mean'] <= 1
    assert report['sources']['real']['count'] == 6
    assert_png(report['figure'])


# ----------------------------------------------------------------------------- configs

DEMO_CONFIG = os.path.join(REPO, 'configs', 'demo', 'mimiq_vit_digits_w3a3.py')


def test_demo_config_teacher_from_teacher_or_distiller_checkpoint(tmp_path):
    pytest.importorskip('mmpretrain')
    from mimiq_mm.analysis import config_model
    from mimiq_mm.apis import build_model, load_config
    from mimiq_mm.quant import quantizers_initialized
    distiller = build_model(load_config(DEMO_CONFIG))
    distiller.calibrate([torch.randn(4, 3, 16, 16)])
    # What the Runner saves: nested TimmClassifier keys keep their 'model.' prefix.
    from mmengine.runner.checkpoint import get_state_dict
    torch.save(dict(state_dict=get_state_dict(distiller)), tmp_path / 'distiller.pth')
    torch.save(dict(state_dict=distiller.teacher.state_dict()), tmp_path / 'teacher.pth')
    reference = distiller.teacher.state_dict()

    for name in ('teacher.pth', 'distiller.pth'):
        model = config_model(DEMO_CONFIG, str(tmp_path / name), device='cpu')
        assert model.input_size == (16, 16)
        assert model.pixel_mean.flatten().tolist() == [127.5] * 3  # the config's data_preprocessor
        assert all(torch.equal(v, reference[k]) for k, v in model.teacher.state_dict().items())

    # No --checkpoint: the distiller config's own teacher_checkpoint loads, without a warning
    # that the model "keeps its initial weights".
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='.*keeps its initial weights')
        model = config_model(DEMO_CONFIG, None, device='cpu',
                             cfg_options={'model.teacher_checkpoint': str(tmp_path / 'teacher.pth')})
    assert all(torch.equal(v, reference[k]) for k, v in model.teacher.state_dict().items())

    model = config_model(DEMO_CONFIG, str(tmp_path / 'distiller.pth'), device='cpu', with_student=True)
    assert quantizers_initialized(model.student)
    saved_student = distiller.student.state_dict()
    assert all(torch.equal(v, saved_student[k]) for k, v in model.student.state_dict().items())
    with pytest.raises(AnalysisInputError, match='teacher checkpoint .* not found'):
        config_model(DEMO_CONFIG, str(tmp_path / 'missing.pth'), device='cpu')

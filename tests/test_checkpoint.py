"""Safe checkpoint loading: mmengine checkpoints load, arbitrary objects need an explicit opt-in,
damaged files are reported as damaged, and unreachable URLs fail in one line. No test reaches the
network: URLs point at loopback servers of the tests or at a mocked opener."""
import functools
import http.server
import os
import socket
import threading
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint, load_checkpoint, save_checkpoint

from mimiq_mm.utils import (TRUST_ENV_VAR, CheckpointDownloadError, CorruptCheckpointError,
                            UnsafeCheckpointError, load_checkpoint_file, load_checkpoint_url,
                            patch_mmengine_checkpoint_loading)


class ArbitraryObject:
    """Stands in for any class a checkpoint should not be allowed to instantiate."""

    def __init__(self, payload):
        self.payload = payload


class RunsCode:
    """Unpickles as a call of ``os.system``: what a malicious checkpoint carries."""

    def __reduce__(self):
        return os.system, ('echo this must never run',)


class HistoryBufferAttributeSmuggler:
    """Pickles as ``getattr(HistoryBuffer, '__init__')``: a getattr outside the statistics methods."""

    def __reduce__(self):
        return getattr, (HistoryBuffer, '__init__')


@pytest.fixture(autouse=True)
def patched_and_untrusted(monkeypatch):
    monkeypatch.delenv(TRUST_ENV_VAR, raising=False)
    patch_mmengine_checkpoint_loading()


def _checkpoint_with_numpy_meta(model):
    return {
        'meta': {
            'epoch': np.int64(3),
            'best_top1': np.float32(0.75),
            'class_counts': np.arange(4),
            'dtype': np.dtype('float16'),
        },
        'state_dict': model.state_dict(),
        'message_hub': {'loss': HistoryBuffer([1.0, 0.5], [1, 1])},
    }


def test_mmengine_checkpoint_with_numpy_meta_loads_after_patch(tmp_path):
    model = nn.Linear(3, 2)
    path = str(tmp_path / 'numpy_meta.pth')
    save_checkpoint(_checkpoint_with_numpy_meta(model), path)

    raw = _load_checkpoint(path, map_location='cpu')
    assert raw['meta']['epoch'] == 3
    assert np.array_equal(raw['meta']['class_counts'], np.arange(4))
    assert raw['meta']['dtype'] == np.dtype('float16')
    assert raw['message_hub']['loss'].mean() == pytest.approx(0.75)

    fresh = nn.Linear(3, 2)
    loaded = load_checkpoint(fresh, path, map_location='cpu')
    assert loaded['meta']['best_top1'] == pytest.approx(0.75)
    assert torch.equal(fresh.weight, model.weight)


def test_load_checkpoint_file_reads_numpy_meta(tmp_path):
    path = tmp_path / 'numpy_meta.pth'
    save_checkpoint(_checkpoint_with_numpy_meta(nn.Linear(3, 2)), str(path))
    assert load_checkpoint_file(path)['meta']['epoch'] == 3


def test_unsafe_object_is_refused_by_default_with_opt_in_hint(tmp_path):
    path = tmp_path / 'unsafe.pth'
    torch.save({'meta': {'extra': ArbitraryObject(1)}}, path)

    with pytest.raises(UnsafeCheckpointError) as direct:
        load_checkpoint_file(path)
    assert TRUST_ENV_VAR in str(direct.value)
    assert 'ArbitraryObject' in str(direct.value)

    with pytest.raises(UnsafeCheckpointError) as via_mmengine:
        _load_checkpoint(str(path), map_location='cpu')
    assert TRUST_ENV_VAR in str(via_mmengine.value)


def test_unsafe_object_loads_with_explicit_opt_in(tmp_path, monkeypatch):
    path = tmp_path / 'unsafe.pth'
    torch.save({'meta': {'extra': ArbitraryObject(7)}}, path)

    assert load_checkpoint_file(path, trusted=True)['meta']['extra'].payload == 7

    monkeypatch.setenv(TRUST_ENV_VAR, '1')
    assert _load_checkpoint(str(path), map_location='cpu')['meta']['extra'].payload == 7


@pytest.fixture
def http_checkpoint_dir(tmp_path, monkeypatch):
    """Serve a directory over local http; torch.hub's download cache goes under tmp_path too."""
    served = tmp_path / 'served'
    served.mkdir()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f'http://127.0.0.1:{server.server_address[1]}'
    server.shutdown()
    server.server_close()


def test_http_checkpoints_follow_the_same_policy(http_checkpoint_dir, monkeypatch):
    """mmengine's own http loader unpickles everything; the patched one does not."""
    served, base_url = http_checkpoint_dir
    save_checkpoint(_checkpoint_with_numpy_meta(nn.Linear(3, 2)), str(served / 'numpy_meta.pth'))
    torch.save({'meta': {'extra': ArbitraryObject(5)}}, served / 'unsafe.pth')

    assert _load_checkpoint(f'{base_url}/numpy_meta.pth')['meta']['epoch'] == 3
    with pytest.raises(UnsafeCheckpointError, match=TRUST_ENV_VAR):
        _load_checkpoint(f'{base_url}/unsafe.pth')
    monkeypatch.setenv(TRUST_ENV_VAR, '1')
    assert _load_checkpoint(f'{base_url}/unsafe.pth')['meta']['extra'].payload == 5


def test_getattr_is_limited_to_history_buffer_statistics(tmp_path):
    path = tmp_path / 'smuggled_getattr.pth'
    torch.save({'meta': HistoryBufferAttributeSmuggler()}, path)
    with pytest.raises(UnsafeCheckpointError, match=TRUST_ENV_VAR):
        load_checkpoint_file(path)


def test_safe_loading_keeps_globals_the_caller_allowlisted(tmp_path):
    path = tmp_path / 'numpy_meta.pth'
    save_checkpoint(_checkpoint_with_numpy_meta(nn.Linear(3, 2)), str(path))
    with torch.serialization.safe_globals([HistoryBuffer]):
        load_checkpoint_file(path)
        assert HistoryBuffer in torch.serialization.get_safe_globals()


def test_missing_file_names_the_config_key(tmp_path):
    missing = tmp_path / 'nowhere.pth'
    with pytest.raises(FileNotFoundError, match='load_from'):
        load_checkpoint_file(missing)
    with pytest.raises(FileNotFoundError, match='teacher_checkpoint'):
        load_checkpoint_file(missing, config_key='teacher_checkpoint')
    with pytest.raises(FileNotFoundError, match='load_from'):
        _load_checkpoint(str(missing))


def test_patch_is_idempotent():
    from mmengine.runner.checkpoint import CheckpointLoader
    patch_mmengine_checkpoint_loading()
    before = dict(CheckpointLoader._schemes)
    patch_mmengine_checkpoint_loading()
    assert dict(CheckpointLoader._schemes) == before


class _ToyModel(nn.Module):
    """Smallest model mmengine's Runner can train: returns a loss dict in 'loss' mode."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, mode='loss'):
        outputs = self.linear(torch.stack(inputs))
        return {'loss': outputs.pow(2).mean()} if mode == 'loss' else outputs

    def train_step(self, data, optim_wrapper):
        losses = self(**data)
        optim_wrapper.update_params(losses['loss'])
        return losses


class _ToyDataset(torch.utils.data.Dataset):
    metainfo = {'classes': ('a', 'b')}

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return {'inputs': torch.full((2,), float(index))}


def _toy_runner(work_dir, max_epochs, resume=False):
    from mmengine.runner import Runner
    return Runner(
        model=_ToyModel(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=_ToyDataset(), batch_size=2,
                              sampler=dict(type='DefaultSampler', shuffle=False)),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        resume=resume, randomness=dict(seed=0),
        # Distinct names: both runners start within the same second, and mmengine names its
        # global logger/visualizer instances after the timestamp otherwise.
        experiment_name='resumed' if resume else 'first')


def test_runner_resume_reads_its_own_checkpoint(tmp_path):
    """Runner checkpoints hold HistoryBuffer logs; resume must load them safely."""
    _toy_runner(tmp_path, max_epochs=1).train()
    resumed = _toy_runner(tmp_path, max_epochs=2, resume=True)
    resumed.train_loop  # resume restores the loop's counters, so the loop must exist first
    resumed.load_or_resume()
    assert resumed.epoch == 1 and resumed.iter == 2
    assert len(resumed.message_hub.get_scalar('train/loss').data[0]) == 2  # restored log history
    resumed.train()
    assert resumed.epoch == 2


# ---------------------------------------------------------------- damaged files


def _saved_checkpoint(path, legacy=False):
    torch.save({'state_dict': nn.Linear(64, 64).state_dict(), 'meta': {'epoch': np.int64(3)}}, path,
               _use_new_zipfile_serialization=not legacy)
    return path


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path


def _damaged_files(tmp_path):
    return {
        'random bytes': _write(tmp_path / 'random.pth', np.random.default_rng(0).bytes(4096)),
        'empty': _write(tmp_path / 'empty.pth', b''),
        'truncated': _truncate(_saved_checkpoint(tmp_path / 'truncated.pth')),
        'truncated legacy format': _truncate(_saved_checkpoint(tmp_path / 'legacy.pth', legacy=True), 0.2),
        'plain text': _write(tmp_path / 'notes.pth', b'this is a README, not a checkpoint\n' * 20),
    }


def _write(path, data):
    path.write_bytes(data)
    return path


def _assert_reported_as_damaged(error, path):
    message = str(error)
    assert str(path) in message and 'damaged' in message, message
    assert TRUST_ENV_VAR not in message and 'trusted' not in message, 'a broken file must not suggest unpickling'
    assert '\n' not in message


@pytest.mark.parametrize('kind', ['random bytes', 'empty', 'truncated', 'truncated legacy format', 'plain text'])
def test_damaged_file_is_reported_as_damaged_on_every_path(tmp_path, kind, monkeypatch):
    path = _damaged_files(tmp_path)[kind]
    with pytest.raises(CorruptCheckpointError) as direct:
        load_checkpoint_file(path)
    _assert_reported_as_damaged(direct.value, path)
    with pytest.raises(CorruptCheckpointError) as via_mmengine:  # load_from, resume, init_cfg
        _load_checkpoint(str(path), map_location='cpu')
    _assert_reported_as_damaged(via_mmengine.value, path)
    with pytest.raises(CorruptCheckpointError):
        load_checkpoint_file(path, trusted=True)
    monkeypatch.setenv(TRUST_ENV_VAR, '1')
    with pytest.raises(CorruptCheckpointError):
        _load_checkpoint(str(path), map_location='cpu')


def test_pickle_with_code_is_refused_with_the_allowlist_message(tmp_path):
    path = tmp_path / 'malicious.pth'
    torch.save({'state_dict': {}, 'meta': RunsCode()}, path)
    for load in (load_checkpoint_file, functools.partial(_load_checkpoint, map_location='cpu')):
        with pytest.raises(UnsafeCheckpointError) as refused:
            load(str(path))
        message = str(refused.value)
        assert 'allowlist' in message and 'system' in message, message
        assert not isinstance(refused.value, CorruptCheckpointError)


# ---------------------------------------------------------------- URLs


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """torch.hub's checkpoint cache, under tmp_path."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    return tmp_path / 'torch_home' / 'hub' / 'checkpoints'


def _cache_files(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []


def _unused_loopback_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]  # closed again: nothing listens there


def _assert_one_line_download_error(error, url):
    message = str(error)
    assert '\n' not in message
    assert f'cannot download checkpoint {url}' in message
    assert 'Pass a local file instead' in message and '--cfg-options' in message, message


def test_unreachable_url_fails_in_one_line_naming_url_reason_and_way_out(hub_cache):
    url = f'http://127.0.0.1:{_unused_loopback_port()}/deit-small.pth'
    with pytest.raises(CheckpointDownloadError) as direct:
        load_checkpoint_url(url)
    _assert_one_line_download_error(direct.value, url)
    assert 'refused' in str(direct.value).lower()
    assert str(hub_cache / 'deit-small.pth') in str(direct.value)  # the offline way in
    with pytest.raises(CheckpointDownloadError):  # mmengine's loader (teacher URL, load_from, init_cfg)
        _load_checkpoint(url)
    assert _cache_files(hub_cache) == []


def test_http_error_and_proxy_failure_name_their_reason(http_checkpoint_dir, hub_cache, monkeypatch):
    _, base_url = http_checkpoint_dir
    with pytest.raises(CheckpointDownloadError) as not_found:
        load_checkpoint_url(f'{base_url}/absent.pth')
    _assert_one_line_download_error(not_found.value, f'{base_url}/absent.pth')
    assert 'HTTP 404' in str(not_found.value)

    def proxy_refuses(*args, **kwargs):
        raise urllib.error.URLError('Tunnel connection failed: 407 Proxy Authentication Required')

    monkeypatch.setattr(torch.hub, 'urlopen', proxy_refuses)
    url = 'https://download.example.org/ckpt/deit-small.pth'
    with pytest.raises(CheckpointDownloadError) as proxied:
        load_checkpoint_url(url)
    _assert_one_line_download_error(proxied.value, url)
    assert '407 Proxy Authentication Required' in str(proxied.value)
    assert _cache_files(hub_cache) == []


class _CutShortHandler(http.server.BaseHTTPRequestHandler):
    """Announces the whole file, sends half of it and hangs up: an interrupted download."""
    payload = b''

    def do_GET(self):
        self.send_response(200)
        self.send_header('Content-Length', str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload[:len(self.payload) // 2])
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_interrupted_download_never_enters_the_cache(tmp_path, hub_cache):
    complete = _saved_checkpoint(tmp_path / 'complete.pth')
    handler = type('Handler', (_CutShortHandler,), {'payload': complete.read_bytes()})
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f'http://127.0.0.1:{server.server_address[1]}/teacher.pth'
    try:
        for _ in range(2):  # a retry downloads again instead of loading a broken cached copy
            with pytest.raises(CheckpointDownloadError) as cut:
                load_checkpoint_url(url)
            _assert_one_line_download_error(cut.value, url)
            assert 'incomplete or damaged' in str(cut.value)
            assert _cache_files(hub_cache) == []
    finally:
        server.shutdown()
        server.server_close()


def test_damaged_cached_copy_is_downloaded_again(http_checkpoint_dir, hub_cache):
    served, base_url = http_checkpoint_dir
    _saved_checkpoint(served / 'teacher.pth')
    hub_cache.mkdir(parents=True)
    _truncate(_saved_checkpoint(hub_cache / 'teacher.pth'))  # left by an older tool, say
    assert load_checkpoint_url(f'{base_url}/teacher.pth')['meta']['epoch'] == 3
    assert _cache_files(hub_cache) == ['teacher.pth']
    assert (hub_cache / 'teacher.pth').read_bytes() == (served / 'teacher.pth').read_bytes()

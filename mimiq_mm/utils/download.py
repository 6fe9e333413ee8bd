"""Fetching a checkpoint URL for :func:`mimiq_mm.utils.checkpoint.load_checkpoint_url`.

The file goes to torch.hub's cache (``$TORCH_HOME/hub/checkpoints/<name>``, as mmengine's own
http loader does), but only after the caller has checked that it is complete: the download lands
in ``<name>.<pid>.download`` first. A failure (no network, DNS, HTTP error, proxy) becomes one
:class:`CheckpointDownloadError` line that names the URL, the reason and the local-file way out.
"""
import http.client
import os
import os.path as osp
import urllib.error
from typing import Optional
from urllib.parse import urlparse

import torch


class CheckpointDownloadError(OSError):
    """A checkpoint URL could not be fetched, or what arrived is not a complete checkpoint."""


def cached_checkpoint_path(url: str, model_dir: Optional[str] = None) -> str:
    """Where torch.hub (and so mmengine) keeps the download of ``url``."""
    model_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    return osp.join(model_dir, osp.basename(urlparse(url).path))


def failure_reason(error: BaseException) -> str:
    """A short reason for a failed download: the HTTP status, or the network error."""
    if isinstance(error, urllib.error.HTTPError):
        return f'HTTP {error.code} {error.reason}'
    if isinstance(error, urllib.error.URLError):  # e.g. "[Errno -2] Name or service not known"
        return f'{error.reason} (offline, or behind a proxy? set https_proxy)'
    return f'{type(error).__name__}: {error}'


def download_error(url: str, cached_path: str, reason: str) -> CheckpointDownloadError:
    name = osp.basename(cached_path)
    return CheckpointDownloadError(
        f'cannot download checkpoint {url}: {reason}. Pass a local file instead: fetch it elsewhere and '
        f'give its path in place of the URL (e.g. --cfg-options model.teacher_checkpoint=/path/to/{name}, '
        f'or load_from=...), or copy it to {cached_path}, where it is used without downloading.')


def download_checkpoint(url: str, cached_path: str, progress: bool = False) -> str:
    """Download ``url`` next to ``cached_path`` and return the temporary file's path.

    The caller verifies the file and moves it to ``cached_path`` (or deletes it); nothing is
    written under the cache name here.

    Raises:
        CheckpointDownloadError: the URL could not be fetched.
    """
    os.makedirs(osp.dirname(cached_path), exist_ok=True)
    pending = f'{cached_path}.{os.getpid()}.download'
    from mmengine.logging import print_log
    print_log(f'downloading {url} to {cached_path}', logger='current')
    try:
        # Writes to a uniquely named .partial file and renames it to `pending` once the server
        # closes the stream; a stream cut short still arrives, which the caller's check catches.
        torch.hub.download_url_to_file(url, pending, progress=progress)
    except (OSError, http.client.HTTPException) as error:  # URLError/HTTPError/timeouts are OSErrors
        if osp.exists(pending):
            os.remove(pending)
        raise download_error(url, cached_path, failure_reason(error)) from error
    return pending

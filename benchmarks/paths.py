"""Paths of the repository's own files (configs, recipes) for the benchmarks, which run from a checkout."""
import os.path as osp

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def repo_path(path: str) -> str:
    """``path`` as given when it exists (or names a ``pkg::`` config), else relative to the
    repository root (configs/... from any working directory)."""
    if path is None or '::' in path or osp.exists(path):
        return path
    candidate = osp.join(REPO_ROOT, path)
    return candidate if osp.exists(candidate) else path

"""What every result file records about how it was made: the code (commit, and whether the tree
differed from it), the command, the CPU (model and the instruction sets its kernels use), the
threads and the library versions. No paths of the machine."""
import os
import os.path as osp
import platform
import subprocess
import sys

from .paths import REPO_ROOT


def git_commit(root: str = REPO_ROOT):
    """(short commit, dirty) of the checkout at ``root``: dirty when tracked files differ from the
    commit; (None, None) without git."""
    try:
        commit = subprocess.run(['git', '-C', root, 'rev-parse', '--short', 'HEAD'], capture_output=True,
                                text=True, timeout=30).stdout.strip()
        status = subprocess.run(['git', '-C', root, 'status', '--porcelain', '--untracked-files=no'],
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, None
    return (commit or None), (bool(status) if commit else None)


def library_versions():
    """Versions of the libraries a figure depends on (None: not installed)."""
    versions = {}
    for name in ('torch', 'mmengine', 'mmcv', 'mmpretrain', 'mmdet', 'mmseg', 'timm', 'onnxruntime', 'openvino'):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return versions


def relative_command(argv):
    """The command line with this checkout's root and the user's home removed."""
    home = osp.expanduser('~')
    return ' '.join(str(a).replace(REPO_ROOT + os.sep, '').replace(home, '~') for a in argv)


def provenance(argv=None, threads=None) -> dict:
    """The record a result file carries (see the module docstring)."""
    import torch
    from mimiq_mm.utils.environment import cpu_features
    commit, dirty = git_commit()
    return dict(commit=commit, uncommitted_changes=dirty,
                command=relative_command(argv if argv is not None else ['python'] + sys.argv),
                cpu=cpu_features(), python=platform.python_version(),
                threads=threads if threads is not None else torch.get_num_threads(), versions=library_versions())

"""What the command-line tools (``tools/*.py``) share: their common arguments, one line instead of a
traceback for bad input, and a console progress line.

The tools import the installed package (``pip install -e .``, part of ``make env``) and nothing
of each other.
"""
import argparse
import contextlib
import os
import os.path as osp
import sys
import time

from ..attention import UnsupportedBackboneError
from ..utils import CheckpointDownloadError, UnsafeCheckpointError

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')
#: errors caused by what the user passed (bad config, checkpoint, option, image size, missing or
#: broken data); their messages name the fix, so the tools print them instead of a traceback
USER_ERRORS = (ValueError, FileNotFoundError, UnsupportedBackboneError, CheckpointDownloadError,
               UnsafeCheckpointError)
DEBUG_ENV_VAR = 'MIMIQ_DEBUG'


# ----------------------------------------------------------------------------- arguments
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the module docstring's layout; shows defaults only where they say something."""

    def _get_help_string(self, action):
        if action.default in (None, '', [], {}) or '(default' in (action.help or ''):
            return action.help
        return super()._get_help_string(action)


def new_parser(description) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)


def add_cfg_options(parser) -> None:
    """``--cfg-options key=value ...``, merged into the config as in mmdet/mmpretrain's tools."""
    from mmengine.config import DictAction
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config settings, e.g. key=value or key="[a,b]"')


def add_common_arguments(parser) -> None:
    """The flags of the Runner tools (train, test, synthesize), spelled as in mmdet/mmpretrain's."""
    parser.add_argument('--work-dir', help='directory for logs and checkpoints (default: ./work_dirs/<config name>)')
    add_cfg_options(parser)
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank (older).
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_common_args(parser, argv=None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, with ``LOCAL_RANK`` set from ``--local-rank`` as mmengine reads it."""
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def default_work_dir(config_path: str) -> str:
    """``./work_dirs/<config stem>``, as the OpenMMLab tools name it."""
    return osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


# ----------------------------------------------------------------------------- errors
def exit_with_error(message: str) -> None:
    """Stop with a one-line explanation instead of a traceback for user mistakes."""
    sys.exit(f'error: {message}')


def is_remote(path: str) -> bool:
    """Paths with a scheme (https://, s3://, open-mmlab://) are resolved by mmengine's loaders."""
    return '://' in path


def require_file(path: str, what: str) -> None:
    if not osp.isfile(osp.expanduser(path)):
        exit_with_error(f'{what} not found: {path}')


@contextlib.contextmanager
def user_errors_reported(errors=USER_ERRORS):
    """Bad input (unknown backbone or method, impossible bit-width, missing, damaged, unsafe,
    unreachable or incompatible checkpoint, unusable image size, missing or broken evaluation
    data) ends the tool with its message, which names the fix, instead of a long traceback.
    ``MIMIQ_DEBUG=1`` shows the traceback."""
    try:
        yield
    except errors as err:
        if os.environ.get(DEBUG_ENV_VAR) or not str(err):
            raise
        exit_with_error(f'{err} ({DEBUG_ENV_VAR}=1 shows the traceback)')


def run_tool(main, argv=None, errors=USER_ERRORS) -> int:
    """Run ``main(argv)``; bad input prints one line and gives exit status 2 (as argparse does)."""
    try:
        main(argv)
    except errors as err:
        if os.environ.get(DEBUG_ENV_VAR):
            raise
        print(f'error: {err}', file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------- progress
class ConsoleProgress:
    """One line per stage: ``done/total unit``, elapsed time and ETA.

    On a terminal the line is redrawn in place; otherwise (a pipe, a CI log) a line is printed
    at most every ``interval`` seconds, and when the stage ends.
    """

    def __init__(self, stream, interval=30.0):
        self.stream = stream
        self.interval = interval
        self.name = None

    def start(self, name, total=None, unit='it'):
        self.finish()
        self.name, self.total, self.unit, self.done = name, total, unit, 0
        self.started = self.shown = time.time()
        if self.stream.isatty():
            self._show(final=False)

    def update(self, done, total=None):
        if self.name is None:
            return
        self.done, self.total = done, total or self.total
        if self.stream.isatty() or (time.time() - self.shown >= self.interval and done != self.total):
            self._show(final=False)

    def finish(self):
        if self.name is not None:
            self._show(final=True)
            self.name = None

    def _show(self, final):
        self.shown = time.time()
        elapsed = self.shown - self.started
        count = f'{self.done}/{self.total}' if self.total else f'{self.done}'
        if final:
            timing = f'done in {clock(elapsed)}'
        elif self.done and self.total:
            timing = f'{clock(elapsed)} elapsed, eta {clock(elapsed / self.done * (self.total - self.done))}'
        else:
            timing = f'{clock(elapsed)} elapsed, eta --:--'
        line = f'  {self.name:<22} {count:>9} {self.unit:<8} {timing}'
        if self.stream.isatty():
            self.stream.write('\r\033[K' + line + ('\n' if final else ''))
        else:
            self.stream.write(line + '\n')
        self.stream.flush()


def clock(seconds) -> str:
    """``mm:ss``."""
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f'{minutes:02d}:{seconds:02d}'

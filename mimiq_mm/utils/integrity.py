"""Is a checkpoint file damaged? A structural check of ``torch.save`` files that unpickles nothing.

Used after a load has failed, to tell a broken file (empty, truncated, altered, not a checkpoint)
from one that is intact but refused by the safe-loading allowlist.
"""
import os.path as osp
import pickletools
import zipfile
from typing import Optional

import torch


def checkpoint_damage(path: str, load_error: Optional[BaseException] = None) -> Optional[str]:
    """Why ``path`` cannot be an intact ``torch.save`` file, or None if its structure is sound.

    Checks the container only (zip archive with CRCs and a parsable ``data.pkl``, or the legacy
    format's header and pickles); it does not unpickle anything. ``load_error``, what loading the
    file raised, tells a legacy file whose tensor data is cut short (its sizes are only known
    after unpickling).
    """
    if osp.getsize(path) == 0:
        return 'the file is empty'
    with open(path, 'rb') as f:
        is_zip = f.read(4) == b'PK\x03\x04'  # torch.save's format since torch 1.6
    return _zip_damage(path) if is_zip else _legacy_damage(path, load_error)


def _pickle_damage(stream) -> Optional[str]:
    try:
        for _ in pickletools.genops(stream):  # reads up to and including the STOP opcode
            pass
    except Exception as error:  # unknown opcode, cut-off argument, no STOP
        return str(error)
    return None


def _zip_damage(path: str) -> Optional[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            pickles = [m for m in members if m.filename.rsplit('/', 1)[-1] == 'data.pkl']
            if not pickles:
                return 'a zip archive without the data.pkl of torch.save'
            with archive.open(pickles[0]) as stream:
                problem = _pickle_damage(stream)
            if problem:
                return f'{pickles[0].filename} is not a complete pickle: {problem}'
            for member in members:
                if member.CRC == 0:  # torch.save can skip checksums (serialization config)
                    continue
                with archive.open(member) as stream:
                    while stream.read(1 << 24):  # zipfile checks the CRC-32 at the end of each member
                        pass
    except zipfile.BadZipFile as error:
        if 'not a zip file' in str(error).lower():
            return 'truncated: its zip archive has no end record, as after an interrupted download or copy'
        return f'broken zip archive: {error}'
    except (OSError, EOFError) as error:
        return f'unreadable zip archive: {error}'
    return None


def _legacy_damage(path: str, load_error: Optional[BaseException]) -> Optional[str]:
    """torch.save's format before 1.6: pickles of magic number, protocol, system info, the
    object and its storage keys, then the raw storages."""
    with open(path, 'rb') as f:
        ops = []
        try:
            ops = list(pickletools.genops(f))
        except Exception:
            pass
        if not any(arg == torch.serialization.MAGIC_NUMBER for _, arg, _ in ops):
            return 'not a torch.save file: no header at its start'
        for part in ('protocol version', 'system info', 'object', 'storage list'):
            problem = _pickle_damage(f)
            if problem:
                return f'its {part} pickle is cut short or damaged: {problem}'
    if isinstance(load_error, (EOFError, RuntimeError)) and 'EOF' in str(load_error):
        return 'truncated: its tensor data ends early'
    return None

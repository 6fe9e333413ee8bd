"""The figures of the README's result tables, generated from the result files of
``benchmarks/results/``; a test fails when a table in the README differs from what its files give.

A generated table sits between two markers in README.md or a page of docs/::

    <!-- figures: demo_runs digits_demo_runs_cpu-2core_amd-epyc-zen4_2026-12-07.json -->
    ...
    <!-- /figures -->

naming a generator of :data:`GENERATORS` and its result files (paths under ``benchmarks/results``).

  python -m benchmarks.readme_figures --check   # exit status 1, with a diff, where a table is stale
  python -m benchmarks.readme_figures --write   # rewrite every table from its files
"""
import argparse
import difflib
import glob
import os.path as osp
import re
import sys

from .figures import GENERATORS
from .paths import REPO_ROOT

BLOCK = re.compile(r'(<!-- figures: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /figures -->)', re.S)


# ----------------------------------------------------------------------------- the documents
def documents():
    return [osp.join(REPO_ROOT, 'README.md')] + sorted(glob.glob(osp.join(REPO_ROOT, 'docs', '*.md')))


def render(text, path=None):
    """``text`` (of the document at ``path``) with every figure block regenerated; the generators'
    links, relative to the repository root, are made relative to the document's folder."""
    prefix = osp.relpath(REPO_ROOT, osp.dirname(osp.abspath(path))) + '/' if path else ''
    prefix = '' if prefix == './' else prefix

    def block(match):
        generator, *files = match.group('spec').split()
        if generator not in GENERATORS:
            raise ValueError(f'unknown figures generator {generator!r}; known: {sorted(GENERATORS)}')
        body = '\n'.join(GENERATORS[generator](*files)).replace('](benchmarks/', f']({prefix}benchmarks/')
        return match.group(1) + body + '\n' + match.group(4)
    return BLOCK.sub(block, text)


def stale_documents(paths=None):
    """(path, diff) of every document (default: README.md and docs/*.md) whose figure blocks differ
    from their result files."""
    out = []
    for path in paths or documents():
        with open(path) as f:
            text = f.read()
        fresh = render(text, path)
        if fresh != text:
            diff = ''.join(difflib.unified_diff(text.splitlines(True), fresh.splitlines(True), path, 'generated'))
            out.append((path, diff))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument('--check', action='store_true')
    group.add_argument('--write', action='store_true')
    args = parser.parse_args(argv)
    stale = stale_documents()
    if args.write:
        for path in documents():
            with open(path) as f:
                text = f.read()
            with open(path, 'w') as f:
                f.write(render(text, path))
        print(f'rewrote the figures of {len(stale)} document(s)')
        return 0
    for path, diff in stale:
        print(diff)
    return 1 if stale else 0


if __name__ == '__main__':
    sys.exit(main())

"""`make demo` (tools/demo.py) as a person sees it: progress per stage, then the result table;
mmengine's environment dump, config and hook table only in the log files. Runs the demo shrunk
by --smoke (a few iterations per stage), as a subprocess because its console is what is tested."""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

pytest.importorskip('mmpretrain')
pytest.importorskip('sklearn')

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
ROWS = ('FP teacher', 'W3/A3 PTQ, Gaussian-noise calibration', 'W3/A3 MimiQ (data-free QAT)')


@pytest.mark.slow
def test_demo_console_shows_progress_and_the_table_and_logs_the_rest(tmp_path):
    work_dir = tmp_path / 'demo'
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'demo.py'), '--smoke', '--work-dir', str(work_dir),
                           '--data-root', str(tmp_path / 'digits')],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-4000:]

    # the result table, one row per model with its top-1
    assert re.search(r'^model\s+top-1 \(%\)\s+time \(s\)$', console, re.M), console
    for row in ROWS:
        assert re.search(rf'^{re.escape(row)}\s+\d+\.\d\d\s+\d+\.\d$', console, re.M), row
    # progress of every stage, each line with its time
    for stage in ('teacher: training', 'noise PTQ: synthesis', 'MimiQ: synthesis', 'MimiQ: training',
                  'MimiQ: evaluation'):
        assert re.search(rf'{re.escape(stage)}\s+\S+\s+\w+\s+done in \d\d:\d\d', console), stage
    # mmengine's start-up report stays out of the console ...
    for noise in ('Hooks will be executed', 'System environment', 'Config:', 'Traceback', 'Warning'):
        assert noise not in console, noise

    # ... and goes to the log files the demo names
    logs = re.findall(r'log: (\S+\.log)$', console, re.M)
    assert len(logs) == 3 and all(osp.isfile(log) for log in logs), logs
    for log in logs:
        text = open(log).read()
        assert 'Hooks will be executed' in text and 'System environment' in text
    assert 'synthesis [mimiq]' in open(logs[2]).read()

    with open(work_dir / 'results.json') as f:
        results = json.load(f)
    assert set(results['top1']) == set(ROWS) and results['smoke'] is True

"""The README's result tables are generated from result files, and a stale figure is caught."""
import json

import pytest

from benchmarks import readme_figures
from benchmarks.figures import robustness, sources, speed


def test_every_generated_table_matches_its_result_files():
    stale = readme_figures.stale_documents()
    assert not stale, 'stale README figures; run `python -m benchmarks.readme_figures --write`:\n' + '\n'.join(
        diff for _, diff in stale)


def _robustness_file(results, mimiq):
    cells = [dict(threads=1, bits='w3a3', noise_ptq=66.6, mimiq=mimiq, mimiq_lsq=92.76, mimiq_lsqplus=52.88,
                  below_best_fixed=92.76 - mimiq)]
    data = dict(cells=cells, checks=[dict(check='default >= noise PTQ in every cell', status='pass')],
                provenance=dict(cpu=dict(model='Some CPU', avx2=True)))
    (results / 'robustness.json').write_text(json.dumps(data))


def test_a_figure_typed_over_is_reported_and_rewritten(tmp_path, monkeypatch):
    results = tmp_path / 'results'
    results.mkdir()
    monkeypatch.setattr(sources, 'RESULTS', str(results))
    _robustness_file(results, mimiq=91.65)
    doc = tmp_path / 'README.md'
    doc.write_text('intro\n<!-- figures: digits_robustness robustness.json -->\nold\n<!-- /figures -->\nafter\n')
    assert readme_figures.stale_documents([str(doc)])  # the hand-typed 'old' body differs
    doc.write_text(readme_figures.render(doc.read_text()))
    assert not readme_figures.stale_documents([str(doc)])
    assert '| 1 | W3/A3 | 66.60 | 91.65 | 92.76 | 52.88 |' in doc.read_text()
    assert doc.read_text().startswith('intro\n') and doc.read_text().endswith('after\n')

    doc.write_text(doc.read_text().replace('91.65', '91.66'))  # one figure edited by hand
    (path, diff), = readme_figures.stale_documents([str(doc)])
    assert '-| 1 | W3/A3 | 66.60 | 91.66' in diff and '+| 1 | W3/A3 | 66.60 | 91.65' in diff

    _robustness_file(results, mimiq=93.0)  # the result file changes: the README is stale again
    doc.write_text(doc.read_text().replace('91.66', '91.65'))
    assert readme_figures.stale_documents([str(doc)])


def test_a_block_naming_a_missing_file_or_generator_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, 'RESULTS', str(tmp_path))
    with pytest.raises(FileNotFoundError, match='missing.json'):
        readme_figures.render('<!-- figures: digits_robustness missing.json -->\n<!-- /figures -->')
    with pytest.raises(ValueError, match='known: '):
        readme_figures.render('<!-- figures: no_such_table x.json -->\n<!-- /figures -->')


def _cell(mean):
    return {'accuracy/top1': dict(mean=mean, std=0.0, n=1, seeds=[0], values=[mean])}


def test_the_robustness_checks_are_computed_from_the_cells(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, 'RESULTS', str(tmp_path))
    summary = dict(vit=dict(noise_ptq=dict(w4a4=_cell(57.0), w3a3=_cell(40.0)),
                            mimiq=dict(w4a4=_cell(58.0), w3a3=_cell(39.0)),          # under PTQ at W3/A3
                            mimiq_lsq=dict(w4a4=_cell(58.5), w3a3=_cell(43.5)),     # 4.5 above the default
                            mimiq_lsqplus=dict(w4a4=_cell(50.0), w3a3=_cell(30.0))))
    data = dict(teacher_names=['vit'], bits=['w4a4', 'w3a3'], summary=summary, invocations=[],
                teachers=dict(vit=dict(metrics={'accuracy/top1': 61.0})))
    (tmp_path / 'r.json').write_text(json.dumps(data))
    text = '\n'.join(robustness.robustness_table('r.json'))
    assert '| vit (61.00) | W3/A3 | 40.00 | 39.00 | 43.50 | 30.00 | -4.50 |' in text
    assert 'default ≥ noise PTQ in 1 (**FAIL**)' in text
    assert 'within 1 point of the better fixed start in 1 (50%, **FAIL** at 90 %)' in text
    assert 'at most 4.50 below it (**FAIL** at 3)' in text


def test_robustness_files_of_two_thread_counts_make_one_table_checked_over_all_cells(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, 'RESULTS', str(tmp_path))
    for threads, default in ((1, 58.0), (2, 56.0)):  # two threads: under PTQ
        summary = dict(vit=dict(noise_ptq=dict(w4a4=_cell(57.0)), mimiq=dict(w4a4=_cell(default)),
                                mimiq_lsq=dict(w4a4=_cell(58.2)), mimiq_lsqplus=dict(w4a4=_cell(50.0))))
        records = [dict(row='mimiq', device=f'CPU (2 cores, {threads} threads), torch 2')]
        data = dict(teacher_names=['vit'], bits=['w4a4'], summary=summary, invocations=[], results=records,
                    teachers=dict(vit=dict(metrics={'accuracy/top1': 61.0})))
        (tmp_path / f't{threads}.json').write_text(json.dumps(data))
    text = '\n'.join(robustness.robustness_table('t1.json', 't2.json'))
    assert '| 1 | vit (61.00) | W4/A4 | 57.00 | 58.00 | 58.20 | 50.00 | -0.20 |' in text
    assert '| 2 | vit (61.00) | W4/A4 | 57.00 | 56.00 | 58.20 | 50.00 | -2.20 |' in text
    assert 'Checks over the 2 cells: default ≥ noise PTQ in 1 (**FAIL**)' in text
    assert '- 2 thread(s) per unit: ' in text and '[`t2.md`]' in text


def test_the_robustness_summary_pools_the_digits_runs_and_a_driver_table(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, 'RESULTS', str(tmp_path))
    _robustness_file(tmp_path, mimiq=91.65)  # digits, one thread: 1.11 under the LSQ start
    summary = dict(vit=dict(noise_ptq=dict(w4a4=_cell(57.0)), mimiq=dict(w4a4=_cell(56.5)),  # under PTQ
                            mimiq_lsq=dict(w4a4=_cell(56.0)), mimiq_lsqplus=dict(w4a4=_cell(55.0))))
    data = dict(benchmark='cifar10-robustness', teacher_names=['vit'], bits=['w4a4'], summary=summary,
                invocations=[], results=[dict(row='mimiq', device='CPU (2 cores, 2 threads)')],
                teachers=dict(vit=dict(metrics={'accuracy/top1': 61.0})))
    (tmp_path / 'r.json').write_text(json.dumps(data))
    text = '\n'.join(robustness.robustness_summary('robustness.json', 'r.json'))
    assert '| digits demo teacher | 1 | 1 | 1 | 0 | 1.11 |' in text
    assert '| cifar10-robustness: vit | 2 | 1 | 0 | 1 | 0.00 |' in text
    assert '| **all** | | 2 | 1 (**FAIL**) | 1, 50% (**FAIL** at 90 %) | 1.11 (**pass** at 3) |' in text


def test_a_detector_robustness_table_checks_every_metric_on_its_own_scale(tmp_path, monkeypatch):
    """mAP cells are stored in %, the teacher's metric as COCO gives it (0-1); fidelity's FP is 100."""
    monkeypatch.setattr(sources, 'RESULTS', str(tmp_path))

    def cells(box, fidelity):
        return {'coco/bbox_mAP': dict(mean=box, std=0.0, n=1), 'teacher/bbox_mAP': dict(mean=fidelity, std=0.0, n=1)}
    summary = dict(maskrcnn=dict(noise_ptq=dict(w4a4=cells(28.0, 52.0)), mimiq=dict(w4a4=cells(29.0, 50.0)),
                                 mimiq_lsq=dict(w4a4=cells(29.5, 54.0)), mimiq_lsqplus=dict(w4a4=cells(27.0, 49.0))))
    data = dict(teacher_names=['maskrcnn'], bits=['w4a4'], summary=summary, invocations=[],
                teachers=dict(maskrcnn=dict(metrics={'coco/bbox_mAP': 0.305})),
                metrics=[dict(key='coco/bbox_mAP', name='box mAP', scale=100.0),
                         dict(key='teacher/bbox_mAP', name='box fidelity', scale=100.0, fp=100.0)])
    (tmp_path / 'd.json').write_text(json.dumps(data))
    text = '\n'.join(robustness.robustness_table('d.json', 'coco/bbox_mAP', 'teacher/bbox_mAP'))
    assert '| maskrcnn (30.50) | W4/A4 | box mAP | 28.00 | 29.00 | 29.50 | 27.00 | -0.50 |' in text
    assert '| maskrcnn (100.00) | W4/A4 | box fidelity | 52.00 | 50.00 | 54.00 | 49.00 | -4.00 |' in text
    assert 'Checks over the 2 cells: default ≥ noise PTQ in 1 (**FAIL**)' in text
    assert 'at most 4.00 below it (**FAIL** at 3)' in text


def test_iteration_costs_amortise_the_synthesis_over_the_papers_recipe(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, 'RESULTS', str(tmp_path))
    steps = dict(ihc=dict(ms_median=100.0), psaq=dict(ms_median=90.0), kd_had=dict(ms_median=50.0))
    for kind in speed.BASELINE_ITERATIONS:
        steps[kind] = dict(description=kind, split=dict(generator_ms=30.0, student_ms=45.0))
    data = dict(model='m', batch=4, precision='fp32', steps=steps, provenance=dict(threads=1))
    (tmp_path / 'i.json').write_text(json.dumps(data))
    text = '\n'.join(speed.iteration_costs('i.json'))
    assert '| 1000 | 50 | 1050 | 1.00× |' in text  # MimiQ: 10 synthesis steps per fine-tuning image
    assert '| gdfq | 30 | 45 | 75 | 0.07× |' in text
    assert '| 930 | 45 | 975 | 0.93× |' in text  # PSAQ-ViT V2: its set's synthesis + its sample step
    del steps['psaq']
    (tmp_path / 'i.json').write_text(json.dumps(data))
    with pytest.raises(ValueError, match='psaq'):
        speed.iteration_costs('i.json')

"""Time the fake-quantized student against the full-precision model, for one or more source trees.

For every tree (``NAME=PATH`` of a mimiq_mm checkout) a worker subprocess imports ``mimiq_mm``
from that tree, builds the same randomly initialised timm model (through mmpretrain's
``TimmClassifier``, as ``configs/timm`` do) and times these calls on one fixed batch:

========== ==================================================================================
kind       what one call is
========== ==================================================================================
fp_eval    the full-precision model, eval mode, no autograd
q_eval     the fake-quantized student (calibrated), eval mode, no autograd
fp_kd      ``QuantDistiller.train_step`` with the student's quantizers off: L_KL, SGD step
fp_kd_had  the same with L_KL + γ·L_HAD
q_kd       ``QuantDistiller.train_step`` of the fake-quantized student: L_KL
q_kd_had   the same with L_KL + γ·L_HAD (the MimiQ fine-tuning step)
========== ==================================================================================

Every worker runs one thread and is timed by its own process CPU time; the parent calls the
workers' kinds in alternation (tree A kind 1, tree B kind 1, tree A kind 2, ...), so load
changes on a shared machine hit all of them alike. Ratios are medians of per-round ratios.

Example (the before/after run of benchmarks/results/forward_*.json)::

    OMP_NUM_THREADS=1 taskset -c 1 python tools/benchmark_forward.py \
        --tree before=/work/baseline --tree after=/work/main \
        --model deit_small_patch16_224 --batch 8 --rounds 5
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
KINDS = ('fp_eval', 'q_eval', 'fp_kd', 'fp_kd_had', 'q_kd', 'q_kd_had')
IMAGENET_MEAN = [123.675, 116.28, 103.53]
IMAGENET_STD = [58.395, 57.12, 57.375]
RATIOS = {'q_eval': 'fp_eval', 'q_kd': 'fp_kd', 'q_kd_had': 'fp_kd_had'}


# ----------------------------------------------------------------------------- worker side

class Worker:
    """Builds the models of one tree and runs one timed call per request."""

    def __init__(self, model, batch, img_size, w_bits, a_bits, act_method, kinds, seed=0):
        import torch
        import mmpretrain.models  # noqa: F401  (registers TimmClassifier)
        import mimiq_mm  # noqa: F401
        from mimiq_mm.quant import calibration, set_quantization
        torch.set_num_threads(1)
        self.torch = torch
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(batch, 3, img_size, img_size, generator=g)
        pixels = torch.randint(0, 256, (batch, 3, img_size, img_size), generator=g, dtype=torch.uint8)
        self.data = dict(pixels=pixels, label=torch.randint(1000, (batch,), generator=g))
        quant = dict(w_bits=w_bits, a_bits=a_bits, act_method=act_method)
        self.calls = {}
        if 'fp_eval' in kinds:
            import timm
            torch.manual_seed(seed)
            fp = timm.create_model(model, pretrained=False, num_classes=1000, img_size=img_size).eval()
            self.calls['fp_eval'] = self._no_grad(fp, fp)
        # distillers: 'fp' (student's quantizers off) and 'q' for the training steps, L_HAD switched
        # per call by ``had_loss`` (None: L_KL only); a separate 'q_eval' one for the eval forward,
        # so its cached weights are not invalidated by the training steps in between
        self.distillers = {}
        for name in ('fp', 'q', 'q_eval'):
            if not any(k == name or k.startswith(name + '_kd') for k in kinds):
                continue
            torch.manual_seed(seed)
            d = self._distiller(model, img_size, quant)
            with torch.no_grad(), calibration(d.student):
                d.student(self.images[:8], mode='tensor')
            if name == 'fp':
                set_quantization(d.student, False, False)
            self.distillers[name] = d
        for kind in kinds:
            if kind == 'q_eval':
                d = self.distillers[kind]
                self.calls[kind] = self._no_grad(lambda x, d=d: d.student(x, mode='tensor'), d)
            elif kind != 'fp_eval':
                self.calls[kind] = self._train_step(self.distillers[kind.split('_')[0]], had=kind.endswith('_had'))

    @staticmethod
    def _distiller(model, img_size, quant):
        from mimiq_mm.models.distiller import QuantDistiller
        arch = dict(type='mmpretrain.TimmClassifier', model_name=model, pretrained=False, num_classes=1000,
                    img_size=img_size)
        pre = dict(type='mmpretrain.ClsDataPreprocessor', mean=IMAGENET_MEAN, std=IMAGENET_STD, to_rgb=True)
        return QuantDistiller(arch, quant=quant, kd=dict(temperature=1.0, loss_weight=1.0),
                              had=dict(metric='dssim', loss_weight=10.0),
                              allow_random_teacher=True, data_preprocessor=pre)

    def _no_grad(self, fn, module):
        torch = self.torch

        def call():
            module.eval()
            with torch.no_grad():
                fn(self.images)
        return call

    def _train_step(self, d, had):
        from mmengine.optim import OptimWrapper
        torch = self.torch
        params = [p for p in d.parameters() if p.requires_grad]
        wrapper = OptimWrapper(optimizer=torch.optim.SGD(params, lr=1e-3, momentum=0.9, nesterov=True))
        had_loss = d.had_loss

        def call():
            d.had_loss = had_loss if had else None
            d.train()
            d.train_step(self.data, wrapper)
        return call

    def run(self, kind):
        t0 = time.process_time()
        self.calls[kind]()
        return (time.process_time() - t0) * 1e3


def worker_main(spec):
    import mimiq_mm
    worker = Worker(**spec)
    print(json.dumps(dict(ready=True, package=osp.dirname(mimiq_mm.__file__))), flush=True)
    for line in sys.stdin:
        kind = json.loads(line)['kind']
        print(json.dumps(dict(kind=kind, ms=worker.run(kind))), flush=True)


# ----------------------------------------------------------------------------- parent side

class WorkerProcess:
    def __init__(self, name, tree, spec):
        env = dict(os.environ, PYTHONPATH=osp.abspath(tree), OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
        self.name, self.tree = name, tree
        self.proc = subprocess.Popen([sys.executable, osp.abspath(__file__), '--worker', json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
                                     cwd=osp.abspath(tree))
        package = self._read()['package']
        if not osp.realpath(package).startswith(osp.realpath(tree)):
            raise RuntimeError(f'worker for {name} imported mimiq_mm from {package}, not from {tree}')

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f'worker for {self.name} ({self.tree}) exited; see its stderr above')
        return json.loads(line)

    def run(self, kind):
        self.proc.stdin.write(json.dumps(dict(kind=kind)) + '\n')
        self.proc.stdin.flush()
        return self._read()['ms']

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def git_commit(tree):
    try:
        out = subprocess.run(['git', '-C', tree, 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True)
        dirty = subprocess.run(['git', '-C', tree, 'status', '--porcelain', '--untracked-files=no'],
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + ('+uncommitted changes' if dirty else '')
    except OSError:
        return None


def summarise(times, kinds):
    out = {}
    for tree, per_kind in times.items():
        rows = {k: dict(ms_median=statistics.median(v), ms_min=min(v), times_ms=v) for k, v in per_kind.items()}
        for kind, base in RATIOS.items():
            if kind in per_kind and base in per_kind:
                rows[kind]['ratio_vs'] = base
                rows[kind]['ratio'] = statistics.median(a / b for a, b in zip(per_kind[kind], per_kind[base]))
        out[tree] = rows
    return out


def format_table(summary, kinds):
    trees = list(summary)
    head = f'{"kind":10s}' + ''.join(f'{t + " ms":>16s}{t + " ratio":>16s}' for t in trees)
    lines = [head]
    for kind in kinds:
        line = f'{kind:10s}'
        for t in trees:
            row = summary[t][kind]
            ratio = f'{row["ratio"]:.2f}x {row["ratio_vs"]}' if 'ratio' in row else '-'
            line += f'{row["ms_median"]:16.1f}{ratio:>16s}'
        lines.append(line)
    return '\n'.join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Fake-quantized vs full-precision forward / QAT step, several trees')
    p.add_argument('--tree', action='append', default=[], metavar='NAME=PATH',
                   help='a mimiq_mm checkout to time (repeatable; default: this one)')
    p.add_argument('--model', default='deit_small_patch16_224', help='timm model name')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--w-bits', type=int, default=4)
    p.add_argument('--a-bits', type=int, default=4)
    p.add_argument('--act-method', default='minmax', choices=['minmax', 'lsq'])
    p.add_argument('--kinds', nargs='+', default=list(KINDS), choices=KINDS)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--out', help='JSON path (default benchmarks/results/forward_<model>_w<W>a<A>_<method>_b<B>.json)')
    p.add_argument('--worker', help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker_main(json.loads(args.worker))
    trees = dict(t.split('=', 1) for t in args.tree) if args.tree else {'current': ROOT}
    spec = dict(model=args.model, batch=args.batch, img_size=args.img_size, w_bits=args.w_bits, a_bits=args.a_bits,
                act_method=args.act_method, kinds=args.kinds)
    workers = {name: WorkerProcess(name, path, spec) for name, path in trees.items()}
    times = {name: {k: [] for k in args.kinds} for name in trees}
    try:
        for r in range(args.warmup + args.rounds):
            for kind in args.kinds:
                for name, w in workers.items():
                    ms = w.run(kind)
                    if r >= args.warmup:
                        times[name][kind].append(ms)
            print(f'round {r + 1}/{args.warmup + args.rounds} done', flush=True)
    finally:
        for w in workers.values():
            w.close()
    summary = summarise(times, args.kinds)
    print(format_table(summary, args.kinds))
    command = 'python tools/benchmark_forward.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    result = dict(settings=spec, warmup=args.warmup, rounds=args.rounds,
                  timer='process CPU time per call, one thread per worker, trees and kinds interleaved',
                  trees={name: dict(path=osp.abspath(p), commit=git_commit(p)) for name, p in trees.items()},
                  results=summary, command=command)
    try:
        sys.path.insert(0, ROOT)
        from mimiq_mm.benchmark.timing import environment
        result['environment'] = environment('cpu', command.split())
    except ImportError:
        pass
    name = f'forward_{args.model}_w{args.w_bits}a{args.a_bits}_{args.act_method}_b{args.batch}.json'
    out = args.out or osp.join(ROOT, 'benchmarks', 'results', name)
    with open(out, 'w') as f:
        json.dump(result, f, indent=1)
    print(f'wrote {out}')
    return result


if __name__ == '__main__':
    main()

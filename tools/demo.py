"""The embedded default, end to end on a CPU in a few minutes, with no network:

1. export scikit-learn's digits (shipped inside the package) as a 16x16 ImageFolder;
2. train a small DeiT-style ViT teacher on the train split (mmpretrain runner);
3. quantize it to W3/A3 without touching the train images: post-training quantization calibrated
   on Gaussian noise, and MimiQ (IHC synthesis + KL + HAD fine-tuning);
4. print top-1 on the test split of the FP teacher and both quantized students.

W3/A3 because on data this easy a small ViT survives W4/A4 even with noise-calibrated PTQ, so
W4/A4 would not show the difference the method makes; at 3 bits naive PTQ visibly breaks.

The console shows one progress line per stage (with its ETA) and the result table; each stage's
full mmengine log goes to its work directory, whose path is printed. Every stage is seeded
(``randomness.seed`` of the configs), so a run repeats its figures on the same machine.

Usage: python tools/demo.py [--work-dir work_dirs/demo] [--data-root data/digits] [--seed 0] [--smoke]
"""
import argparse
import contextlib
import io
import json
import logging
import os.path as osp
import re
import sys
import time
import warnings

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))  # the configs of the demo are the checkout's

with warnings.catch_warnings():  # import-time deprecation notices of the stack: not the demo's business
    warnings.simplefilter('ignore')
    import mimiq_mm  # noqa: F401  (registers components, safe checkpoint loading)
    from mmengine.hooks import Hook
    from mimiq_mm.apis.cli import ConsoleProgress
    from mimiq_mm.datasets.digits import export_digits

STAGES = (  # key, config, short name, row label of the result table
    ('teacher', 'configs/demo/vit_digits_teacher.py', 'teacher', 'FP teacher'),
    ('ptq_noise', 'configs/demo/ptq_noise_vit_digits_w3a3.py', 'noise PTQ', 'W3/A3 PTQ, Gaussian-noise calibration'),
    ('mimiq', 'configs/demo/mimiq_vit_digits_w3a3.py', 'MimiQ', 'W3/A3 MimiQ (data-free QAT)'),
)
# --smoke: every stage runs, a few iterations each (for tests of the tool; figures meaningless).
SMOKE_OPTIONS = {
    'teacher': {'train_cfg.max_epochs': 1, 'default_hooks.checkpoint.interval': 1},
    'ptq_noise': {'train_cfg.synthesis.num_images': 64},
    'mimiq': {'train_cfg.synthesis.num_images': 64, 'train_cfg.synthesis.steps': 2, 'train_cfg.max_iters': 4},
}


class StageProgressHook(Hook):
    """Feeds :class:`ConsoleProgress` from a Runner: training iterations and evaluation batches
    of one stage of the demo (synthesis batches come from :class:`SynthesisLogReader`)."""
    priority = 'VERY_LOW'

    def __init__(self, progress, stage):
        self.progress = progress
        self.stage = stage
        self.first_iter = None

    def synthesis_logged(self, done, total):
        self.progress.update(done, total)

    def synthesis_reused(self):
        self.progress.name = f'{self.stage}: set reused'

    def before_train_epoch(self, runner):
        if self.first_iter is None and runner.max_iters > runner.iter:
            self.first_iter = runner.iter
            self.progress.start(f'{self.stage}: training', runner.max_iters - runner.iter, 'iters')
        elif self.first_iter is None:
            self.progress.finish()  # post-training quantization: nothing to train

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.progress.update(runner.iter + 1 - self.first_iter)

    def after_train(self, runner):
        self.progress.finish()

    def before_test_epoch(self, runner):
        self.progress.start(f'{self.stage}: evaluation', len(runner.test_loop.dataloader), 'batches')

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.progress.update(batch_idx + 1)

    def after_test_epoch(self, runner, metrics=None):
        self.progress.finish()


class SynthesisLogReader(logging.Handler):
    """Passes the synthesis pipeline's per-batch log line ("synthesis [mimiq]: 3/6 batches ...")
    to the stage's progress: synthesis runs inside the loop, where no hook is called per batch."""
    PATTERN = re.compile(r'synthesis \[\w+\]: (\d+)/(\d+) batches')

    def __init__(self, hook):
        super().__init__(logging.INFO)
        self.hook = hook

    def emit(self, record):
        message = record.getMessage()
        match = self.PATTERN.search(message)
        if match:
            self.hook.synthesis_logged(int(match.group(1)), int(match.group(2)))
        elif message.startswith('using the finished synthetic set'):  # a second `make demo`
            self.hook.synthesis_reused()


class _LogLines(io.TextIOBase):
    """A text stream whose lines go to a logger (stray prints of the libraries, to the log file)."""

    def __init__(self, logger):
        self.logger = logger
        self.pending = ''

    def write(self, text):
        self.pending += text
        *lines, self.pending = self.pending.split('\n')
        for line in lines:
            if line.strip():
                self.logger.info(line)
        return len(text)


@contextlib.contextmanager
def quiet_console(logger=None):
    """Send what the libraries print and warn to ``logger`` (its log file), or nowhere while no
    logger exists yet; the demo writes its own lines to the stream it captured at start."""
    with warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stdout(_LogLines(logger) if logger else io.StringIO()):
        warnings.simplefilter('default')
        yield caught
    for warning in caught if logger else ():
        logger.warning(f'{warning.category.__name__}: {warning.message} ({warning.filename}:{warning.lineno})')


def build_runner(config, work_dir, data_root, progress, stage, extra=None):
    """The stage's Runner with a quiet console: mmengine's environment dump, config and hook table
    go to the log file only, and so do its warnings; errors still reach the console.
    Returns (runner, log file)."""
    from mmengine.config import Config
    from mmengine.runner import Runner
    with quiet_console() as caught:  # MMLogger binds its console handler to sys.stdout here
        cfg = Config.fromfile(osp.join(ROOT, config))
        cfg.work_dir = work_dir
        for loader in ('train_dataloader', 'test_dataloader'):
            cfg[loader].dataset.data_root = data_root
        # The demo's figures come from runner.test(); validating on the same split during
        # training would only repeat it.
        cfg.merge_from_dict(dict(val_cfg=None, val_dataloader=None, val_evaluator=None, **(extra or {})))
        runner = Runner.from_cfg(cfg)
    log_file = None
    for handler in runner.logger.handlers:
        if isinstance(handler, logging.FileHandler):
            log_file = handler.baseFilename
        elif isinstance(handler, logging.StreamHandler):
            handler.setStream(progress.stream)
            handler.setLevel(logging.ERROR)
    for warning in caught:
        runner.logger.warning(f'{warning.category.__name__}: {warning.message}')
    hook = StageProgressHook(progress, stage)
    runner.register_hook(hook)
    runner.logger.addHandler(SynthesisLogReader(hook))
    return runner, log_file


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/digits')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of every stage (teacher training, synthesis, fine-tuning); stages of other '
                        'seeds than 0 get their own folders')
    parser.add_argument('--smoke', action='store_true',
                        help='a few iterations of every stage, to check the pipeline (figures meaningless)')
    args = parser.parse_args(argv)
    import torch
    torch.manual_seed(args.seed)
    n_train, n_test = export_digits(args.data_root)
    print(f'digits: {n_train} train / {n_test} test images in {args.data_root}')
    progress = ConsoleProgress(sys.stdout)

    results, timings, cpu_times, logs = {}, {}, {}, {}
    for number, (key, config, name, label) in enumerate(STAGES, 1):
        options = dict(SMOKE_OPTIONS[key]) if args.smoke else {}
        stage_dir = osp.join(args.work_dir, key if args.seed == 0 else f'{key}_seed{args.seed}')
        if args.seed != 0:
            options.update({'randomness.seed': args.seed} if key == 'teacher' else
                           {'randomness.seed': args.seed, 'train_cfg.synthesis.seed': args.seed})
        t0, cpu0 = time.time(), time.process_time()
        if key == 'teacher':
            epochs = options.get('train_cfg.max_epochs', 30)
            teacher_ckpt = osp.join(stage_dir, f'epoch_{epochs}.pth')
            trained = osp.isfile(teacher_ckpt)  # a second `make demo` reuses the teacher
            if trained:
                options['load_from'] = teacher_ckpt
        else:
            options['model.teacher_checkpoint'] = teacher_ckpt
        runner, log_file = build_runner(config, stage_dir, args.data_root, progress, name, options)
        logs[label] = log_file
        reuse = key == 'teacher' and trained
        print(f'[{number}/{len(STAGES)}] {label}' + (' (reusing the trained teacher)' if reuse else '')
              + f'; log: {log_file}', flush=True)
        with quiet_console(runner.logger):
            if key != 'teacher':  # the data-free loop synthesises (or reuses) its set first
                progress.start(f'{name}: synthesis', unit='batches')
            if not reuse:
                runner.train()
            results[label] = float(runner.test()['accuracy/top1'])
        timings[label] = time.time() - t0
        cpu_times[label] = time.process_time() - cpu0  # steadier than wall time on a shared machine
    progress.finish()

    width = max(len(k) for k in results)
    print('\n' + '=' * (width + 22))
    print(f'{"model":<{width}}  top-1 (%)  time (s)')
    for k, v in results.items():
        print(f'{k:<{width}}  {v:9.2f}  {timings[k]:8.1f}')
    print('=' * (width + 22))
    summary = osp.join(args.work_dir, 'results.json' if args.seed == 0 else f'results_seed{args.seed}.json')
    with open(summary, 'w') as f:
        json.dump(dict(top1=results, seconds=timings, cpu_seconds=cpu_times, threads=torch.get_num_threads(),
                       seed=args.seed, smoke=args.smoke, logs=logs,
                       configs={key: config for key, config, _, _ in STAGES}), f, indent=1)
    print(f'full logs: {osp.abspath(args.work_dir)}/<stage>/<timestamp>/<timestamp>.log; figures in {summary}')


if __name__ == '__main__':
    main()

"""Data-free quantization benchmark: a results table of MimiQ against its baselines on an
ImageFolder classification dataset (by default CIFAR-10, /work/shared/datasets/cifar10-jpeg.tar.gz).

For each teacher (default: a DeiT-S-style ViT with patch 2 and a Swin with patch 2 / window 4,
mmpretrain TimmClassifier configs in configs/cifar10/), the driver

  1. trains the full-precision teacher on the train split only           (stage `teacher`)
  2. makes one synthetic set per synthesis method (noise, psaq, base,
     mimiq), never reading a train image                                  (stage `synth`)
  3. quantizes the teacher with every method at every bit-width and seed:
     PTQ for noise/PSAQ, QAT (KL [+ HAD]) for base/ihc/mimiq, and the same
     QAT on the real train split for the real-data reference              (stage `quant`)
  4. evaluates top-1 on the test split                                    (stage `eval`)
  5. writes results.md (markdown table, mean and spread over seeds) and
     results.json (every figure, seeds, command lines, wall times, device) (stage `report`)

The methods, bit-widths, seeds and the size of every stage come from a scale preset of
configs/cifar10/benchmark.py (--scale smoke | cpu-2core | gpu-30min | paper), printed in the output. Every
unit of work saves its result in the work directory and is skipped when it exists (with the same
settings), so a run can be split over many short commands: --stages / --only select units,
--time-budget stops starting new ones (and stops running ones cleanly, resumable) before a
deadline, --pack / --restore move the compact state between machines.

Examples:
  python tools/benchmark/cifar10_table.py --data-root /tmp/cifar10 --scale gpu-30min --time-budget 540
  python tools/benchmark/cifar10_table.py --data-root /tmp/cifar10 --stages teacher synth
  python tools/benchmark/cifar10_table.py --data-root /tmp/cifar10 --only 'vit/*/w3a3/*' --seeds 0
  python tools/benchmark/cifar10_table.py --stages report            # table from what is done
  python tools/benchmark/cifar10_table.py --dry-run --data-root ...  # the plan and its status
  # another teacher / dataset (any mmpretrain or timm ViT/DeiT/Swin classifier config):
  python tools/benchmark/cifar10_table.py --data-root /data/my_folder --teacher-config CFG \\
      --teacher-checkpoint CKPT --scale gpu-30min
"""
import argparse
import copy
import fnmatch
import glob
import hashlib
import io
import json
import math
import os
import os.path as osp
import platform
import shlex
import shutil
import statistics
import sys
import tarfile
import time
import traceback

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

STAGES = ('teacher', 'synth', 'quant', 'eval', 'report')
DEFAULT_BENCHMARK_CONFIG = 'configs/cifar10/benchmark.py'
RECORD = 'stage.json'
EVAL_RECORD = 'eval.json'
PACK_NAME = 'bench-state.tar.gz'
PACK_PART_BYTES = 15 * 1024 * 1024
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def now_iso():
    return time.strftime('%Y-%m-%dT%H:%M:%S%z')


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path, data):
    os.makedirs(osp.dirname(path) or '.', exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=1, sort_keys=False, default=str)
    os.replace(tmp, path)


def jsonable(value):
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def fingerprint(value):
    return hashlib.sha1(json.dumps(jsonable(value), sort_keys=True).encode()).hexdigest()[:16]


_SHA_CACHE = {}


def file_sha256(path):
    if not path or not osp.isfile(path):
        return None
    stat = os.stat(path)
    key = (osp.abspath(path), stat.st_size, stat.st_mtime)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                digest.update(block)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def split_list(values):
    """['a,b', 'c'] -> ['a', 'b', 'c']."""
    out = []
    for v in values or []:
        out += [x for x in str(v).split(',') if x]
    return out


def parse_bits(tag):
    """'w3a3' -> (3, 3)."""
    tag = tag.lower().replace('/', '')
    if not (tag.startswith('w') and 'a' in tag):
        raise ValueError(f'bit-width {tag!r}: write it as w<bits>a<bits>, e.g. w3a3')
    w, a = tag[1:].split('a')
    return int(w), int(a)


def bits_label(tag):
    w, a = parse_bits(tag)
    return f'W{w}/A{a}'


def resolve_path(path):
    """A path as given, else relative to the repository root."""
    if path is None or '::' in path or osp.exists(path):
        return path
    candidate = osp.join(ROOT, path)
    return candidate if osp.exists(candidate) else path


def count_images(folder):
    n = 0
    for _, _, files in os.walk(folder):
        n += sum(f.lower().endswith(IMAGE_EXTENSIONS) for f in files)
    return n


def class_folders(split_dir):
    return sorted(d for d in os.listdir(split_dir) if osp.isdir(osp.join(split_dir, d)))


def device_info():
    import torch
    info = dict(python=platform.python_version(), torch=torch.__version__, cuda=torch.version.cuda,
                machine=platform.machine(), cpu_count=os.cpu_count())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device='cuda', gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    gpu_memory_gib=round(props.total_memory / 2 ** 30, 1))
    else:
        info.update(device='cpu', torch_threads=torch.get_num_threads())
    for name in ('mmengine', 'mmpretrain', 'timm'):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            pass
    return info


def device_words(info):
    if not info:
        return 'unknown'
    if info.get('device') == 'cuda':
        return (f"{info.get('gpu')} ({info.get('gpu_memory_gib')} GiB), torch {info.get('torch')}, "
                f"CUDA {info.get('cuda')}")
    return f"CPU ({info.get('cpu_count')} cores), torch {info.get('torch')}"


def fmt_seconds(s):
    if s is None:
        return '—'
    s = float(s)
    return f'{s:.0f} s' if s < 120 else f'{s / 60:.1f} min'


def latest_checkpoint(folder, prefix):
    best, best_n = None, -1
    for path in glob.glob(osp.join(folder, f'{prefix}_*.pth')):
        try:
            n = int(osp.basename(path)[len(prefix) + 1:-4])
        except ValueError:
            continue
        if n > best_n:
            best, best_n = path, n
    return best


def free_memory():
    import gc
    gc.collect()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


# ---------------------------------------------------------------------------------------------
# mmengine hooks used by the driver (registered on the runner directly)
# ---------------------------------------------------------------------------------------------
def make_hooks():
    from mmengine.hooks import Hook

    class TeacherBudgetHook(Hook):
        """Fit the teacher schedule to its time: after each epoch, estimate how many epochs fit
        before min(start + max_seconds, deadline) and, if fewer than planned, shorten the run and
        its cosine schedule (which then still decays to its minimum). The teacher always finishes
        inside its budget; ``shrunk_to`` records the epochs actually trained."""
        priority = 'LOWEST'

        def __init__(self, max_seconds=None, deadline=None, log=print, shrink_file=None):
            self.max_seconds, self.deadline, self.log = max_seconds, deadline, log
            self.shrunk_to = None
            self.shrink_file = shrink_file

        def before_train(self, runner):
            self.t0 = time.time()
            self.first_epoch = runner.epoch
            self.t_first = None
            prev = read_json(self.shrink_file) if self.shrink_file else None
            if prev and prev.get('epochs') and prev['epochs'] < runner.train_loop.max_epochs:
                self.apply(runner, int(prev['epochs']))  # resumed a run that had been shortened

        def after_train_epoch(self, runner):
            now = time.time()
            finished = runner.epoch + 1
            loop = runner.train_loop
            if finished >= loop.max_epochs:
                return
            ran = finished - self.first_epoch
            if ran == 1:
                self.t_first = now
                per_epoch = now - self.t0  # includes start-up: a conservative estimate
            else:
                per_epoch = (now - self.t_first) / (ran - 1)
            limits = [t for t in (self.t0 + self.max_seconds if self.max_seconds else None, self.deadline) if t]
            if not limits:
                return
            fit = finished + int(max(0.0, min(limits) - now) // max(per_epoch, 1e-6))
            if fit < loop.max_epochs:
                self.log(f'teacher: {per_epoch:.1f} s/epoch, {fit} of {loop.max_epochs} epochs fit in the time '
                         'budget; shortening the schedule')
                self.apply(runner, max(fit, finished))

        def apply(self, runner, epochs):
            loop = runner.train_loop
            per_epoch_iters = len(loop.dataloader)
            loop._max_epochs = epochs
            loop._max_iters = epochs * per_epoch_iters
            schedulers = runner.param_schedulers
            if isinstance(schedulers, dict):
                schedulers = [s for group in schedulers.values() for s in group]
            for sched in schedulers or []:
                unit = 1 if sched.by_epoch else per_epoch_iters
                end = epochs * unit
                if sched.end > end:
                    if hasattr(sched, 'T_max'):
                        sched.T_max = max(1, end - sched.begin)
                    sched.end = end
            self.shrunk_to = epochs
            if self.shrink_file:
                write_json(self.shrink_file, dict(epochs=epochs))

    class DeadlineHook(Hook):
        """Stop an iteration-based run at the deadline, saving a checkpoint to resume from."""
        priority = 'LOWEST'

        def __init__(self, deadline, log=print):
            self.deadline, self.log = deadline, log
            self.stopped = False

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            loop = runner.train_loop
            if self.deadline and time.time() > self.deadline and runner.iter + 1 < loop.max_iters:
                runner.save_checkpoint(runner.work_dir, f'iter_{runner.iter + 1}.pth', by_epoch=False)
                loop.stop_training = True
                self.stopped = True
                self.log(f'time budget reached at iteration {runner.iter + 1}/{loop.max_iters}; '
                         'checkpoint saved, the unit resumes on the next invocation')

    return TeacherBudgetHook, DeadlineHook


# ---------------------------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------------------------
class Unit:
    """One resumable unit of work. ``key`` is shared by a quant unit and its eval unit."""

    def __init__(self, kind, key, teacher, method=None, synth=None, bits=None, seed=None, deps=()):
        self.kind, self.key, self.teacher = kind, key, teacher
        self.method, self.synth, self.bits, self.seed = method, synth, bits, seed
        self.deps = list(deps)

    @property
    def name(self):
        return f'{self.kind} {self.key}'

    def __repr__(self):
        return f'Unit({self.name})'


class Benchmark:
    def __init__(self, args, argv=None):
        self.args = args
        self.argv = list(sys.argv[1:] if argv is None else argv)
        self.t_start = time.time()
        self.deadline = self.t_start + args.time_budget - args.reserve if args.time_budget else None
        from mmengine.config import Config
        self.recipe_path = resolve_path(args.benchmark_config)
        recipe = Config.fromfile(self.recipe_path).to_dict()
        self.recipe = recipe
        if args.scale not in recipe['scales']:
            raise SystemExit(f'error: unknown --scale {args.scale!r}; {self.recipe_path} has '
                             f'{", ".join(recipe["scales"])}')
        self.scale_name = args.scale
        self.scale = copy.deepcopy(recipe['scales'][args.scale])
        self.overrides = self.apply_overrides()
        self.methods_all = recipe['methods']
        self.name = recipe.get('benchmark', 'benchmark')
        self.data_root = osp.abspath(args.data_root) if args.data_root else None
        self.work = default_work_dir(args, self.name)
        self.log_path = osp.join(self.work, 'logs', 'driver.log')
        self.teachers = self.select_teachers()
        self.methods = self.select('methods', list(self.methods_all), self.methods_all)
        self.bits = self.select_bits()
        self.seeds = [int(s) for s in split_list(args.seeds)] if args.seeds else list(self.scale['seeds'])
        self.stages = split_list(args.stages) or list(STAGES)
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise SystemExit(f'error: unknown stage(s) {sorted(unknown)}; stages: {", ".join(STAGES)}')
        self.only = split_list(args.only)
        self.workers = args.workers if args.workers is not None else int(self.scale.get('workers', 0))
        self._device = None
        self._teacher_cfgs = {}
        self._runner_count = 0
        self.counts = dict(ran=[], skipped=[], deferred=[], blocked=[], failed=[], partial=[])
        os.makedirs(osp.dirname(self.log_path), exist_ok=True)  # only once the arguments are valid

    # ----------------------------------------------------------------- set-up
    def log(self, msg):
        line = f'[bench] {msg}'
        print(line, flush=True)
        with open(self.log_path, 'a') as f:
            f.write(f'{time.strftime("%H:%M:%S")} {line}\n')

    def apply_overrides(self):
        a, s, done = self.args, self.scale, {}
        table = [('teacher_epochs', 'teacher', 'epochs'), ('teacher_seconds', 'teacher', 'max_seconds'),
                 ('teacher_batch', 'teacher', 'batch_size'), ('teacher_lr', 'teacher', 'lr'),
                 ('synth_images', 'synthesis', 'num_images'), ('synth_steps', 'synthesis', 'steps'),
                 ('synth_batch', 'synthesis', 'batch_size'), ('ft_iters', 'finetune', 'iters'),
                 ('ft_batch', 'finetune', 'batch_size'), ('ft_lr', 'finetune', 'lr'),
                 ('had_gamma', 'finetune', 'had_gamma'), ('act_method', 'finetune', 'act_method'),
                 ('kd_temperature', 'finetune', 'kd_temperature')]
        for arg, section, key in table:
            value = getattr(a, arg)
            if value is not None:
                s[section][key] = value
                done[f'{section}.{key}'] = value
        if a.teacher_seconds is not None and a.teacher_seconds <= 0:
            s['teacher']['max_seconds'] = None
        return done

    def select(self, what, default, known):
        chosen = split_list(getattr(self.args, what)) or default
        bad = [c for c in chosen if c not in known]
        if bad:
            raise SystemExit(f'error: unknown {what} {bad}; known: {", ".join(known)}')
        return chosen

    def select_bits(self):
        chosen = split_list(self.args.bits) or list(self.scale['bits'])
        out = []
        for tag in chosen:
            if tag == 'all':
                out += self.recipe['all_bits']
            elif tag == 'headline':
                out += self.recipe['headline_bits']
            else:
                w, a = parse_bits(tag)
                out.append(f'w{w}a{a}')
        return list(dict.fromkeys(out))

    def select_teachers(self):
        a = self.args
        if a.teacher_config:
            name = a.teacher_name
            return {name: dict(name=name, label=a.teacher_label or f'{name} ({osp.basename(a.teacher_config)})',
                               config=a.teacher_config,
                               checkpoint=a.teacher_checkpoint and osp.abspath(a.teacher_checkpoint),
                               cfg_options=list(a.teacher_cfg_options or []))}
        if a.teacher_checkpoint:
            raise SystemExit('error: --teacher-checkpoint needs --teacher-config (the architecture it belongs to)')
        names = self.select('teachers', list(self.scale['teachers']), self.scale['teacher_configs'])
        out = {}
        for name in names:
            # a scale may shrink a teacher (e.g. patch 4 on a CPU): its own label then wins
            label = (self.scale.get('teacher_labels', {}).get(name)
                     or self.recipe['teachers'].get(name, {}).get('label', name))
            out[name] = dict(name=name, label=label,
                             config=self.scale['teacher_configs'][name], checkpoint=None,
                             cfg_options=list(a.teacher_cfg_options or []))
        return out

    @property
    def cuda(self):
        if self._device is None:
            import torch
            self._device = torch.cuda.is_available()
            if self._device:
                torch.backends.cuda.matmul.allow_tf32 = not self.args.no_tf32
                torch.backends.cudnn.allow_tf32 = not self.args.no_tf32
        return self._device

    def need_data(self, what):
        if not self.data_root:
            raise RuntimeError(f'{what} needs --data-root (an ImageFolder with {self.args.train_split}/ and '
                               f'{self.args.test_split}/)')
        for split in (self.args.train_split, self.args.test_split):
            if not osp.isdir(osp.join(self.data_root, split)):
                raise RuntimeError(f'{self.data_root} has no {split}/ folder; --data-root must be an ImageFolder '
                                   f'with {self.args.train_split}/<class>/* and {self.args.test_split}/<class>/*')

    # ----------------------------------------------------------------- bench.json (invocations)
    def open(self):
        path = osp.join(self.work, 'bench.json')
        meta = read_json(path) or dict(benchmark=self.name, scale=self.scale_name, created=now_iso(),
                                       invocations=[], timings={})
        if meta.get('scale') != self.scale_name:
            raise SystemExit(f'error: {self.work} holds a benchmark at scale {meta.get("scale")!r}, not '
                             f'{self.scale_name!r}; give another --work-dir (figures of two scales do not mix)')
        self.meta = meta
        self.invocation = dict(
            command='python ' + ' '.join(shlex.quote(x) for x in [osp.relpath(osp.abspath(__file__), ROOT)]
                                         + self.argv),
            started=now_iso(), scale=self.scale_name, overrides=self.overrides, stages=self.stages,
            only=self.only, time_budget=self.args.time_budget, device=device_info())
        meta['invocations'].append(self.invocation)
        if self.data_root:
            meta['data_root'] = self.data_root
        self.save_meta()
        self.log(f'benchmark {self.name!r}, scale {self.scale_name!r} ({self.scale.get("description", "")}); '
                 f'work dir {self.work}; device: {device_words(self.invocation["device"])}')
        if self.overrides:
            self.log(f'scale overrides: {self.overrides}')

    def save_meta(self):
        write_json(osp.join(self.work, 'bench.json'), self.meta)

    def close(self, rc):
        inv = self.invocation
        inv.update(seconds=round(time.time() - self.t_start, 1), finished=now_iso(), exit_code=rc,
                   **{k: len(v) for k, v in self.counts.items()})
        self.save_meta()

    def add_timing(self, key, seconds):
        self.meta.setdefault('timings', {}).setdefault(key, []).append(round(seconds, 2))
        self.save_meta()

    # ----------------------------------------------------------------- paths
    def teacher_dir(self, t):
        return osp.join(self.work, t, 'teacher')

    def synth_dir(self, t, synth):
        return osp.join(self.work, t, 'synthetic', synth)

    def run_dir(self, t, method, bits, seed):
        return osp.join(self.work, t, 'runs', f'{method}_{bits}_s{seed}')

    def unit_dir(self, u):
        if u.kind == 'teacher' or (u.kind == 'eval' and u.method is None):
            return self.teacher_dir(u.teacher)
        if u.kind == 'synth':
            return self.synth_dir(u.teacher, u.synth)
        return self.run_dir(u.teacher, u.method, u.bits, u.seed)

    def record_path(self, u):
        return osp.join(self.unit_dir(u), EVAL_RECORD if u.kind == 'eval' else RECORD)

    def teacher_checkpoint(self, t):
        spec = self.teachers[t]
        return spec['checkpoint'] or osp.join(self.teacher_dir(t), 'teacher.pth')

    # ----------------------------------------------------------------- configs
    def teacher_cfg(self, t):
        """The teacher's config as a plain dict, on the --data-root ImageFolder, with the class
        count of the data (for a teacher trained here) or of the config (a given checkpoint)."""
        if t in self._teacher_cfgs:
            return copy.deepcopy(self._teacher_cfgs[t])
        import mimiq_mm  # noqa: F401  (registers components, safe checkpoint loading)
        from mmengine.config import Config, DictAction
        spec = self.teachers[t]
        path = resolve_path(spec['config'])
        if '::' in path:
            from mmengine.hub import get_config
            cfg = get_config(path)
        else:
            if not osp.isfile(path):
                raise FileNotFoundError(f'teacher config {spec["config"]} not found')
            cfg = Config.fromfile(path)
        options = {}
        for item in spec['cfg_options']:
            key, _, value = item.partition('=')
            options[key] = DictAction._parse_iterable(value)
        if options:
            cfg.merge_from_dict(options)
        d = cfg.to_dict()
        d.setdefault('default_scope', 'mmpretrain')
        imports = d.get('custom_imports') or dict(imports=[], allow_failed_imports=False)
        if 'mimiq_mm' not in imports['imports']:
            imports['imports'] = list(imports['imports']) + ['mimiq_mm']
        d['custom_imports'] = imports
        if self.data_root:
            self.use_image_folder(d)
        if spec['checkpoint'] is None:
            num_classes = self.num_classes_of_teacher(t)  # trained here: the class folders of the data
        else:
            num_classes = config_num_classes(d)  # given: the model's head (keep the preprocessor in step)
        if num_classes:
            set_num_classes(d, num_classes)
        self._teacher_cfgs[t] = d
        return copy.deepcopy(d)

    def num_classes_of_teacher(self, t):
        rec = read_json(osp.join(self.teacher_dir(t), RECORD))
        if rec and rec.get('num_classes'):
            return rec['num_classes']
        if self.data_root and osp.isdir(osp.join(self.data_root, self.args.train_split)):
            return len(class_folders(osp.join(self.data_root, self.args.train_split)))
        return None

    def use_image_folder(self, d):
        splits = dict(train_dataloader=self.args.train_split, val_dataloader=self.args.test_split,
                      test_dataloader=self.args.test_split)
        for name, split in splits.items():
            loader = d.get(name)
            if not loader:
                continue
            dataset = loader['dataset']
            while 'pipeline' not in dataset and isinstance(dataset.get('dataset'), dict):
                dataset = dataset['dataset']  # wrappers (RepeatDataset, ClassBalancedDataset)
            loader['dataset'] = dict(type='CustomDataset', data_root=self.data_root, data_prefix=split,
                                     with_label=True, pipeline=dataset.get('pipeline', []))

    def set_loaders(self, d, train_batch=None, persistent=False):
        pin = bool(self.cuda)
        for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            loader = d.get(name)
            if not loader:
                continue
            loader['num_workers'] = self.workers
            loader['persistent_workers'] = bool(persistent and self.workers > 0 and name == 'train_dataloader')
            loader['pin_memory'] = pin
            if name == 'train_dataloader' and train_batch:
                loader['batch_size'] = train_batch
            if name == 'test_dataloader':
                loader['batch_size'] = self.scale['eval']['batch_size']
        d['test_evaluator'] = dict(type='Accuracy', topk=(1, ))
        d['test_cfg'] = d.get('test_cfg') or dict()
        d['val_dataloader'] = d['val_evaluator'] = d['val_cfg'] = None
        d.pop('auto_scale_lr', None)

    def image_size(self, t):
        if self.args.image_size:
            return self.args.image_size
        d = self.teacher_cfg(t)
        size = infer_image_size(d)
        if size is None:
            raise RuntimeError(f'cannot tell the input size of teacher {t}; give --image-size')
        return size

    def synthetic_workers(self, t):
        """Small synthetic images (CIFAR-sized) decode faster in the main process than worker
        processes restart at every pass over the set; larger ones get up to 4 workers."""
        return 0 if self.image_size(t) <= 64 else min(self.workers, 4)

    def synthesis_cfg(self, t, synth):
        s, common = self.scale['synthesis'], self.recipe['synthesis_common']
        n = dict(noise=s['noise_images'], psaq=s['psaq_images']).get(synth, s['num_images'])
        return dict(method=synth, num_images=int(n), batch_size=int(min(s['batch_size'], n)), steps=int(s['steps']),
                    num_classes=config_num_classes(self.teacher_cfg(t)),
                    lr=common['lr'], alpha=common['alpha'], beta=common['beta'], ihc=common['ihc'],
                    seed=common['seed'], image_size=self.image_size(t), amp_dtype=s.get('amp_dtype'),
                    log_interval=s.get('log_interval', 200), out_dir=self.synth_dir(t, synth))

    def dfq_cfg(self, t, method, bits, seed, work_dir):
        """The QuantDistiller + DataFreeQATLoop config of one unit, built on the teacher config."""
        m = self.methods_all[method]
        ft, ptq = self.scale['finetune'], self.scale['ptq']
        w_bits, a_bits = parse_bits(bits)
        d = self.teacher_cfg(t)
        arch = copy.deepcopy(d['model'])
        if m['finetune'] and ft.get('drop_path_rate') is not None:
            set_drop_path(arch, ft['drop_path_rate'])
        synthetic = m['data'] == 'synthetic'
        d['model'] = dict(
            type='mimiq_mm.QuantDistiller', architecture=arch,
            teacher_checkpoint=osp.abspath(self.teacher_checkpoint(t)),
            quant=dict(w_bits=w_bits, a_bits=a_bits,
                       act_method=ft['act_method'] if m['finetune'] else ptq['act_method']),
            kd=dict(temperature=ft['kd_temperature'], loss_weight=1.0),
            had=dict(metric='dssim', loss_weight=ft['had_gamma']) if m['had'] else None,
            augment=ft.get('augment') if (m['finetune'] and synthetic) else None)
        if synthetic:
            synthesis = self.synthesis_cfg(t, m['synthesis'])
        else:
            synthesis = dict(image_size=self.image_size(t), num_images=ft['iters'] * ft['batch_size'])
        if m['finetune']:
            batch, iters, calib = ft['batch_size'], int(ft['iters']), int(ft['calibration_batches'])
        else:
            batch, iters = ptq['batch_size'], 0
            calib = math.ceil(synthesis['num_images'] / batch)
        d['train_cfg'] = dict(type='mimiq_mm.DataFreeQATLoop', data_source='synthetic' if synthetic else 'real',
                              synthesis=synthesis, batch_size=batch, max_iters=iters, calibration_batches=calib,
                              num_workers=self.synthetic_workers(t) if synthetic else self.workers,
                              val_interval=10 ** 9)
        d['optim_wrapper'] = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=ft['lr'], momentum=0.9,
                                                                        nesterov=True, weight_decay=0.0))
        if iters == 0:
            d['param_scheduler'] = None
        elif ft.get('schedule') == 'paper':
            d['param_scheduler'] = [dict(type='MultiStepLR', by_epoch=False, milestones=list(ft['milestones']),
                                         gamma=0.1)]
        else:
            d['param_scheduler'] = [dict(type='CosineAnnealingLR', by_epoch=False, begin=0, end=iters, T_max=iters,
                                         eta_min=ft['lr'] * 0.01)]
        hooks = dict(d.get('default_hooks') or {})
        hooks['checkpoint'] = dict(type='CheckpointHook', by_epoch=False,
                                   interval=int(ft.get('checkpoint_interval', 1000)), max_keep_ckpts=1,
                                   save_last=False)
        hooks['logger'] = dict(type='LoggerHook', interval=max(1, min(50, iters // 5 or 1)))
        d['default_hooks'] = hooks
        d['log_processor'] = dict(by_epoch=False)
        d['custom_hooks'] = [dict(type='mimiq_mm.StudentExportHook')]
        d['randomness'] = dict(seed=int(seed), deterministic=False)
        self.set_loaders(d, train_batch=batch)
        d['work_dir'] = work_dir
        d['load_from'], d['resume'] = None, False
        return d

    # ----------------------------------------------------------------- settings (what a result depends on)
    def settings(self, u):
        if u.kind == 'teacher':
            spec = self.teachers[u.teacher]
            if spec['checkpoint']:
                return dict(external_checkpoint_sha256=file_sha256(spec['checkpoint']))
            ts = self.scale['teacher']
            return dict(config=spec['config'], cfg_options=spec['cfg_options'], epochs=ts['epochs'],
                        warmup_epochs=ts['warmup_epochs'], batch_size=ts['batch_size'], lr=ts['lr'],
                        weight_decay=ts['weight_decay'], seed=0, train_split=self.args.train_split)
        teacher_sha = file_sha256(self.teacher_checkpoint(u.teacher))
        if u.kind == 'synth':
            s = self.synthesis_cfg(u.teacher, u.synth)
            s.pop('out_dir'), s.pop('log_interval')
            return dict(teacher_sha256=teacher_sha, synthesis=s)
        if u.kind == 'eval' and u.method is None:
            return dict(teacher_sha256=teacher_sha, test_split=self.args.test_split)
        m = self.methods_all[u.method]
        q = dict(teacher_sha256=teacher_sha, method=m, bits=u.bits, seed=u.seed)
        if m['data'] == 'synthetic':
            q['synthetic_set'] = fingerprint(self.settings(Unit('synth', '', u.teacher, synth=m['synthesis'])))
        if m['finetune']:
            q['finetune'] = {k: v for k, v in self.scale['finetune'].items() if k not in ('checkpoint_interval', )}
        else:
            q['ptq'] = self.scale['ptq']
        if u.kind == 'quant':
            return q
        return dict(quant=fingerprint(q), test_split=self.args.test_split)

    def status(self, u, deps=True):
        """'done' (its output exists, made with the current settings), else 'blocked' when a
        dependency is not done, else 'stale' (done with other settings) or 'todo'."""
        own = self._own_status(u)
        if own == 'done' or not deps:
            return own
        if any(self.status(dep) != 'done' for dep in u.deps):
            return 'blocked'
        return own

    def _own_status(self, u):
        rec = read_json(self.record_path(u))
        if rec is None or not rec.get('complete', True):
            return 'todo'
        if u.kind == 'synth' and not osp.isfile(osp.join(self.unit_dir(u), 'manifest.json')):
            return 'todo'  # the record came back in a pack without the images: make the set again
        return 'done' if rec.get('settings_hash') == fingerprint(self.settings(u)) else 'stale'

    # ----------------------------------------------------------------- plan
    def plan(self):
        units = []
        for t in self.teachers:
            teacher = Unit('teacher', f'{t}/teacher', t)
            units += [teacher, Unit('eval', f'{t}/teacher', t, deps=[teacher])]
            synth_units = {}
            for method in self.methods:
                m = self.methods_all[method]
                if m['data'] == 'synthetic' and m['synthesis'] not in synth_units:
                    synth_units[m['synthesis']] = Unit('synth', f'{t}/synth/{m["synthesis"]}', t, synth=m['synthesis'],
                                                       deps=[teacher])
            units += list(synth_units.values())
            # seed-major: every method and bit-width of seed 0 before seed 1, so a run cut by the
            # time budget leaves complete rows behind
            for seed in self.seeds:
                for bits in self.bits:
                    for method in self.methods:
                        m = self.methods_all[method]
                        deps = [teacher] + ([synth_units[m['synthesis']]] if m['data'] == 'synthetic' else [])
                        key = f'{t}/{method}/{bits}/s{seed}'
                        quant = Unit('quant', key, t, method=method, bits=bits, seed=seed, deps=deps)
                        units += [quant, Unit('eval', key, t, method=method, bits=bits, seed=seed, deps=[quant])]
        return units

    def selected(self, u):
        if u.kind not in self.stages:
            return False
        if not self.only:
            return True
        return any(fnmatch.fnmatch(u.key, p) or fnmatch.fnmatch(u.key, p.rstrip('/') + '/*') for p in self.only)

    # ----------------------------------------------------------------- time budget
    def estimate(self, u):
        timings = self.meta.get('timings', {})
        keys = [f'{u.kind}/{u.teacher}/{u.method or u.synth or ""}', f'{u.kind}/{u.teacher}', u.kind]
        for key in keys:
            vals = timings.get(key)
            if vals:
                return statistics.median(vals)
        est = float(self.scale.get('estimates', {}).get(u.kind, 60))
        if u.kind == 'teacher' and self.scale['teacher'].get('max_seconds'):
            est = float(self.scale['teacher']['max_seconds']) + 20
        return est

    def fits(self, u):
        if self.deadline is None:
            return True
        left = self.deadline - time.time()
        need = self.estimate(u)
        if u.kind == 'synth':
            need *= 0.25  # made batch by batch, resumable: a part is progress
        if u.kind == 'teacher' and self.teachers[u.teacher]['checkpoint']:
            need = 0
        return left >= need

    # ----------------------------------------------------------------- execution
    def execute(self, units):
        runners = {}  # key -> live runner of a quant/teacher unit, for its eval right after
        for u in units:
            for key in [k for k in runners if k != u.key]:
                runners.pop(key)  # a runner is kept only for the eval unit that follows it
            if not self.selected(u):
                continue
            st = self.status(u)
            if st == 'done':
                self.log(f'skipped {u.name}: done')
                self.counts['skipped'].append(u.name)
                continue
            if u.kind == 'synth' and not any(q.kind == 'quant' and u in q.deps and self.status(q, deps=False) != 'done'
                                             for q in units):
                self.log(f'skipped {u.name}: every unit that uses this set is done')
                self.counts['skipped'].append(u.name)
                continue
            if st == 'blocked':
                missing = [d.name for d in u.deps if self.status(d) != 'done']
                self.log(f'blocked {u.name}: needs {", ".join(missing)}')
                self.counts['blocked'].append(u.name)
                continue
            if not self.fits(u):
                self.log(f'deferred {u.name}: about {fmt_seconds(self.estimate(u))} needed, '
                         f'{fmt_seconds(max(0, self.deadline - time.time()))} left in the time budget')
                self.counts['deferred'].append(u.name)
                continue
            if st == 'stale':
                self.log(f'{u.name}: settings changed since it was done; redoing it')
                self.clear(u)
            self.claim(u)
            self.log(f'running {u.name}')
            t0 = time.time()
            try:
                result = getattr(self, f'run_{u.kind}')(u, runners)
            except Exception as err:  # noqa: BLE001
                runners.pop(u.key, None)
                tb = traceback.format_exc()
                os.makedirs(self.unit_dir(u), exist_ok=True)
                with open(osp.join(self.unit_dir(u), f'error_{u.kind}.txt'), 'w') as f:
                    f.write(tb)
                self.log(f'FAILED {u.name}: {type(err).__name__}: {err}')
                print(tb, file=sys.stderr, flush=True)
                self.counts['failed'].append(u.name)
                if self.args.fail_fast:
                    raise
                free_memory()
                continue
            seconds = time.time() - t0
            if result == 'partial':
                self.counts['partial'].append(u.name)
                self.log(f'stopped {u.name} at the time budget after {fmt_seconds(seconds)} (resumable)')
            else:
                self.counts['ran'].append(u.name)
                self.add_timing(f'{u.kind}/{u.teacher}/{u.method or u.synth or ""}', seconds)
                self.log(f'finished {u.name} in {fmt_seconds(seconds)}')
            if u.kind == 'eval':
                runners.pop(u.key, None)
                free_memory()
                self.report(quiet=True)
            elif u.kind == 'synth':
                free_memory()
        runners.clear()
        free_memory()

    def claim(self, u):
        """Mark the unit's folder with the settings it is run with; partial output (synthetic
        batches, resume checkpoints) left by a run with other settings is removed, not resumed."""
        if u.kind == 'eval':
            return
        path = osp.join(self.unit_dir(u), 'unit_settings.json')
        current = fingerprint(self.settings(u))
        previous = (read_json(path) or {}).get('settings_hash')
        if previous and previous != current:
            self.log(f'{u.name}: partial output from a run with other settings; starting over')
            self.clear(u)
        write_json(path, dict(settings_hash=current, settings=jsonable(self.settings(u))))

    def clear(self, u):
        path = self.record_path(u)
        if u.kind == 'eval':
            if osp.isfile(path):
                os.remove(path)
            return
        folder = self.unit_dir(u)
        if u.kind == 'teacher':
            for p in glob.glob(osp.join(folder, '*.pth')) + [osp.join(folder, RECORD), osp.join(folder, EVAL_RECORD),
                                                               osp.join(folder, 'shrink.json')]:
                if osp.isfile(p):
                    os.remove(p)
        elif osp.isdir(folder):
            shutil.rmtree(folder)

    def build_runner(self, d, tag):
        from mmengine.config import Config
        from mmengine.runner import Runner
        self._runner_count += 1
        d['experiment_name'] = f'{tag.replace("/", "-")}_{time.strftime("%Y%m%d_%H%M%S")}_{self._runner_count}'
        cfg = Config(d)
        os.makedirs(d['work_dir'], exist_ok=True)
        cfg.dump(osp.join(d['work_dir'], 'config.py'))
        return Runner.from_cfg(cfg)

    def unit_record(self, u, seconds, **extra):
        rec = dict(kind=u.kind, key=u.key, teacher=u.teacher, complete=True, settings=jsonable(self.settings(u)),
                   settings_hash=fingerprint(self.settings(u)), seconds=round(seconds, 2), finished=now_iso(),
                   device=self.invocation['device'], invocation=self.invocation['command'], scale=self.scale_name)
        rec.update(extra)
        return rec

    # teacher -------------------------------------------------------------------------------
    def run_teacher(self, u, runners):
        t = u.teacher
        spec = self.teachers[t]
        folder = self.teacher_dir(t)
        os.makedirs(folder, exist_ok=True)
        if spec['checkpoint']:
            if not osp.isfile(spec['checkpoint']):
                raise FileNotFoundError(f'--teacher-checkpoint {spec["checkpoint"]} not found')
            write_json(self.record_path(u), self.unit_record(u, 0.0, external=True, checkpoint=spec['checkpoint'],
                                                             config=spec['config']))
            return 'done'
        self.need_data('training the teacher')
        import torch
        TeacherBudgetHook, _ = make_hooks()
        ts = self.scale['teacher']
        d = self.teacher_cfg(t)
        epochs, warmup = int(ts['epochs']), int(ts['warmup_epochs'])
        d['work_dir'] = folder
        d['train_cfg'] = dict(by_epoch=True, max_epochs=epochs)
        ow = dict(d.get('optim_wrapper') or {})
        ow['optimizer'] = dict(type='AdamW', lr=ts['lr'], weight_decay=ts['weight_decay'], betas=(0.9, 0.999))
        if self.cuda:
            ow.update(type='AmpOptimWrapper', dtype='bfloat16')
        else:
            ow['type'] = 'OptimWrapper'
            ow.pop('dtype', None), ow.pop('loss_scale', None)
        d['optim_wrapper'] = ow
        sched = []
        if warmup > 0:
            sched.append(dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=warmup,
                              convert_to_iter_based=True))
        sched.append(dict(type='CosineAnnealingLR', by_epoch=True, begin=warmup, end=epochs,
                          T_max=max(1, epochs - warmup), eta_min=1e-5, convert_to_iter_based=True))
        d['param_scheduler'] = sched
        hooks = dict(d.get('default_hooks') or {})
        hooks['checkpoint'] = dict(type='CheckpointHook', interval=1, max_keep_ckpts=1, save_last=True)
        hooks['logger'] = dict(type='LoggerHook', interval=50)
        d['default_hooks'] = hooks
        d['randomness'] = dict(seed=0, deterministic=False)
        self.set_loaders(d, train_batch=int(ts['batch_size']), persistent=True)
        resume_from = latest_checkpoint(folder, 'epoch')
        d['load_from'], d['resume'] = (resume_from, True) if resume_from else (None, False)
        if resume_from:
            self.log(f'teacher {t}: resuming from {osp.basename(resume_from)}')
        runner = self.build_runner(d, f'teacher-{t}')
        hook = TeacherBudgetHook(ts.get('max_seconds'), self.deadline, self.log, osp.join(folder, 'shrink.json'))
        runner.register_hook(hook, priority='LOWEST')
        t0 = time.time()
        runner.train()
        seconds = time.time() - t0
        loop = runner.train_loop
        if loop.epoch < loop.max_epochs:
            return 'partial'
        model = getattr(runner.model, 'module', runner.model)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        n_train = count_images(osp.join(self.data_root, self.args.train_split))
        info = dict(config=spec['config'], epochs_requested=epochs, epochs_trained=int(loop.max_epochs),
                    shrunk_to_fit=hook.shrunk_to is not None, train_seconds=round(seconds, 1),
                    num_classes=self.num_classes_of_teacher(t), train_images=n_train,
                    params=sum(p.numel() for p in model.parameters()), amp=bool(self.cuda))
        torch.save(dict(state_dict=state, meta=dict(info, mimiq_benchmark_teacher=True)),
                   osp.join(folder, 'teacher.pth'))
        for p in glob.glob(osp.join(folder, 'epoch_*.pth')):
            os.remove(p)  # the resume checkpoints are not needed any more
        write_json(self.record_path(u), self.unit_record(u, seconds, checkpoint='teacher.pth', **info))
        runners[u.key] = runner
        return 'done'

    # synthesis -----------------------------------------------------------------------------
    def run_synth(self, u, runners):
        from mimiq_mm.synthesis import SyntheticSet
        t, synth = u.teacher, u.synth
        method = next(k for k, m in self.methods_all.items() if m.get('synthesis') == synth)
        folder = self.synth_dir(t, synth)
        os.makedirs(folder, exist_ok=True)
        ckpt = osp.abspath(self.teacher_checkpoint(t))
        rebase_synthetic_set(folder, ckpt, file_sha256(ckpt))
        d = self.dfq_cfg(t, method, 'w8a8', 0, osp.join(folder, 'runner'))
        d['model']['had'] = None
        runner = self.build_runner(d, f'synth-{t}-{synth}')
        runner._init_model_weights()  # loads the teacher checkpoint
        loop = runner.train_loop
        size = loop.image_size()
        loop.check_image_size(size)
        sset = SyntheticSet(loop.synthetic_root(), loop.synthetic_settings())
        progress_path = osp.join(folder, 'progress.json')
        progress = read_json(progress_path) or dict(seconds=0.0)
        t0 = time.time()
        if not sset.is_complete():
            distiller = loop.distiller
            num_classes = loop.synthesis['num_classes'] or distiller.task.num_classes(distiller.teacher)
            synthesizer = loop.build_synthesizer()
            pending = sset.pending_batches()
            per_batch = None
            for i, batch in enumerate(pending):
                if self.deadline and per_batch and time.time() + per_batch > self.deadline:
                    progress['seconds'] += time.time() - t0
                    write_json(progress_path, progress)
                    self.log(f'synthesis {t}/{synth}: {i}/{len(pending)} pending batches made before the time budget; '
                             'resumes on the next invocation')
                    return 'partial'
                tb = time.time()
                targets = sset.batch_targets(batch, num_classes)
                seed = int(sset.settings['base_seed']) + batch
                images, losses = synthesizer.synthesize(
                    targets, seed=seed, log_prefix=f'synthesis [{synth}] batch {batch + 1}/{sset.num_batches}: ')
                sset.write_batch(batch, synthesizer.to_pixels(images), targets, losses, seconds=time.time() - tb)
                per_batch = time.time() - tb
                self.log(f'synthesis {t}/{synth}: batch {batch + 1}/{sset.num_batches} in {per_batch:.1f} s')
            sset.merge()
        seconds = time.time() - t0 + progress.get('seconds', 0.0)
        s = self.synthesis_cfg(t, synth)
        write_json(self.record_path(u), self.unit_record(
            u, seconds, num_images=s['num_images'], steps=s['steps'] if synth != 'noise' else 0,
            batch_size=s['batch_size'], image_size=size, num_classes=int(
                loop.synthesis['num_classes'] or loop.distiller.task.num_classes(loop.distiller.teacher))))
        shutil.rmtree(osp.join(folder, 'runner'), ignore_errors=True)
        return 'done'

    # quantization ----------------------------------------------------------------------------
    def run_quant(self, u, runners):
        _, DeadlineHook = make_hooks()
        m = self.methods_all[u.method]
        folder = self.unit_dir(u)
        os.makedirs(folder, exist_ok=True)
        if m['data'] == 'real':
            self.need_data('real-data fine-tuning')
        ckpt = osp.abspath(self.teacher_checkpoint(u.teacher))
        if m['data'] == 'synthetic':
            rebase_synthetic_set(self.synth_dir(u.teacher, m['synthesis']), ckpt, file_sha256(ckpt))
        d = self.dfq_cfg(u.teacher, u.method, u.bits, u.seed, folder)
        resume_from = latest_checkpoint(folder, 'iter')
        if resume_from:
            d['load_from'], d['resume'] = resume_from, True
            self.log(f'{u.key}: resuming from {osp.basename(resume_from)}')
        runner = self.build_runner(d, f'quant-{u.key}')
        hook = DeadlineHook(self.deadline, self.log)
        runner.register_hook(hook, priority='LOWEST')
        t0 = time.time()
        runner.train()
        seconds = time.time() - t0
        if hook.stopped:
            return 'partial'
        w, a = parse_bits(u.bits)
        student = osp.join(folder, f'student_w{w}a{a}.pth')
        for p in glob.glob(osp.join(folder, 'iter_*.pth')):
            os.remove(p)  # resume checkpoints (teacher + student + optimizer) are not needed any more
        tc = d['train_cfg']
        info = dict(method=u.method, label=m['label'], bits=u.bits, w_bits=w, a_bits=a, seed=u.seed,
                    data=m['data'], finetune=m['finetune'], had=m['had'], iters=tc['max_iters'],
                    batch_size=tc['batch_size'], act_method=d['model']['quant']['act_method'],
                    student=osp.basename(student), config='config.py',
                    equivalent_command=f'python tools/train.py {osp.relpath(osp.join(folder, "config.py"), self.work)} '
                                       f'--work-dir {osp.relpath(folder, self.work)}  (paths relative to the work dir)')
        if m['data'] == 'synthetic':
            info['synthetic_set'] = dict(method=m['synthesis'], num_images=tc['synthesis']['num_images'],
                                         steps=tc['synthesis']['steps'],
                                         folder=osp.relpath(self.synth_dir(u.teacher, m['synthesis']), self.work))
        write_json(self.record_path(u), self.unit_record(u, seconds, **info))
        runners[u.key] = runner
        return 'done'

    # evaluation ------------------------------------------------------------------------------
    def run_eval(self, u, runners):
        self.need_data('evaluation')
        runner = runners.pop(u.key, None)
        teacher_eval = u.method is None
        if runner is None:  # not trained in this invocation: load the saved weights
            if teacher_eval:
                d = self.teacher_cfg(u.teacher)
                d['work_dir'] = osp.join(self.teacher_dir(u.teacher), 'eval')
                for key in ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler'):
                    d[key] = None
                self.set_loaders(d)
                d['load_from'] = osp.abspath(self.teacher_checkpoint(u.teacher))
            else:
                folder = self.unit_dir(u)
                w, a = parse_bits(u.bits)
                d = self.dfq_cfg(u.teacher, u.method, u.bits, u.seed, osp.join(folder, 'eval'))
                for key in ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler'):
                    d[key] = None
                d['custom_hooks'] = []
                d['load_from'] = osp.join(folder, f'student_w{w}a{a}.pth')
            d['resume'] = False
            runner = self.build_runner(d, f'eval-{u.key}')
        t0 = time.time()
        metrics = runner.test()
        seconds = time.time() - t0
        top1 = float(metrics['accuracy/top1'])
        n_test = len(runner.test_dataloader.dataset)
        extra = dict(top1=top1, test_images=n_test, metrics={k: float(v) for k, v in metrics.items()})
        if teacher_eval:
            rec = read_json(osp.join(self.teacher_dir(u.teacher), RECORD)) or {}
            extra.update(label=self.teachers[u.teacher]['label'], method='fp', train=dict(
                {k: rec.get(k) for k in ('epochs_requested', 'epochs_trained', 'shrunk_to_fit', 'train_seconds',
                                         'params', 'external', 'checkpoint', 'device', 'num_classes', 'train_images')}))
        else:
            rec = read_json(osp.join(self.unit_dir(u), RECORD)) or {}
            extra.update({k: rec.get(k) for k in ('method', 'label', 'bits', 'w_bits', 'a_bits', 'seed', 'data',
                                                   'finetune', 'had', 'iters', 'batch_size', 'act_method',
                                                   'synthetic_set', 'equivalent_command')})
            extra['quant_seconds'] = rec.get('seconds')
            extra['quant_device'] = rec.get('device')
        self.log(f'{u.key}: top-1 {top1:.2f} on {n_test} test images')
        write_json(self.record_path(u), self.unit_record(u, seconds, **extra))
        return 'done'

    # ----------------------------------------------------------------- report
    def collect(self):
        """Every finished result in the work dir (this selection or not)."""
        teachers, results, synth = {}, [], {}
        for path in sorted(glob.glob(osp.join(self.work, '*', 'teacher', EVAL_RECORD))):
            rec = read_json(path)
            if rec and rec.get('top1') is not None:
                teachers[rec['teacher']] = rec
        for path in sorted(glob.glob(osp.join(self.work, '*', 'runs', '*', EVAL_RECORD))):
            rec = read_json(path)
            if rec and rec.get('top1') is not None:
                results.append(rec)
        for path in sorted(glob.glob(osp.join(self.work, '*', 'synthetic', '*', RECORD))):
            rec = read_json(path)
            if rec:
                synth[rec['key']] = dict(seconds=rec.get('seconds'), num_images=rec.get('num_images'),
                                         steps=rec.get('steps'), batch_size=rec.get('batch_size'),
                                         device=device_words(rec.get('device')))
        return teachers, results, synth

    def summarise(self, results):
        summary = {}
        for rec in results:
            cell = summary.setdefault(rec['teacher'], {}).setdefault(rec['method'], {}).setdefault(
                rec['bits'], dict(values=[], seeds=[]))
            cell['values'].append(rec['top1'])
            cell['seeds'].append(rec['seed'])
        for t in summary.values():
            for m in t.values():
                for cell in m.values():
                    v = cell['values']
                    cell.update(n=len(v), mean=statistics.mean(v), std=statistics.stdev(v) if len(v) > 1 else None,
                                min=min(v), max=max(v))
        return summary

    def checks(self, teachers, summary):
        """The paper's expectations, checked on the measured figures."""
        out = []

        def mean(t, method, bits):
            cell = summary.get(t, {}).get(method, {}).get(bits)
            return cell['mean'] if cell else None

        def add(t, bits, text, ok, detail):
            status = 'n/a' if ok is None else ('pass' if ok else 'FAIL')
            out.append(dict(teacher=t, bits=bits, check=text, status=status, detail=detail))

        for t in summary:
            for bits in ('w3a3', 'w2a4'):
                mq, rf = mean(t, 'mimiq', bits), mean(t, 'real_ft', bits)
                add(t, bits, 'MimiQ within 5 points of real-data FT', None if None in (mq, rf) else rf - mq <= 5,
                    f'MimiQ {fmt(mq)}, real-data FT {fmt(rf)}')
                for base in ('psaq', 'noise_ptq'):
                    b = mean(t, base, bits)
                    add(t, bits, f'MimiQ at least 15 points above {self.methods_all[base]["label"]}',
                        None if None in (mq, b) else mq - b >= 15, f'MimiQ {fmt(mq)}, {base} {fmt(b)}')
                order = ['real_ft', 'mimiq', 'ihc', 'base', 'psaq']
                vals = [mean(t, m, bits) for m in order]
                if all(v is not None for v in vals):
                    ok = all(vals[i] >= vals[i + 1] for i in range(len(vals) - 1))
                else:
                    ok = None
                add(t, bits, 'ordering real-data FT > MimiQ > IHC w/o HAD > base > PSAQ', ok,
                    ', '.join(f'{m} {fmt(v)}' for m, v in zip(order, vals)))
            fp = teachers.get(t, {}).get('top1')
            mq = mean(t, 'mimiq', 'w4a4')
            add(t, 'w4a4', 'MimiQ within 2 points of the FP teacher', None if None in (mq, fp) else fp - mq <= 2,
                f'MimiQ {fmt(mq)}, FP {fmt(fp)}')
            nz = mean(t, 'noise_ptq', 'w3a3')
            add(t, 'w3a3', 'Gaussian-noise PTQ collapses at 3 bits (below 30 % top-1)',
                None if nz is None else nz < 30, f'noise PTQ {fmt(nz)}')
        return out

    def report(self, quiet=False):
        self.invocation['seconds'] = round(time.time() - self.t_start, 1)  # so far
        self.save_meta()
        teachers, results, synth = self.collect()
        summary = self.summarise(results)
        checks = self.checks(teachers, summary)
        methods = [m for m in self.methods_all if m in self.methods or any(m in s for s in summary.values())]
        bit_order = self.recipe['all_bits']
        bits_seen = {r['bits'] for r in results}
        bits = [b for b in bit_order if b in self.bits or b in bits_seen] + sorted(
            (set(self.bits) | bits_seen) - set(bit_order))
        teacher_names = list(dict.fromkeys(list(self.teachers) + list(teachers) + list(summary)))
        planned = [u for u in self.plan() if u.kind == 'eval' and u.method]
        missing = [u.key for u in planned if not osp.isfile(self.record_path(u))]
        invocations = self.meta.get('invocations', [])
        data = dict(
            benchmark=self.name, scale=self.scale_name, scale_description=self.scale.get('description'),
            scale_settings=jsonable(self.scale), scale_overrides=self.overrides,
            recipe=osp.relpath(self.recipe_path, ROOT),
            data_root=self.meta.get('data_root'), measured=bool(results or teachers), complete=not missing,
            missing=missing, generated=now_iso(), work_dir=self.work,
            teachers={t: dict(top1=r['top1'], label=r.get('label'), **(r.get('train') or {}),
                              eval_device=r.get('device')) for t, r in teachers.items()},
            methods={m: self.methods_all[m] for m in methods}, bits=bits, seeds=sorted({r['seed'] for r in results}),
            summary=summary, results=results, synthetic_sets=synth, checks=checks,
            invocations=invocations, timings=self.meta.get('timings', {}))
        write_json(osp.join(self.work, 'results.json'), data)
        md = self.markdown(data, teacher_names, methods, bits)
        with open(osp.join(self.work, 'results.md'), 'w') as f:
            f.write(md)
        if not quiet:
            print(md, flush=True)
            self.log(f'wrote {osp.join(self.work, "results.md")} and results.json')
        if self.args.out:
            os.makedirs(self.args.out, exist_ok=True)
            for name in ('results.md', 'results.json'):
                shutil.copy(osp.join(self.work, name), osp.join(self.args.out, name))
        return data

    def markdown(self, data, teacher_names, methods, bits):
        lines = [f'# Data-free quantization benchmark: {self.name}', '']
        lines.append(f'- Scale preset: **`{self.scale_name}`** — {data["scale_description"]}'
                     + (f' (overrides: {data["scale_overrides"]})' if data['scale_overrides'] else ''))
        lines.append(f'- Data: `{data["data_root"]}`; teachers are trained on the train split only; every method but '
                     'real-data FT quantizes without reading a train image; top-1 (%) on the test split.')
        devices = sorted({device_words(i.get('device')) for i in data['invocations']})
        lines.append(f'- Device(s): {"; ".join(devices)}')
        status = 'complete' if data['complete'] else f'incomplete, {len(data["missing"])} units missing'
        lines.append(f'- Status: {status}; generated {data["generated"]}')
        lines.append('')
        for t in teacher_names:
            fp = data['teachers'].get(t, {})
            label = self.teachers.get(t, {}).get('label') or fp.get('label') or t
            lines.append(f'## Teacher `{t}`: {label}')
            lines.append('')
            if fp:
                extra = ', shortened to fit the time budget' if fp.get('shrunk_to_fit') else ''
                if fp.get('params'):
                    extra += f', {fp["params"] / 1e6:.2f} M parameters'
                lines.append(f'Full-precision top-1 **{fp["top1"]:.2f}** ({fp.get("epochs_trained") or "given"} '
                             f'epochs, {fmt_seconds(fp.get("train_seconds"))} training{extra}).')
                lines.append('')
            lines.append('| Method | ' + ' | '.join(bits_label(b) for b in bits) + ' |')
            lines.append('|---|' + '---|' * len(bits))
            if fp:
                lines.append('| FP teacher | ' + ' | '.join(f'{fp["top1"]:.2f}' for _ in bits) + ' |')
            for m in methods:
                cells = []
                for b in bits:
                    cell = data['summary'].get(t, {}).get(m, {}).get(b)
                    if not cell:
                        cells.append('—')
                    elif cell['n'] == 1:
                        cells.append(f'{cell["mean"]:.2f} (1 seed)')
                    else:
                        cells.append(f'{cell["mean"]:.2f} ± {cell["std"]:.2f} (n={cell["n"]}, '
                                     f'{cell["min"]:.2f}–{cell["max"]:.2f})')
                lines.append(f'| {self.methods_all[m]["label"]} | ' + ' | '.join(cells) + ' |')
            lines.append('')
        lines.append('Cells: mean ± sample standard deviation over seeds (n, min–max); per-seed values are in '
                     'results.json. Seeds vary fine-tuning / calibration order; each synthetic set is made once per '
                     'teacher (synthesis seed fixed). "—": not run yet.')
        lines.append('')
        if data['checks']:
            lines.append("## Checks against the paper's expectations")
            lines.append('')
            for c in data['checks']:
                lines.append(f'- [{c["status"]}] `{c["teacher"]}` {bits_label(c["bits"])}: {c["check"]} '
                             f'({c["detail"]})')
            lines.append('')
        if data['synthetic_sets']:
            lines.append('## Synthetic sets (one per teacher and synthesis method, shared by all bit-widths and seeds)')
            lines.append('')
            lines.append('| set | images | steps | batch | time | device |')
            lines.append('|---|---|---|---|---|---|')
            for key, s in data['synthetic_sets'].items():
                lines.append(f'| {key} | {s["num_images"]} | {s["steps"]} | {s["batch_size"]} | '
                             f'{fmt_seconds(s["seconds"])} | {s["device"]} |')
            lines.append('')
        lines.append('## Wall times per stage')
        lines.append('')
        lines.append('| stage | units | total | median |')
        lines.append('|---|---|---|---|')
        for key, vals in sorted(data['timings'].items()):
            lines.append(f'| {key.rstrip("/")} | {len(vals)} | {fmt_seconds(sum(vals))} | '
                         f'{fmt_seconds(statistics.median(vals))} |')
        lines.append('')
        lines.append('## Command lines')
        lines.append('')
        for inv in data['invocations']:
            lines.append(f'- `{inv["command"]}` — {inv.get("started")}, {fmt_seconds(inv.get("seconds"))}, '
                         f'{device_words(inv.get("device"))}'
                         + (f', ran {inv.get("ran")}, skipped {inv.get("skipped")}, deferred {inv.get("deferred")}, '
                            f'failed {inv.get("failed")}' if 'ran' in inv else ''))
        lines.append('')
        return '\n'.join(lines)

    # ----------------------------------------------------------------- pack / restore
    def pack(self, out_dir):
        """A compact tar.gz of the work dir (in <=15 MiB parts) to carry it to a fresh machine:
        records, logs, configs and teacher.pth; synthetic sets per --pack-synthetic; never the
        resume or student checkpoints (except the epoch checkpoint of an unfinished teacher)."""
        os.makedirs(out_dir, exist_ok=True)
        policy = self.args.pack_synthetic
        keep_sets = set()
        if policy == 'needed':
            for u in self.plan():
                if u.kind == 'quant' and self.status(u) != 'done':
                    m = self.methods_all[u.method]
                    if m['data'] == 'synthetic':
                        keep_sets.add(osp.relpath(self.synth_dir(u.teacher, m['synthesis']), self.work))
        buf = io.BytesIO()
        added = 0
        with tarfile.open(fileobj=buf, mode='w:gz') as tar:
            for root, dirs, files in os.walk(self.work):
                dirs.sort()
                rel_root = osp.relpath(root, self.work)
                parts = [] if rel_root == '.' else rel_root.split(os.sep)
                if len(parts) >= 3 and parts[1] == 'synthetic':  # <teacher>/synthetic/<set>[/images]
                    set_rel = osp.join(*parts[:3])
                    if policy == 'none' or (policy == 'needed' and set_rel not in keep_sets):
                        dirs[:] = []  # keep the record (for the report), leave the images behind
                        files = [f for f in files if f == RECORD]
                for f in files:
                    path = osp.join(root, f)
                    if f.endswith('.pth'):
                        teacher_resume = parts[-1:] == ['teacher'] and f.startswith('epoch_') and not osp.isfile(
                            osp.join(root, 'teacher.pth'))
                        if f != 'teacher.pth' and not teacher_resume:
                            continue
                    if f.startswith(PACK_NAME):
                        continue
                    tar.add(path, arcname=osp.relpath(path, self.work))
                    added += 1
        blob = buf.getvalue()
        for old in glob.glob(osp.join(out_dir, PACK_NAME + '.part*')):
            os.remove(old)
        n_parts = max(1, math.ceil(len(blob) / PACK_PART_BYTES))
        for i in range(n_parts):
            with open(osp.join(out_dir, f'{PACK_NAME}.part{i:02d}'), 'wb') as f:
                f.write(blob[i * PACK_PART_BYTES:(i + 1) * PACK_PART_BYTES])
        for name in ('results.md', 'results.json'):
            if osp.isfile(osp.join(self.work, name)):
                shutil.copy(osp.join(self.work, name), osp.join(out_dir, name))
        self.log(f'packed {added} files ({len(blob) / 2 ** 20:.1f} MiB, {n_parts} part(s), synthetic sets: {policy}'
                 f'{" " + str(sorted(keep_sets)) if policy == "needed" else ""}) into {out_dir}')
        if n_parts > 5:
            self.log('warning: more than 5 parts; the device tool brings back at most 8 files of 16 MiB '
                     '(use --pack-synthetic none, or fewer units per command)')


def default_work_dir(args, benchmark_name):
    if args.work_dir:
        return osp.abspath(args.work_dir)
    tag = osp.basename(osp.abspath(args.data_root).rstrip('/')) if args.data_root else benchmark_name
    return osp.join(ROOT, 'work_dirs', 'benchmark', f'{tag}_{args.scale}')


def restore(paths, work):
    """Unpack bench-state.tar.gz.part* (files, or folders holding them) into the work dir."""
    parts = []
    for p in paths:
        if osp.isdir(p):
            parts += sorted(glob.glob(osp.join(p, PACK_NAME + '.part*')))
        elif osp.isfile(p):
            parts.append(p)
    if not parts:
        print(f'[bench] --restore: no {PACK_NAME}.part* in {paths}; starting from the work dir as it is', flush=True)
        return 0
    blob = b''.join(open(p, 'rb').read() for p in sorted(parts))
    os.makedirs(work, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode='r:gz') as tar:
        members = [m for m in tar.getmembers() if not (m.name.startswith('/') or '..' in m.name.split('/'))]
        try:
            tar.extractall(work, members=members, filter='data')
        except TypeError:  # Python without extraction filters
            tar.extractall(work, members=members)
    print(f'[bench] restored {len(members)} files from {len(parts)} part(s) into {work}', flush=True)
    return len(members)


def rebase_synthetic_set(folder, ckpt, sha):
    """A set made from the same teacher file (same sha256) at another path (another machine or
    work dir) is the same set: point its manifests at the current path."""
    for path in glob.glob(osp.join(folder, 'manifest*.json')):
        data = read_json(path)
        if not data:
            continue
        settings = data.get('settings', {})
        if settings.get('teacher_sha256') == sha and settings.get('teacher_checkpoint') != ckpt:
            settings['teacher_checkpoint'] = ckpt
            write_json(path, data)


def fmt(v):
    return '—' if v is None else f'{v:.2f}'


def set_num_classes(d, n):
    model = d.get('model', {})
    if 'num_classes' in model:
        model['num_classes'] = n
    head = model.get('head')
    if isinstance(head, dict) and 'num_classes' in head:
        head['num_classes'] = n
    pre = d.get('data_preprocessor')
    if isinstance(pre, dict):
        pre['num_classes'] = n
    if isinstance(model.get('data_preprocessor'), dict):
        model['data_preprocessor']['num_classes'] = n


def config_num_classes(d):
    """The class count of a classifier config's head (TimmClassifier or ImageClassifier)."""
    model = d.get('model', {})
    head = model.get('head') if isinstance(model.get('head'), dict) else {}
    for holder in (model, head):
        n = holder.get('num_classes')
        if isinstance(n, int) and n > 0:
            return n
    return None


def set_drop_path(arch, rate):
    for holder in (arch, arch.get('backbone') if isinstance(arch.get('backbone'), dict) else None):
        if holder is None:
            continue
        for key in ('drop_path_rate', 'drop_path'):
            if key in holder:
                holder[key] = rate


def infer_image_size(d):
    model = d.get('model', {})
    for holder in (model, model.get('backbone') if isinstance(model.get('backbone'), dict) else {}):
        size = holder.get('img_size')
        if isinstance(size, int):
            return size
        if isinstance(size, (list, tuple)) and size:
            return int(size[0])
    loader = d.get('test_dataloader') or {}
    pipeline = (loader.get('dataset') or {}).get('pipeline') or []
    for step in reversed(pipeline):
        for key in ('crop_size', 'scale', 'size'):
            v = step.get(key)
            if isinstance(v, int):
                return v
            if isinstance(v, (list, tuple)) and v and isinstance(v[0], int) and step['type'] != 'ResizeEdge':
                return int(v[0])
    return None


# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group('data and work dir')
    g.add_argument('--data-root', help='ImageFolder with <train-split>/<class>/<image> and <test-split>/<class>/<image>'
                   ' (e.g. /tmp/cifar10 from cifar10-jpeg.tar.gz)')
    g.add_argument('--train-split', default='train')
    g.add_argument('--test-split', default='test')
    g.add_argument('--work-dir', help='where every stage saves its output (default: '
                   'work_dirs/benchmark/<data folder name>_<scale>)')
    g = p.add_argument_group('what to run')
    g.add_argument('--scale', default='gpu-30min', help='scale preset of the benchmark config: smoke | cpu-2core | '
                   'gpu-30min | paper (sizes of the teacher training, synthetic sets and fine-tuning)')
    g.add_argument('--benchmark-config', default=DEFAULT_BENCHMARK_CONFIG,
                   help='teachers, methods and scale presets (default: %(default)s)')
    g.add_argument('--stages', '--stage', nargs='+', help=f'stages to run (default: all): {", ".join(STAGES)}')
    g.add_argument('--only', nargs='+', metavar='GLOB', help="units to run, globs on their keys: '<teacher>/teacher', "
                   "'<teacher>/synth/<set>', '<teacher>/<method>/<bits>/s<seed>' (e.g. 'vit/*/w3a3/*'); "
                   'dependencies are not pulled in')
    g.add_argument('--teachers', nargs='+', help='teachers of the scale preset (default: the preset\'s; vit, swin)')
    g.add_argument('--methods', nargs='+', help='noise_ptq psaq base ihc mimiq real_ft (default: all)')
    g.add_argument('--bits', nargs='+', help='e.g. w3a3 w2a4, or headline / all (default: the preset\'s)')
    g.add_argument('--seeds', nargs='+', help='fine-tuning seeds (default: the preset\'s)')
    g.add_argument('--dry-run', action='store_true', help='print the plan with the status of every unit and exit')
    g = p.add_argument_group('another teacher')
    g.add_argument('--teacher-config', help='an mmpretrain/timm ViT, DeiT or Swin classifier config (file or '
                   "'mmpretrain::...'), instead of the preset's teachers")
    g.add_argument('--teacher-checkpoint', help='its full-precision checkpoint; without it the teacher is trained here')
    g.add_argument('--teacher-name', default='custom')
    g.add_argument('--teacher-label')
    g.add_argument('--teacher-cfg-options', nargs='+', metavar='KEY=VALUE',
                   help='overrides of the teacher config, e.g. model.embed_dim=384 model.depth=12')
    g.add_argument('--image-size', type=int, help='synthesis image size (default: from the teacher config)')
    g = p.add_argument_group('time')
    g.add_argument('--time-budget', type=float, metavar='SECONDS', help='start no unit that would not finish before '
                   'this many seconds from now; long units stop cleanly at the deadline and resume next time')
    g.add_argument('--reserve', type=float, default=20, help='seconds kept for the report and --pack (default 20)')
    g = p.add_argument_group('scale overrides (recorded in the output)')
    for flag, typ, what in [('--teacher-epochs', int, 'teacher epochs'),
                            ('--teacher-seconds', float, 'cap on teacher training time; the schedule shrinks to fit '
                             '(0: no cap)'),
                            ('--teacher-batch', int, 'teacher batch size'), ('--teacher-lr', float, 'teacher AdamW lr'),
                            ('--synth-images', int, 'images per synthetic set (mimiq, base)'),
                            ('--synth-steps', int, 'optimisation steps per synthetic batch'),
                            ('--synth-batch', int, 'synthesis batch size'),
                            ('--ft-iters', int, 'fine-tuning iterations'),
                            ('--ft-batch', int, 'fine-tuning batch size'),
                            ('--ft-lr', float, 'fine-tuning SGD lr'), ('--had-gamma', float, 'weight of L_HAD'),
                            ('--kd-temperature', float, 'KL temperature')]:
        g.add_argument(flag, type=typ, help=what)
    g.add_argument('--act-method', choices=['lsq', 'minmax'], help='activation quantizer of the fine-tuned methods')
    g.add_argument('--workers', type=int, help='dataloader workers (default: the preset\'s)')
    g.add_argument('--no-tf32', action='store_true', help='full fp32 matmuls on CUDA (default: TF32 allowed)')
    g = p.add_argument_group('moving the state between machines')
    g.add_argument('--restore', nargs='+', metavar='PATH', help=f'{PACK_NAME}.part* files or folders holding them, '
                   'unpacked into the work dir before anything runs')
    g.add_argument('--pack', metavar='DIR', help=f'at the end, write {PACK_NAME}.part* (<= 15 MiB each) and the '
                   'results into DIR (e.g. $OUT)')
    g.add_argument('--pack-synthetic', choices=['needed', 'all', 'none'], default='needed',
                   help='synthetic sets in the pack: those a planned quant unit still needs (default), all, none')
    g.add_argument('--out', metavar='DIR', help='also copy results.md and results.json into DIR')
    g.add_argument('--fail-fast', action='store_true', help='stop at the first failing unit (default: go on)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.restore:  # before the benchmark opens its work dir
        from mmengine.config import Config
        name = Config.fromfile(resolve_path(args.benchmark_config)).get('benchmark', 'benchmark')
        restore(args.restore, default_work_dir(args, name))
    bench = Benchmark(args, argv)
    bench.open()
    units = bench.plan()
    if args.dry_run:
        for u in units:
            if bench.selected(u):
                print(f'{bench.status(u):8s} {u.name}  (~{fmt_seconds(bench.estimate(u))})')
        bench.close(0)
        return 0
    rc = 0
    try:
        bench.execute(units)
    finally:
        bench.report(quiet='report' not in bench.stages)
        c = bench.counts
        bench.log(f'ran {len(c["ran"])}, skipped {len(c["skipped"])} (done), deferred {len(c["deferred"])} (time '
                  f'budget), stopped {len(c["partial"])} (resumable), blocked {len(c["blocked"])}, '
                  f'failed {len(c["failed"])} in {fmt_seconds(time.time() - bench.t_start)}')
        if c['failed']:
            rc = 1
            bench.log('failed: ' + ', '.join(c['failed']) + ' (tracebacks in error_*.txt of their folders)')
        if args.pack:
            bench.pack(args.pack)
        bench.close(rc)
    return rc


if __name__ == '__main__':
    sys.exit(main())

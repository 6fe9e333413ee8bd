"""Time synthesis steps (plain / IHC / PSAQ) and QAT steps (KD / KD+HAD) of one model in one run.

Prints ms/step, image-steps/s, step-time ratios (IHC and PSAQ against the plain synthesis step,
KD+HAD against the plain KD step) and peak GPU memory, and writes everything as JSON.

Examples (from the repository root):
    # DeiT-S, batch 128, bf16 on one GPU
    python -m benchmarks.step_times --timm-model deit_small_patch16_224 --batch 128 --precision bf16 \
        --device cuda
    # from a mimiq_mm config (its QuantDistiller and train_cfg.synthesis options)
    python -m benchmarks.step_times configs/deit/deit-s_mimiq_w4a4.py --batch 128 --device cuda
    # a tiny CPU run
    python -m benchmarks.step_times --timm-model deit_tiny_patch16_224 --img-size 64 --batch 8 \
        --device cpu --warmup 1 --iters 3
"""
import argparse
import json
import sys


def parse_args(argv=None):
    from mmengine.config import DictAction
    from .speed import STEP_KINDS
    p = argparse.ArgumentParser(description='Benchmark MimiQ synthesis and QAT steps')
    p.add_argument('config', nargs='?', help='a mimiq_mm config (alternative to --timm-model)')
    p.add_argument('--timm-model', help='timm model name, e.g. deit_small_patch16_224')
    p.add_argument('--img-size', type=int, help='image side (default: the config\'s synthesis.image_size, or 224)')
    p.add_argument('--num-classes', type=int, default=1000, help='classes of a --timm-model')
    p.add_argument('--timm-kwargs', type=json.loads, default=None,
                   help='JSON of extra timm.create_model options, e.g. \'{"depth": 2, "embed_dim": 64}\'')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                   help='override config settings, e.g. key=value or key="[a,b]" (as in tools/train.py)')
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--precision', choices=['fp32', 'bf16', 'fp16'], default='fp32')
    p.add_argument('--device', default=None, help="'cpu' or 'cuda' (default: cuda when available)")
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--iters', type=int, default=10)
    p.add_argument('--w-bits', type=int, default=None, help='student weight bits (default 4, or the config\'s)')
    p.add_argument('--a-bits', type=int, default=None, help='student activation bits (default 4, or the config\'s)')
    p.add_argument('--steps', nargs='*', default=list(STEP_KINDS), choices=list(STEP_KINDS),
                   help='which step kinds to time (none: only --losses)')
    p.add_argument('--losses', action='store_true',
                   help='also time L_IHC and L_HAD alone (forward+backward) on the teacher\'s records: L_IHC\'s C++ '
                        'kernel against its PyTorch definition, with their value/gradient differences')
    p.add_argument('--ihc-kernel', choices=['auto', 'cpp', 'torch'], default=None,
                   help="L_IHC's fast path on float32 CPU: the C++ kernel ('cpp'; 'auto' where it builds) or "
                        "PyTorch ops ('torch'); applies to the ihc step and to --losses (default: auto)")
    p.add_argument('--cpu-timer', choices=['wall', 'process'], default='wall',
                   help="on CPU: time steps by wall clock or by this process's CPU time (steadier on a "
                        'shared machine with --threads 1); CUDA always uses events')
    p.add_argument('--interleave', action='store_true',
                   help='time the step kinds in alternation (steadier ratios on a shared machine; no per-kind '
                        'peak memory)')
    p.add_argument('--tf32', action='store_true', help='allow TF32 matmuls on CUDA (off by default)')
    p.add_argument('--threads', type=int, default=None, help='CPU threads (torch.set_num_threads)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', help='JSON path (default benchmarks/results/synthesis_<model>_<device>_<precision>'
                                 '_b<batch>.json)')
    args = p.parse_args(argv)
    if bool(args.config) == bool(args.timm_model):
        p.error('give either CONFIG or --timm-model')
    return args


def main(argv=None):
    import torch
    from .provenance import provenance
    from .speed import default_out_path, format_table, run_benchmark, setup_from_config, setup_from_timm, write_result
    args = parse_args(argv)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        sys.exit('--device cuda but no CUDA device is available')
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.startswith('cuda'):
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    torch.manual_seed(args.seed)
    if args.timm_model:
        setup = setup_from_timm(args.timm_model, img_size=args.img_size or 224, num_classes=args.num_classes,
                                timm_kwargs=args.timm_kwargs, w_bits=args.w_bits or 4, a_bits=args.a_bits or 4)
    else:
        setup = setup_from_config(args.config, args.cfg_options, img_size=args.img_size, w_bits=args.w_bits,
                                  a_bits=args.a_bits)
    command = ['python', '-m', 'benchmarks.step_times'] + list(sys.argv[1:] if argv is None else argv)
    print(f'benchmarking {setup.name} on {device}, batch {args.batch}, {args.precision}, '
          f'{args.warmup} warm-up + {args.iters} timed steps each')
    result = run_benchmark(setup, args.batch, precision=args.precision, device=device, warmup=args.warmup,
                           iters=args.iters, kinds=args.steps, ihc_kernel=args.ihc_kernel,
                           timer=args.cpu_timer,
                           interleave=args.interleave, argv=command)
    result['tf32'] = bool(args.tf32) if device.startswith('cuda') else None
    result['provenance'] = provenance(command, threads=torch.get_num_threads())
    if args.losses:
        from .speed.losses import format_losses, time_losses
        result['losses'] = time_losses(setup, args.batch, precision=args.precision, device=device,
                                       warmup=args.warmup, iters=args.iters, timer=args.cpu_timer,
                                       ihc_kernel=args.ihc_kernel or 'auto')
        print(format_losses(result['losses']))
    print(format_table(result))
    path = write_result(result, args.out or default_out_path(result))
    print(f'wrote {path}')
    return result


if __name__ == '__main__':
    main()

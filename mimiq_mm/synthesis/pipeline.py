"""Making a whole synthetic set, sharded across ranks, resumable, with progress and ETA."""
import time

from mmengine.dist import barrier, get_dist_info
from mmengine.logging import print_log

from .store import SyntheticSet
from .synthesizer import _fmt_seconds


def synthesize_set(synthesizer, synthetic_set: SyntheticSet, num_classes: int, visualizer=None):
    """Make every batch of ``synthetic_set`` that is not on disk yet; returns the merged manifest.

    Each rank makes the batches ``b`` with ``b mod world_size == rank``; all ranks wait for each
    other, then rank 0 merges the shards. The final losses of each batch also go to
    ``visualizer`` (an mmengine Visualizer: TensorBoard etc. when configured) as
    ``synthesis/<term>`` at step ``batch``.
    """
    rank, world_size = get_dist_info()
    pending = synthetic_set.pending_batches(rank, world_size)
    total = len([b for b in range(synthetic_set.num_batches) if b % world_size == rank])
    if total - len(pending):
        print_log(f'synthesis [{synthesizer.method}]: resuming, {total - len(pending)}/{total} batches of this '
                  f'rank already in {synthetic_set.root}', logger='current')
    start = time.time()
    for i, batch in enumerate(pending):
        t0 = time.time()
        targets = synthetic_set.batch_targets(batch, num_classes)
        prefix = f'synthesis [{synthesizer.method}] batch {batch + 1}/{synthetic_set.num_batches}: '
        seed = int(synthetic_set.settings['base_seed']) + batch
        images, losses = synthesizer.synthesize(targets, seed=seed, log_prefix=prefix)
        synthetic_set.write_batch(batch, synthesizer.to_pixels(images), targets, losses, rank=rank,
                                  seconds=time.time() - t0)
        if visualizer is not None and losses:
            visualizer.add_scalars({f'synthesis/{k}': v for k, v in losses.items()}, step=batch)
        done = i + 1
        eta = (time.time() - start) / done * (len(pending) - done)
        print_log(f'synthesis [{synthesizer.method}]: {done}/{len(pending)} batches on rank {rank} done, '
                  f'eta {_fmt_seconds(eta)}', logger='current')
    barrier()
    manifest = None
    if rank == 0:
        manifest = synthetic_set.merge()
    barrier()
    return manifest

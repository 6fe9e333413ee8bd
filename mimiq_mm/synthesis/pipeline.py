"""Making a whole synthetic set, sharded across ranks, resumable, with progress and ETA."""
import datetime
import time
from typing import Callable, Optional

from mmengine.dist import barrier, get_dist_info
from mmengine.logging import print_log

from .store import SyntheticSet


def synthesize_set(synthesizer, synthetic_set: SyntheticSet, num_classes: int, visualizer=None,
                   should_stop: Optional[Callable[[], bool]] = None) -> bool:
    """Make every batch of ``synthetic_set`` that is not on disk yet.

    Each rank makes the batches ``b`` with ``b mod world_size == rank``; all ranks wait for each
    other, then rank 0 merges the shards into ``manifest.json``. The final losses of each batch
    also go to ``visualizer`` (an mmengine Visualizer: TensorBoard etc. when configured) as
    ``synthesis/<term>`` at step ``batch``.

    Args:
        should_stop (callable | None): asked before each batch; True stops the work there (a
            time budget). What is finished stays on disk and a later call resumes it.

    Returns:
        bool: whether the set is complete (merged).
    """
    rank, world_size = get_dist_info()
    pending = synthetic_set.pending_batches(rank, world_size)
    total = len([b for b in range(synthetic_set.num_batches) if b % world_size == rank])
    if total - len(pending):
        print_log(f'synthesis [{synthesizer.method}]: resuming, {total - len(pending)}/{total} batches of this '
                  f'rank already in {synthetic_set.root}', logger='current')
    start = time.time()
    stopped = False
    for i, batch in enumerate(pending):
        if should_stop is not None and should_stop():
            print_log(f'synthesis [{synthesizer.method}]: stopped with {len(pending) - i} batches left '
                      '(they are made when this runs again)', logger='current', level=30)
            stopped = True
            break
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
                  f'eta {datetime.timedelta(seconds=int(eta))}', logger='current')
    barrier()
    complete = not stopped and not synthetic_set.pending_batches()
    if complete and rank == 0:
        synthetic_set.merge()
    barrier()
    return complete

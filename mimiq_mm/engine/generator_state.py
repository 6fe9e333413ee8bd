"""The state of ``train_cfg.generator`` in the run's checkpoints."""
from mmengine.hooks import Hook


class GeneratorStateHook(Hook):
    """Saves the loop's data generator (its network, optimizer and noise, or PSAQ-ViT V2's evolved
    samples) into every checkpoint under ``'generator'``, and hands a loaded checkpoint's to the
    loop, which gives it to the generator once built (resume goes on with the same generator).
    The loop registers this hook when it has a generator."""
    priority = 'NORMAL'

    def __init__(self, loop):
        self.loop = loop

    def before_save_checkpoint(self, runner, checkpoint):
        if self.loop.generator is not None and self.loop.generator_ready:
            checkpoint['generator'] = self.loop.generator.state_dict()

    def after_load_checkpoint(self, runner, checkpoint):
        if checkpoint.get('generator') is not None:
            self.loop.loaded_generator_state = checkpoint['generator']

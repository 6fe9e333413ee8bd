# tiny_cls_mimiq with a test hook that presses Ctrl-C during the 3rd fine-tuning iteration.
_base_ = ['./tiny_cls_mimiq.py']

custom_imports = dict(imports=['mimiq_mm', 'interrupt_hook'], allow_failed_imports=False)
custom_hooks = [dict(type='mimiq_mm.StudentExportHook'), dict(type='CtrlCDuringIterHook', during_iter=3)]
default_hooks = dict(checkpoint=dict(interval=100))

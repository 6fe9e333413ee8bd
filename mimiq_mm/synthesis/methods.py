"""Synthesis methods: which losses shape the images.

* ``mimiq``: L_IHC + α·L_CL + β·L_TV (paper Eq. 10).
* ``base``: α·L_CL + β·L_TV (the paper's "base synthesis").
* ``psaq``: PSAQ-ViT's patch-similarity entropy + α·L_CL + β·L_TV.
* ``noise``: plain Gaussian noise, no optimisation.
"""
SYNTHESIS_METHODS = {
    'mimiq': dict(ihc=True, psaq=False, optimise=True),
    'base': dict(ihc=False, psaq=False, optimise=True),
    'psaq': dict(ihc=False, psaq=True, optimise=True),
    'noise': dict(ihc=False, psaq=False, optimise=False),
}


def check_method(method):
    if method not in SYNTHESIS_METHODS:
        raise ValueError(f'unknown synthesis method {method!r}; choose one of {sorted(SYNTHESIS_METHODS)}')
    return SYNTHESIS_METHODS[method]

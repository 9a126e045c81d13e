"""A Jupyter-first workbench for mixed-precision quantization of CNNs: SigmaQuant search, baselines, hardware cost model and a live explorer."""

__version__ = "0.1.0"

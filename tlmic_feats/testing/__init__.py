"""Testing utilities for tlmic and for code built on it (as ``numpy.testing`` is for numpy).

``datasets``: generated image folders; ``stores``: feature stores with one informative layer;
``simulation``: a two-level model of training runs with a known difference between two arms;
``fuzz``: hypothesis strategies for hard inputs to the image decoders and manifest readers (needs
``hypothesis``). tlmic's own tests and benchmarks import them from here; the library never imports
this package.
"""

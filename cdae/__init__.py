"""cdae: Causal Diffusion Autoencoders for counterfactual image generation.

Importing the package is cheap (no torch); the heavy modules are imported where they are used.
The notebook API lives in :mod:`cdae.api`.
"""

__version__ = "0.1.0"

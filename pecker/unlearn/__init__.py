"""SFD / PECKER unlearning of a class-conditional diffusion teacher into a one-step generator.

Modules: ``settings`` (config -> run settings, torch-free), ``generator`` (the one-step generator),
``losses`` (psi- and theta-step losses), ``mask`` (PECKER's saliency mask), ``trainer`` (the loop,
checkpoints, resume), ``cli`` (``pecker unlearn``).
"""

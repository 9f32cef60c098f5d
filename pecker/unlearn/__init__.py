"""SFD / PECKER unlearning of a class-conditional diffusion teacher into a one-step generator."""

from pecker.unlearn.generator import OneStepGenerator, load_generator, sample_generator, save_generator
from pecker.unlearn.trainer import Unlearner, list_checkpoints, method_settings, run_unlearning

__all__ = [
    "OneStepGenerator", "load_generator", "sample_generator", "save_generator",
    "Unlearner", "list_checkpoints", "method_settings", "run_unlearning",
]

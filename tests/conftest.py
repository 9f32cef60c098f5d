"""Shared pytest setup: tests run single-threaded so they do not oversubscribe the 2 CI cores."""

import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

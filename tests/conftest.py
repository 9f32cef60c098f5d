"""Shared pytest setup: tests run single-threaded so they do not oversubscribe the 2 CI cores, and
offline: a stray Hugging Face hub call fails at once instead of waiting on the network."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

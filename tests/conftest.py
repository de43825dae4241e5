"""Test-wide settings: one torch thread.

The CI machine has 2 cores; with DataLoader workers and torchrun processes
beside the main one, torch's default of one thread per core oversubscribes
them and makes timings (not results) erratic.
"""
import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

"""Plug a BatchSampler and a batch loader into torch's DataLoader.

The sampler runs in the main process and yields streamline IDs; each batch
becomes a :class:`BatchRequest` tagged with its split, epoch, index and
rank, so that the loader (the collate step, possibly in a worker process)
derives the batch's random stream from ``(seed, split, epoch, batch index,
rank)``: the augmentations do not depend on which worker loads the batch,
two epochs differ, and a resumed run draws the same augmentations.
"""
import signal
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dwi_ml.data.splits import Split


class BatchRequest(NamedTuple):
    """One batch to load: ``subject_ids`` is ``[(subject_index, ids), ...]``.

    ``rank`` is the distributed rank whose part of global batch
    ``batch_index`` this is (0 in a single process): ranks draw different
    augmentations for their parts.
    """

    split: Split
    epoch: int
    batch_index: int
    subject_ids: list
    rank: int = 0


class _BatchRequestSampler(Sampler):
    """Yields one split's batches of a BatchSampler as BatchRequests."""

    def __init__(self, batch_sampler, split):
        super().__init__()
        self.batch_sampler = batch_sampler
        self.split_batches = batch_sampler.for_split(split)

    def __len__(self):
        return len(self.split_batches)

    def __iter__(self):
        split = self.split_batches.split
        epoch = self.batch_sampler.epoch if split == Split.TRAINING else 0
        # A sampler resumed mid-epoch starts after the batches it yielded.
        first_index = self.split_batches.nb_batches_yielded
        for batch_index, subject_ids in enumerate(self.split_batches,
                                                  start=first_index):
            yield BatchRequest(split, epoch, batch_index, subject_ids,
                               self.batch_sampler.rank)


class _PassThroughDataset(Dataset):
    """Hands each BatchRequest to the collate function as it is."""

    def __getitem__(self, request):
        return request


def _ignore_stop_signals(worker_id):
    # Ctrl-C (SIGINT) and SLURM's --signal=USR1 reach the whole process
    # group: they are the main process's to handle. SIGTERM keeps killing
    # workers, since Python's exit terminates daemonic workers with it; the
    # main process stops fetching batches when it gets SIGTERM itself.
    for name in ("SIGINT", "SIGUSR1"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)


class InProcessLoader:
    """Batches loaded in the main process: a DataLoader with 0 workers,
    without its per-batch cost.

    Yields ``load_batch(request)`` for each request of the sampler, pinned
    when asked (and CUDA is there), as ``DataLoader(num_workers=0)`` does.
    Torch's DataLoader wraps each batch in a ``record_function`` scope,
    which made the torch calls of a batch of 100 streamlines (interpolation
    included) about 0.15 ms slower; it also drew its unused base seed from
    the generator at each iteration.
    """

    def __init__(self, sampler, load_batch, pin_memory=False):
        self.sampler = sampler
        self.load_batch = load_batch
        self.pin_memory = pin_memory and torch.cuda.is_available()

    def __len__(self):
        return len(self.sampler)

    def __iter__(self):
        for request in self.sampler:
            batch = self.load_batch(request)
            yield batch.pin_memory() if self.pin_memory else batch


def make_dataloader(batch_sampler, batch_loader, split, nb_workers=0,
                    generator=None, pin_memory=False):
    """Build the DataLoader of one split (training or validation).

    Parameters
    ----------
    batch_sampler : BatchSampler
    batch_loader : object with ``load_batch(BatchRequest)``
        The collate step; each worker gets its own copy (and opens its own
        HDF5 handle in lazy mode) when the first iteration starts them, and
        persistent workers keep it: restore a loader's state before.
    split : Split or str
        ``Split.TRAINING`` or ``Split.VALIDATION``.
    nb_workers : int
        0 loads in the main process (an :class:`InProcessLoader`);
        otherwise a torch DataLoader with persistent workers.
    generator : torch.Generator or None
        Source of the workers' base seed, so that creating a DataLoader
        iterator never draws from torch's global generator (unused with 0
        workers).
    pin_memory : bool
        Pin each batch's tensors (for asynchronous copies to a GPU).

    Returns
    -------
    torch.utils.data.DataLoader or InProcessLoader
        Yields one loaded batch per BatchRequest, in the sampler's order.
    """
    request_sampler = _BatchRequestSampler(batch_sampler, split)
    if nb_workers == 0:
        return InProcessLoader(request_sampler, batch_loader.load_batch,
                               pin_memory)
    return DataLoader(
        _PassThroughDataset(),
        sampler=request_sampler,
        batch_size=None, collate_fn=batch_loader.load_batch,
        num_workers=nb_workers, persistent_workers=True,
        prefetch_factor=4,
        generator=generator if generator is not None else torch.Generator(),
        pin_memory=pin_memory, worker_init_fn=_ignore_stop_signals)


def shut_down_workers(loader):
    """Stop a DataLoader's persistent workers now (nothing with 0 workers).

    Torch skips this at interpreter exit, which leaves the workers' pids
    registered with its SIGCHLD check: after a SIGTERM to the process group
    had killed them, any later child's exit raised in the main process. A
    later iteration of ``loader`` starts new workers.
    """
    iterator = getattr(loader, "_iterator", None)
    if iterator is None or not hasattr(iterator, "_shutdown_workers"):
        return
    iterator._shutdown_workers()
    loader._iterator = None

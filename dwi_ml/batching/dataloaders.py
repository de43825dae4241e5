"""Plug a BatchSampler and a batch loader into torch's DataLoader.

The sampler runs in the main process and yields streamline IDs; each batch
becomes a :class:`BatchRequest` tagged with its context, epoch, index and
rank, so that the loader (the collate step, possibly in a worker process)
derives the batch's random stream from ``(seed, context, epoch, batch index,
rank)``: the augmentations do not depend on which worker loads the batch,
two epochs differ, and a resumed run draws the same augmentations.
"""
import signal
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

CONTEXT_CODES = {"training": 0, "validation": 1, "testing": 2}


class BatchRequest(NamedTuple):
    """One batch to load: ``subject_ids`` is ``[(subject_index, ids), ...]``.

    ``rank`` is the distributed rank whose part of global batch
    ``batch_index`` this is (0 in a single process): ranks draw different
    augmentations for their parts.
    """

    context: str
    epoch: int
    batch_index: int
    subject_ids: list
    rank: int = 0


class _BatchRequestSampler(Sampler):
    """Yields the BatchSampler's batches of one context as BatchRequests."""

    def __init__(self, batch_sampler, context):
        super().__init__()
        self.batch_sampler = batch_sampler
        self.context = context

    def __len__(self):
        self.batch_sampler.set_context(self.context)
        return len(self.batch_sampler)

    def __iter__(self):
        self.batch_sampler.set_context(self.context)
        epoch = self.batch_sampler.epoch if self.context == "training" else 0
        # A sampler resumed mid-epoch starts after the batches it yielded.
        first_index = self.batch_sampler.nb_batches_yielded
        for batch_index, subject_ids in enumerate(self.batch_sampler,
                                                  start=first_index):
            yield BatchRequest(self.context, epoch, batch_index, subject_ids,
                               self.batch_sampler.rank)


class _PassThroughDataset(Dataset):
    """Hands each BatchRequest to the collate function as it is."""

    def __getitem__(self, request):
        return request


def _ignore_stop_signals(worker_id):
    # A stop signal sent to the whole process group (Ctrl-C, SLURM, torchrun)
    # is the main process's to handle: a worker that died of it would break
    # the batch in flight and the checkpoint the main process is writing.
    for name in ("SIGTERM", "SIGINT", "SIGUSR1"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)


def make_dataloader(batch_sampler, batch_loader, context, nb_workers=0,
                    generator=None, pin_memory=False):
    """Build the DataLoader of one context ("training" or "validation").

    Parameters
    ----------
    batch_sampler : BatchSampler
    batch_loader : object with ``load_batch(BatchRequest)``
        The collate step; each worker gets its own copy (and opens its own
        HDF5 handle in lazy mode) when the first iteration starts them, and
        persistent workers keep it: restore a loader's state before.
    context : str
        "training" or "validation".
    nb_workers : int
        0 loads in the main process; otherwise persistent workers.
    generator : torch.Generator or None
        Source of the workers' base seed, so that creating a DataLoader
        iterator never draws from torch's global generator.
    pin_memory : bool
        Pin each batch's tensors (for asynchronous copies to a GPU).

    Returns
    -------
    torch.utils.data.DataLoader
        Yields one loaded batch per BatchRequest, in the sampler's order.
    """
    return DataLoader(
        _PassThroughDataset(),
        sampler=_BatchRequestSampler(batch_sampler, context),
        batch_size=None, collate_fn=batch_loader.load_batch,
        num_workers=nb_workers, persistent_workers=nb_workers > 0,
        prefetch_factor=4 if nb_workers > 0 else None,
        generator=generator if generator is not None else torch.Generator(),
        pin_memory=pin_memory,
        worker_init_fn=_ignore_stop_signals if nb_workers > 0 else None)

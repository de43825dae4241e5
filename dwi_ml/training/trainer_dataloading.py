"""The trainer's DataLoaders and the iteration over an epoch's batches.

A mixin of :class:`~dwi_ml.training.trainer.DWIMLAbstractTrainer`: it reads
the trainer's ``batch_sampler``, ``batch_loader``, ``use_validation``,
``nb_workers``, ``dataloader_seed``, ``device``, ``max_batches``,
``position`` and ``interruptions``, and keeps the loaders in
``_dataloaders`` and the time spent waiting for their batches in
``data_wait_s``.
"""
import time

import torch

from dwi_ml.batching.dataloaders import make_dataloader
from dwi_ml.data.splits import Split

# How long a DataLoader error waits for this process's own stop signal.
WORKER_DEATH_SIGNAL_WAIT_S = 2.0


class TrainerDataLoading:
    """DataLoaders of the trainer, and the loop over their batches."""

    def create_dataloaders(self):
        """Create the training and validation DataLoaders (kept for reuse)."""
        splits = [Split.TRAINING] + ([Split.VALIDATION] if self.use_validation
                                     else [])
        for split in splits:
            if split not in self._dataloaders:
                self._dataloaders[split] = make_dataloader(
                    self.batch_sampler, self.batch_loader, split,
                    self.nb_workers,
                    torch.Generator().manual_seed(self.dataloader_seed),
                    pin_memory=self.device.type == "cuda")

    def iterate_batches(self, split, epoch):
        """Yield the epoch's remaining batches of ``split``, up to the cap.

        Iteration starts after the batches the current position has done
        (the sampler was restored at the same place). The seconds spent
        waiting for the DataLoader add up in ``self.data_wait_s[split]``;
        None for an epoch resumed midway, whose earlier wait is unknown.
        """
        self.batch_sampler.set_epoch(epoch)
        cap = self.max_batches[split]
        first = self.position.nb_batches_done
        self.data_wait_s[split] = None if first > 0 else 0.0
        try:  # wakes persistent workers up: they may be dead already
            batches = enumerate(self._dataloaders[split], start=first)
        except (RuntimeError, OSError):
            self._stop_if_workers_died_of_stop_signal()
            return
        while True:
            asked = time.perf_counter()
            try:
                batch_index, batch = next(batches)
            except StopIteration:
                return
            except (RuntimeError, OSError):
                self._stop_if_workers_died_of_stop_signal()
                return
            if first == 0:
                self.data_wait_s[split] += time.perf_counter() - asked
            if cap is not None and batch_index >= cap:
                return
            self.batch_index = batch_index
            yield batch

    def _stop_if_workers_died_of_stop_signal(self):
        """On a DataLoader error: workers killed by this run's SIGTERM (sent
        to the process group) stop it at its last step; else re-raise.

        A worker killed while its batch is being received gives a
        ``ConnectionResetError`` (the tensors' file descriptors), possibly
        before this process has run its own SIGTERM's handler: wait for it.
        With 0 workers no worker can die: the error is the loader's own.
        """
        if (self.nb_workers == 0 or not self.interruptions.signal_within(
                WORKER_DEATH_SIGNAL_WAIT_S)):
            raise
        self.poll_interruptions(is_training_batch=False)

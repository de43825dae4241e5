"""LoadedBatch: one batch, packed, as the loader hands it to the trainer."""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from dwi_ml.data.packed import compact


@dataclass
class LoadedBatch:
    """A batch of N streamlines with P points in all, packed.

    Only a handful of tensors cross the worker-to-main process boundary,
    whatever N is; lists of per-streamline views are made on demand.

    Attributes
    ----------
    target_points : torch.Tensor, (P, 3) float32
        Streamlines the loss compares to (VOX space, corner origin).
    input_points : torch.Tensor, (P, 3) float32
        The same streamlines with the "forward" noise: where inputs are
        interpolated and previous directions computed.
    lengths : torch.Tensor, (N,) int64
        Points per streamline.
    subject_indices : torch.Tensor, (N,) int64
        Subject of each streamline, in the context's subset.
    context : str
        'training' or 'validation'.
    inputs : torch.Tensor or None, (P, F * K) float32
        Interpolated inputs, once computed.
    """

    target_points: torch.Tensor
    input_points: torch.Tensor
    lengths: torch.Tensor
    subject_indices: torch.Tensor
    context: str
    inputs: Optional[torch.Tensor] = None

    @classmethod
    def from_array_sequences(cls, targets, input_points, subject_indices,
                             context):
        """Pack per-subject ArraySequences (same offsets in both lists)."""
        target_parts, input_parts, length_parts = [], [], []
        for target, inputs_at in zip(targets, input_points):
            data, _, lengths = compact(target)
            target_parts.append(data)
            length_parts.append(lengths)
            input_parts.append(data if inputs_at is target
                               else compact(inputs_at)[0])
        target_data = _concat(target_parts)
        same = all(a is b for a, b in zip(targets, input_points))
        return cls(
            target_points=torch.from_numpy(target_data),
            input_points=(torch.from_numpy(target_data) if same
                          else torch.from_numpy(_concat(input_parts))),
            lengths=torch.from_numpy(np.concatenate(length_parts).astype(np.int64)),
            subject_indices=torch.from_numpy(
                np.asarray(subject_indices, dtype=np.int64)),
            context=context)

    @property
    def nb_streamlines(self):
        """N."""
        return len(self.lengths)

    def to(self, device, non_blocking=False):
        """Return a copy with every tensor on ``device``."""
        def move(tensor):
            if tensor is None:
                return None
            return tensor.to(device, non_blocking=non_blocking)
        same_points = self.input_points is self.target_points
        target_points = move(self.target_points)
        return LoadedBatch(
            target_points=target_points,
            input_points=target_points if same_points else move(self.input_points),
            lengths=self.lengths, subject_indices=self.subject_indices,
            context=self.context, inputs=move(self.inputs))

    def pin_memory(self):
        """Pinned copy, used by DataLoader(pin_memory=True)."""
        def pin(tensor):
            return None if tensor is None else tensor.pin_memory()
        return LoadedBatch(pin(self.target_points), pin(self.input_points),
                           self.lengths, self.subject_indices, self.context,
                           pin(self.inputs))

    def _split(self, tensor):
        return list(torch.split(tensor, self.lengths.tolist()))

    def target_streamlines(self):
        """List of N (n_i, 3) views of ``target_points``."""
        return self._split(self.target_points)

    def input_streamlines(self):
        """List of N (n_i, 3) views of ``input_points``."""
        return self._split(self.input_points)

    def inputs_list(self):
        """List of N (n_i, F * K) views of ``inputs``."""
        return self._split(self.inputs)


def _concat(parts):
    if not parts:
        return np.zeros((0, 3), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

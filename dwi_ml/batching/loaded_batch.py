"""LoadedBatch: one batch, packed, as the loader hands it to the trainer."""
import math
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class LoadedBatch:
    """A batch of N streamlines with P points in all, packed.

    One tensor crosses the worker-to-main process boundary, whatever N is:
    pickling packs every tensor into one byte buffer (each tensor a
    DataLoader worker sends costs a shared memory segment: a batch of 100
    streamlines moved in 3.7 ms as 5 tensors, 1.5 ms as one); the
    receiving side gets views of it. Lists of per-streamline views are made on demand.

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
        Subject of each streamline, in the split's subset.
    split : Split
        The split the batch comes from.
    inputs : torch.Tensor or None, (P, F * K) float32
        Interpolated inputs, once computed.
    open_ends : torch.Tensor or None, (N,) bool
        True where a streamline's last point is a cut made by splitting,
        not an end of its fibre: the loss learns no EOS there. None when
        nothing was split (validation, ``split_ratio`` 0).
    """

    target_points: torch.Tensor
    input_points: torch.Tensor
    lengths: torch.Tensor
    subject_indices: torch.Tensor
    split: str
    inputs: Optional[torch.Tensor] = None
    open_ends: Optional[torch.Tensor] = None

    def __reduce__(self):
        same = self.input_points is self.target_points
        floats = [self.target_points, *([] if same else [self.input_points]),
                  *([] if self.inputs is None else [self.inputs])]
        if len({(t.dtype, t.device) for t in floats}) > 1:
            return (LoadedBatch, (self.target_points, self.input_points,
                                  self.lengths, self.subject_indices,
                                  self.split, self.inputs, self.open_ends))
        integers = (self.lengths, self.subject_indices)
        if self.open_ends is not None:
            integers += (self.open_ends.to(torch.int64),)
        nb_integer_bytes = 8 * len(integers) * len(self.lengths)
        float_bytes = [t.numel() * t.element_size() for t in floats]
        buffer = torch.empty(nb_integer_bytes + sum(float_bytes),
                             dtype=torch.uint8, device=floats[0].device)
        start = 0
        for tensor, nb_bytes in zip(
                integers + tuple(floats),
                [8 * len(self.lengths)] * len(integers) + float_bytes):
            buffer[start:start + nb_bytes].view(tensor.dtype).copy_(
                tensor.reshape(-1))
            start += nb_bytes
        return (_unpack_batch, (buffer, len(self.lengths), floats[0].dtype,
                                tuple(tuple(t.shape) for t in floats), same,
                                self.inputs is not None, self.split,
                                self.open_ends is not None))

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
            split=self.split, inputs=move(self.inputs),
            open_ends=self.open_ends)

    def pin_memory(self):
        """Pinned copy, used by DataLoader(pin_memory=True)."""
        def pin(tensor):
            return None if tensor is None else tensor.pin_memory()
        target_points = pin(self.target_points)
        same_points = self.input_points is self.target_points
        return LoadedBatch(
            target_points=target_points,
            input_points=(target_points if same_points
                          else pin(self.input_points)),
            lengths=self.lengths, subject_indices=self.subject_indices,
            split=self.split, inputs=pin(self.inputs),
            open_ends=self.open_ends)

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


def _unpack_batch(buffer, nb_streamlines, float_dtype, shapes, same_points,
                  has_inputs, split, has_open_ends=False):
    """The LoadedBatch that ``__reduce__`` packed: views of one byte buffer
    (lengths, subject indices and open ends as int64, then the float
    tensors)."""
    nb_integers = 3 if has_open_ends else 2
    integers = buffer[:8 * nb_integers * nb_streamlines].view(torch.int64)
    views, start = [], 8 * nb_integers * nb_streamlines
    item_size = float_dtype.itemsize
    for shape in shapes:
        nb_bytes = math.prod(shape) * item_size
        views.append(buffer[start:start + nb_bytes].view(float_dtype)
                     .view(shape))
        start += nb_bytes
    return LoadedBatch(
        target_points=views[0],
        input_points=views[0] if same_points else views[1],
        lengths=integers[:nb_streamlines],
        subject_indices=integers[nb_streamlines:2 * nb_streamlines],
        split=split, inputs=views[-1] if has_inputs else None,
        open_ends=(integers[2 * nb_streamlines:].bool() if has_open_ends
                   else None))

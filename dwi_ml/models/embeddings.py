"""Embeddings: map each point's input vector, or its previous directions.

Embeddings act on packed points, (P, input_size) -> (P, output_size). The
input embeddings are "none", "linear" and "cnn" (a 3-D convolution over a
grid neighbourhood, :mod:`dwi_ml.models.cnn_embedding`); the previous
directions' are "none" and "linear" (:func:`make_prev_dirs_embedding`).
"""
import torch

from dwi_ml.io_utils.arg_checks import check_choice, check_int
from dwi_ml.io_utils.errors import DwiMLUserError


class NoEmbedding(torch.nn.Identity):
    """Keep the input as it is; ``output_size == input_size``."""

    def __init__(self, input_size):
        super().__init__()
        self.input_size = input_size
        self.output_size = input_size


class LinearEmbedding(torch.nn.Module):
    """One linear layer followed by a ReLU."""

    def __init__(self, input_size, output_size):
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.linear = torch.nn.Linear(input_size, output_size)

    def forward(self, inputs):
        return torch.relu(self.linear(inputs))


EMBEDDING_KEYS = ("none", "linear")
INPUT_EMBEDDING_KEYS = EMBEDDING_KEYS + ("cnn",)


def make_embedding(key, input_size, embedding_size):
    """Build the embedding ``key`` ("none" or "linear").

    ``embedding_size`` is required for "linear" and must be None for "none".
    """
    check_choice("input_embedding_key", key, EMBEDDING_KEYS)
    if key == "none":
        if embedding_size is not None:
            raise DwiMLUserError(
                f"argument 'input_embedding_size': expected None with "
                f"input_embedding_key 'none', found {embedding_size!r}.")
        return NoEmbedding(input_size)
    return LinearEmbedding(
        input_size, check_int("input_embedding_size", embedding_size, 1))


def make_prev_dirs_embedding(key, nb_previous_dirs, embedding_size):
    """The embedding of the ``3 k`` previous-direction values of a point.

    Parameters
    ----------
    key : "none" or "linear"
        "none" keeps the ``3 k`` values; "linear" maps them to
        ``embedding_size`` values (a linear layer and a ReLU).
    nb_previous_dirs : int
        ``k``; "linear" needs ``k >= 1``.
    embedding_size : int or None
        Output width; None is ``3 k``. With "none" it must be None or
        ``3 k``.
    """
    check_choice("prev_dirs_embedding_key", key, EMBEDDING_KEYS)
    input_size = 3 * nb_previous_dirs
    if key == "none":
        if embedding_size not in (None, input_size):
            raise DwiMLUserError(
                f"argument 'prev_dirs_embedding_size': expected None or "
                f"{input_size} (3 * nb_previous_dirs) with "
                f"prev_dirs_embedding_key 'none', found {embedding_size!r}.")
        return NoEmbedding(input_size)
    if nb_previous_dirs == 0:
        raise DwiMLUserError(
            "argument 'prev_dirs_embedding_key': 'linear' embeds previous "
            "directions, expected nb_previous_dirs >= 1, found 0.")
    return LinearEmbedding(input_size, check_int(
        "prev_dirs_embedding_size",
        input_size if embedding_size is None else embedding_size, 1))

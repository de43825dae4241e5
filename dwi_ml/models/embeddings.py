"""Input embeddings: map each point's input vector before the RNN.

Embeddings act on packed points, (P, input_size) -> (P, output_size).
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

"""Tokens of the Transformer models: embeddings and padding.

- :func:`make_token_embedding` and :class:`TargetEmbedding` embed the
  source and target tokens of each prediction point (see
  :mod:`dwi_ml.models.transformer_base`), packed ``(M, width)``;
- :class:`PaddedLayout` places the packed rows of a batch in a padded
  ``(N, T)`` grid with one indexed write, and back again; padding comes
  after each streamline's points, so causal attention never reaches it
  from a real point.
"""
import torch

from dwi_ml.io_utils.arg_checks import check_choice
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.embeddings import EMBEDDING_KEYS, make_embedding

SOS_TOKEN_TYPES = ("learned", "class")


def make_token_embedding(name, key, input_size, output_size,
                         set_by="d_model"):
    """Embedding ``key`` ("none" or "linear") from ``input_size`` to
    ``output_size``; "none" requires both widths to be equal (the message
    names the options that set ``output_size``: ``set_by``)."""
    check_choice(name, key, EMBEDDING_KEYS)
    if key == "none" and input_size != output_size:
        raise DwiMLUserError(
            f"argument '{name}': 'none' keeps the token's {input_size} "
            f"values, but the model expects {output_size} (set by {set_by}); "
            f"use 'linear', or a {set_by} that fits.")
    return make_embedding(key, input_size,
                          None if key == "none" else output_size)


class TargetEmbedding(torch.nn.Module):
    """Embed the previous directions; an SOS token at the first point.

    Parameters
    ----------
    key : "none" or "linear"
    output_size : int
    sos_token_type : "learned" or "class"
        "learned": the embedded token at ``t = 0`` is a trained vector.
        "class": each token gets a fourth value, 1 for SOS (whose direction
        is zeros) and 0 elsewhere, and goes through the embedding like the
        others.
    """

    def __init__(self, key, output_size, sos_token_type):
        super().__init__()
        self.sos_token_type = check_choice("sos_token_type", sos_token_type,
                                           SOS_TOKEN_TYPES)
        token_size = self.token_size(sos_token_type)
        self.embedding = make_token_embedding("target_embedding_key", key,
                                              token_size, output_size)
        if sos_token_type == "learned":
            self.sos = torch.nn.Parameter(torch.randn(output_size) * 0.02)

    @staticmethod
    def token_size(sos_token_type):
        """Values of a target token: the direction, and the SOS flag with
        "class"."""
        return 4 if sos_token_type == "class" else 3

    def forward(self, previous_dirs, is_first):
        """previous_dirs (M, 3), is_first (M,) bool -> (M, output_size)."""
        if self.sos_token_type == "class":
            return self.embedding(torch.cat(
                [previous_dirs, is_first[:, None].to(previous_dirs.dtype)],
                dim=1))
        return torch.where(is_first[:, None], self.sos,
                           self.embedding(previous_dirs))


class PaddedLayout:
    """Where each packed prediction row goes in the padded (N, T) grid.

    Parameters
    ----------
    counts : torch.Tensor int64 (N,)
        Prediction points per streamline (>= 1).
    """

    def __init__(self, counts):
        self.counts = counts
        self.nb_streamlines = len(counts)
        self.nb_positions = int(counts.max())
        self.streamline_ids = torch.repeat_interleave(
            torch.arange(self.nb_streamlines, device=counts.device), counts)
        first_rows = torch.cumsum(counts, 0) - counts
        self.time_ids = (torch.arange(len(self.streamline_ids),
                                      device=counts.device)
                         - first_rows[self.streamline_ids])

    def pad(self, packed):
        """(M, d) -> (N, T, d), zeros after each streamline's end."""
        padded = packed.new_zeros((self.nb_streamlines, self.nb_positions,
                                   packed.shape[1]))
        padded[self.streamline_ids, self.time_ids] = packed
        return padded

    def unpad(self, padded):
        """(N, T, d) -> (M, d), real positions only."""
        return padded[self.streamline_ids, self.time_ids]

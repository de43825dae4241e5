"""A 3-D convolutional embedding of a point's grid neighbourhood.

With ``neighborhood_type="grid"`` and radius ``r`` the loader gives each
point ``F * K`` values, ``K = (2 r + 1) ** 3`` neighbours laid out
neighbour by neighbour, the centre first and the others in lexicographic
(x, y, z) order (:func:`dwi_ml.data.processing.neighborhood.get_neighborhood_offsets`).
:class:`CNNEmbedding` puts them back on their ``(2 r + 1) ** 3`` grid, runs
one 3-D convolution (kernel 3, zero padding, ReLU) over it, and maps the
flattened feature maps, with any extra values of the token (previous
directions), to the output width by a linear layer and a ReLU.
"""
import torch

from dwi_ml.io_utils.arg_checks import check_int
from dwi_ml.io_utils.errors import DwiMLUserError


def grid_order(radius):
    """Neighbour index of each grid cell, int64 ((2 r + 1) ** 3,).

    Cell ``g`` (lexicographic x, y, z) holds neighbour ``g + 1`` before the
    centre cell, the centre (neighbour 0) at the centre cell, and neighbour
    ``g`` after it.
    """
    nb_cells = (2 * radius + 1) ** 3
    centre = nb_cells // 2
    order = torch.arange(nb_cells)
    order[:centre] += 1
    order[centre] = 0
    return order


class CNNEmbedding(torch.nn.Module):
    """Conv3d over the neighbourhood grid, then linear layer and ReLU.

    Parameters
    ----------
    nb_features : int
        F, features of the input volume.
    radius : int
        Grid neighbourhood radius, in points.
    extra_size : int
        Values after the ``F * K`` inputs in each token (e.g. ``3 k``
        previous directions), appended to the flattened feature maps.
    output_size : int
    nb_filters : int
        Output channels of the convolution.
    """

    def __init__(self, nb_features, radius, extra_size, output_size,
                 nb_filters):
        super().__init__()
        self.nb_features = nb_features
        self.side = 2 * radius + 1
        self.nb_filters = check_int("cnn_nb_filters", nb_filters, 1)
        self.input_size = nb_features * self.side ** 3 + extra_size
        self.output_size = output_size
        self.register_buffer("grid_order", grid_order(radius),
                             persistent=False)
        self.conv = torch.nn.Conv3d(nb_features, nb_filters, kernel_size=3,
                                    padding=1)
        self.linear = torch.nn.Linear(nb_filters * self.side ** 3 + extra_size,
                                      output_size)

    def to_grid(self, tokens):
        """The neighbourhood values of tokens (M, input_size) on their grid,
        (M, F, side, side, side), axes x, y, z."""
        nb_cells = self.side ** 3
        neighbours = tokens[:, :self.nb_features * nb_cells].reshape(
            len(tokens), nb_cells, self.nb_features)
        return neighbours[:, self.grid_order].transpose(1, 2).reshape(
            len(tokens), self.nb_features, self.side, self.side, self.side)

    def forward(self, tokens):
        """(M, input_size) -> (M, output_size)."""
        maps = torch.relu(self.conv(self.to_grid(tokens))).flatten(1)
        extra = tokens[:, self.nb_features * self.side ** 3:]
        return torch.relu(self.linear(torch.cat([maps, extra], dim=1)))


def check_cnn_neighborhood(embedding_key, neighborhood):
    """Refuse the "cnn" embedding without a "grid" neighbourhood.

    Parameters
    ----------
    embedding_key : str
        The model's ``input_embedding_key``.
    neighborhood : dwi_ml.data.processing.neighborhood.Neighborhood
    """
    if embedding_key == "cnn" and neighborhood.type != "grid":
        raise DwiMLUserError(
            f"argument 'input_embedding_key': 'cnn' needs a 'grid' "
            f"neighbourhood, found neighborhood_type {neighborhood.type!r}.")


def make_cnn_embedding(nb_features, neighborhood, extra_size, output_size,
                       nb_filters):
    """A :class:`CNNEmbedding` over ``neighborhood`` (a "grid" one)."""
    check_cnn_neighborhood("cnn", neighborhood)
    return CNNEmbedding(nb_features, neighborhood.radius, extra_size,
                        output_size, nb_filters)

"""InputSpec: what a model needs from the data, declared by the model.

A model exposes one ``input_spec``; the batch loader, the tracker and the
evaluation read it, so a new model family needs no edit in them:

- ``streamline_format``: the resampling the model was trained with
  (:class:`~dwi_ml.data.processing.resampling.StreamlineFormat`);
- ``neighborhood``: the points interpolated around each streamline point
  (:class:`~dwi_ml.data.processing.neighborhood.Neighborhood`);
- ``nb_previous_dirs``: how many previous directions the model adds to each
  point's input (computed by the model from the streamlines).
"""
import argparse
from dataclasses import dataclass, field

from dwi_ml.data.processing.neighborhood import NEIGHBORHOOD_TYPES, Neighborhood
from dwi_ml.data.processing.resampling import StreamlineFormat
from dwi_ml.io_utils.arg_checks import check_int


@dataclass(frozen=True)
class InputSpec:
    """The contract between a model and the data stages (frozen, validated).

    Attributes
    ----------
    streamline_format : StreamlineFormat
    neighborhood : Neighborhood
    nb_previous_dirs : int
        >= 0.
    """

    streamline_format: StreamlineFormat = field(default_factory=StreamlineFormat)
    neighborhood: Neighborhood = field(default_factory=Neighborhood)
    nb_previous_dirs: int = 0

    def __post_init__(self):
        object.__setattr__(self, "nb_previous_dirs", check_int(
            "nb_previous_dirs", self.nb_previous_dirs, 0))

    @classmethod
    def from_options(cls, step_size=None, nb_points=None, compress=None,
                     neighborhood_type=None, neighborhood_radius=None,
                     neighborhood_resolution=None, nb_previous_dirs=0):
        """Build (and validate) a spec from flat options, as scripts and
        ``parameters.json`` name them."""
        return cls(StreamlineFormat(step_size, nb_points, compress),
                   Neighborhood(neighborhood_type, neighborhood_radius,
                                neighborhood_resolution),
                   nb_previous_dirs)

    def as_options(self):
        """The flat options of :meth:`from_options`, JSON-able."""
        return {**self.streamline_format.as_dict(),
                "neighborhood_type": self.neighborhood.type,
                "neighborhood_radius": self.neighborhood.radius,
                "neighborhood_resolution": self.neighborhood.resolution_mm,
                "nb_previous_dirs": self.nb_previous_dirs}

    def input_size(self, nb_features):
        """Width of the interpolated inputs: ``nb_features * K``."""
        return nb_features * self.neighborhood.nb_neighbours


def add_input_spec_args(group):
    """Script options of an :class:`InputSpec`, added to a model's group.

    Names match :meth:`InputSpec.from_options`.
    """
    add_streamline_format_args(group)
    group.add_argument("--nb_previous_dirs", type=int, default=2,
                       help="Previous directions added to each point's "
                            "input (0: none; docs/training.md says why 2).")
    group.add_argument("--normalize_prev_dirs",
                       action=argparse.BooleanOptionalAction, default=True,
                       help="Give previous directions unit length, so the "
                            "inputs do not depend on the step size "
                            "(--no-normalize_prev_dirs keeps their length "
                            "in voxels).")
    group.add_argument("--neighborhood_type", choices=NEIGHBORHOOD_TYPES[1:],
                       help="Also interpolate the input around each point: "
                            "6 points per layer along the axes, or a cube; "
                            "None interpolates the point only.")
    group.add_argument("--neighborhood_radius", type=int,
                       help="Layers of the neighbourhood (needed with "
                            "--neighborhood_type).")
    group.add_argument("--neighborhood_resolution", type=float, metavar="MM",
                       help="Distance in mm between neighbourhood layers; "
                            "None is 1 mm with --neighborhood_type.")


def add_streamline_format_args(group):
    """Add ``--step_size``, ``--nb_points`` and ``--compress`` (at most one)
    to ``group``: the options of a
    :class:`~dwi_ml.data.processing.resampling.StreamlineFormat`."""
    streamline_format = group.add_mutually_exclusive_group()
    streamline_format.add_argument(
        "--step_size", type=float, metavar="MM",
        help="Resample streamlines to max(ceil(L / MM), 2) equally spaced "
             "points, as HDF5 creation does; None keeps them as stored.")
    streamline_format.add_argument(
        "--nb_points", type=int,
        help="Resample every streamline to this many points (>= 2).")
    streamline_format.add_argument(
        "--compress", type=float, metavar="MM",
        help="Compress streamlines with this tolerance in mm.")

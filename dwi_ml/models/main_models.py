"""Base classes of every dwi_ml model.

``MainModelAbstract`` holds what the trainer and the scripts need from any
model: a name, its ``input_spec`` (what the data stages must give it, see
:mod:`dwi_ml.data.processing.input_spec`), its constructor arguments
(``params_for_checkpoint``) and save/load.

``MainModelOneInput`` adds the neighbourhood and the previous directions to
the spec for one input volume group, and builds the previous-direction
inputs. See :mod:`dwi_ml.models.directions` for the batch contract.
"""
import torch

from dwi_ml.data.processing.input_spec import InputSpec
from dwi_ml.io_utils.arg_checks import check_int
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models import model_io
from dwi_ml.models.directions import (
    compute_last_previous_dirs,
    compute_previous_dirs,
    first_not_rows_of_width,
)


def check_rows_of_width(tensor, rows, width, expected, meaning):
    """Refuse anything but a 2-D tensor of ``width`` columns.

    The message reads ``'{expected} of shape ({rows}, {width}) ({meaning}),
    found ...'``.
    """
    if (isinstance(tensor, torch.Tensor) and tensor.ndim == 2
            and tensor.shape[1] == width):
        return
    found = (f"shape {tuple(tensor.shape)}" if isinstance(tensor, torch.Tensor)
             else type(tensor).__name__)
    raise DwiMLUserError(f"{expected} of shape ({rows}, {width}) ({meaning}), "
                         f"found {found}.")

# What a batch's inputs and streamlines may be: N tensors, in a list or
# stacked in one tensor (n_i all equal).
_BATCH_TYPES = (list, tuple, torch.Tensor)


def _count_of_list(values, noun):
    """``'2 streamlines'`` for a list, tuple or tensor, else its type's
    name."""
    if isinstance(values, _BATCH_TYPES):
        return f"{len(values)} {noun}"
    return type(values).__name__


class MainModelAbstract(torch.nn.Module):
    """A model that can be saved, rebuilt and trained by dwi_ml.

    Parameters
    ----------
    experiment_name : str
        Name of the experiment, kept in ``parameters.json``.
    step_size : float or None
        Step size in mm the streamlines are resampled to.
    nb_points : int or None
        Number of points each streamline is resampled to.
    compress : float or None
        Compression tolerance in mm.

    Notes
    -----
    At most one of ``step_size``, ``nb_points`` and ``compress`` may be
    set; none means streamlines are used as stored in the HDF5 file.
    Subclasses extend ``params_for_checkpoint`` with all their constructor
    arguments and decorate themselves with
    :func:`dwi_ml.models.model_io.register_model`.

    ``default_learning_rate`` (class attribute) is the learning rate a
    trainer uses when given none, in Python and in the training script
    alike; a subclass sets its own.
    """

    default_learning_rate = 1e-3

    def __init__(self, experiment_name, step_size=None, nb_points=None,
                 compress=None):
        super().__init__()
        if not isinstance(experiment_name, str) or not experiment_name:
            raise DwiMLUserError(
                f"argument 'experiment_name': expected a non-empty string, "
                f"found {experiment_name!r}.")
        self.experiment_name = experiment_name
        self.input_spec = InputSpec.from_options(step_size, nb_points, compress)

    @property
    def params_for_checkpoint(self):
        """dict: every constructor argument, JSON-able, to rebuild the model.
        """
        return {"experiment_name": self.experiment_name,
                **self.input_spec.streamline_format.as_dict()}

    def _first_parameter(self):
        """``next(self.parameters())``, or None: the same pre-order walk
        over the modules, without the generators that cost a tracking step
        (which reads the dtype) 18 us against 5."""
        modules = [self]
        while modules:
            module = modules.pop()
            if module is None:  # a submodule registered as None
                continue
            for tensor in module._parameters.values():
                if tensor is not None:
                    return tensor
            modules.extend(reversed(module._modules.values()))
        return None

    @property
    def device(self):
        """torch.device of the model's parameters (CPU when it has none)."""
        tensor = self._first_parameter()
        return torch.device("cpu") if tensor is None else tensor.device

    @property
    def dtype(self):
        """Floating dtype of the model's parameters (float32 when it has
        none): float32 usually, float64 after ``model.double()``."""
        tensor = self._first_parameter()
        return torch.float32 if tensor is None else tensor.dtype

    def save_params_and_state(self, folder):
        """Write parameters.json, model_type.txt and model_state.pt.

        See :mod:`dwi_ml.models.model_io`.
        """
        model_io.save_params_and_state(self, folder)

    @classmethod
    def load_model_from_params_and_state(cls, folder, device="cpu"):
        """Rebuild a saved model on ``device`` (in eval mode).

        Called on a subclass, refuses a folder holding another model type.
        """
        model = model_io.load_model_from_params_and_state(folder, device)
        if not isinstance(model, cls):
            raise DwiMLUserError(
                f"model folder '{folder}': expected a {cls.__name__}, "
                f"found a {type(model).__name__}.")
        return model

    def compute_loss(self, outputs, targets, open_ends=None):
        """Return ``(mean_loss, n_points)`` for a batch's outputs.

        ``open_ends`` is the batch's
        :attr:`~dwi_ml.batching.loaded_batch.LoadedBatch.open_ends`: the
        streamlines whose last point is a cut, not an end of the fibre.
        """
        raise NotImplementedError(
            f"{type(self).__name__}.compute_loss: not implemented; "
            "a subclass must define it (docs/extending.md).")


class MainModelOneInput(MainModelAbstract):
    """A model fed by one input volume group, interpolated by the loader.

    Parameters
    ----------
    experiment_name, step_size, nb_points, compress :
        See :class:`MainModelAbstract`.
    nb_features : int
        Features of the input volume group (last dimension of the volume).
    neighborhood_type : None, "axes" or "grid"
        Extra interpolation points around each streamline point, read by the
        loader. See :class:`~dwi_ml.data.processing.neighborhood.Neighborhood`.
    neighborhood_radius : int or None
        Points on each half-axis ("axes") or the cube's half-width in points
        ("grid"). Required iff ``neighborhood_type`` is set.
    neighborhood_resolution : float or None
        Distance between neighbouring points, in mm. Required iff
        ``neighborhood_type`` is set.
    nb_previous_dirs : int
        ``k``: previous directions added to each point's input (0: none).
    normalize_prev_dirs : bool
        Give previous directions unit length, so the input does not depend
        on the step size.

    Attributes
    ----------
    input_spec : InputSpec
        The format, neighbourhood and number of previous directions, read
        by the loader, the tracker and the evaluation.
    input_size : int
        ``F_in = nb_features * nb_neighbours``, the loader's input width.
    """

    def __init__(self, experiment_name, nb_features, step_size=None,
                 nb_points=None, compress=None, neighborhood_type=None,
                 neighborhood_radius=None, neighborhood_resolution=None,
                 nb_previous_dirs=0, normalize_prev_dirs=True):
        super().__init__(experiment_name, step_size, nb_points, compress)
        self.nb_features = check_int("nb_features", nb_features, 1)
        self.input_spec = InputSpec.from_options(
            step_size, nb_points, compress, neighborhood_type,
            neighborhood_radius, neighborhood_resolution, nb_previous_dirs)
        self.normalize_prev_dirs = bool(normalize_prev_dirs)
        self.input_size = self.input_spec.input_size(self.nb_features)

    @property
    def nb_previous_dirs(self):
        """``k``, read from :attr:`input_spec`."""
        return self.input_spec.nb_previous_dirs

    @property
    def params_for_checkpoint(self):
        params = super().params_for_checkpoint
        params.update(nb_features=self.nb_features,
                      **self.input_spec.as_options(),
                      normalize_prev_dirs=self.normalize_prev_dirs)
        return params

    def check_step_inputs(self, step_inputs, partial_streamlines,
                          nb_points=None):
        """Refuse a tracking step that breaks ``forward_step``'s contract.

        Parameters
        ----------
        step_inputs : torch.Tensor (N, input_size)
        partial_streamlines : list of torch.Tensor (m_i, 3), or (N, m, 3)
        nb_points : int, optional
            The points every streamline must have (a list only, checked on
            its first: a tensor may hold the last points alone).
        """
        check_rows_of_width(step_inputs, "N", self.input_size,
                            "forward_step: expected step_inputs",
                            "nb_features * nb_neighbours")
        if isinstance(partial_streamlines, torch.Tensor):
            shape = tuple(partial_streamlines.shape)
            valid = (len(shape) == 3 and shape[0] == len(step_inputs)
                     and shape[1] >= 1 and shape[2] == 3)
            first = None
        else:
            # The first alone: all step together (a loop over N streamlines
            # would cost a step of a large batch).
            first = (tuple(partial_streamlines[0].shape)
                     if len(partial_streamlines) else None)
            shape = f"{len(partial_streamlines)} streamlines, the first " \
                    f"of shape {first}"
            valid = (len(partial_streamlines) == len(step_inputs)
                     and first is not None and len(first) == 2
                     and first[0] >= 1 and first[1] == 3)
        if not valid:
            raise DwiMLUserError(
                f"forward_step: expected partial_streamlines of the "
                f"{len(step_inputs)} streamlines of step_inputs, (N, m, 3) "
                f"or a list of (m_i, 3) with m >= 1 points, found {shape}.")
        if nb_points is not None and first is not None \
                and first[0] != nb_points:
            raise DwiMLUserError(
                f"forward_step: expected streamlines of {nb_points} "
                f"point{'s' if nb_points > 1 else ''} at this step (one "
                f"more than the steps before: append each step's new "
                f"point), found {first[0]}.")

    def check_inputs(self, inputs, streamlines):
        """Refuse a batch that breaks the contract of the loader, in one line.

        Parameters
        ----------
        inputs : list of torch.Tensor (n_i, input_size)
        streamlines : list of torch.Tensor (n_i, 3)
            As many as ``inputs``, each with one point per row of its input.
            (A tensor (N, n, ...) stands for a list of N equal lengths.)

        Notes
        -----
        One pass over the N streamlines (no Python per point); a tracking
        step checks its arguments with :meth:`check_step_inputs` instead.
        """
        if (not isinstance(inputs, _BATCH_TYPES)
                or not isinstance(streamlines, _BATCH_TYPES)
                or len(inputs) != len(streamlines) or len(inputs) == 0):
            raise DwiMLUserError(
                f"batch: expected lists of as many inputs as streamlines "
                f"(>= 1), found {_count_of_list(inputs, 'inputs')} and "
                f"{_count_of_list(streamlines, 'streamlines')}.")
        for name, tensors, width, meaning in (
                ("inputs", inputs, self.input_size,
                 "nb_features * nb_neighbours"),
                ("streamlines", streamlines, 3, "points")):
            fault = first_not_rows_of_width(tensors, width)
            if fault is not None:
                raise DwiMLUserError(
                    f"batch {name}: expected tensors of shape (n_i, {width}) "
                    f"({meaning}), found {fault[1]} at streamline "
                    f"{fault[0]}.")
        rows = torch.tensor([len(x) for x in inputs])
        points = torch.tensor([len(s) for s in streamlines])
        differ = torch.nonzero(rows != points)
        if len(differ):
            index = int(differ[0, 0])
            raise DwiMLUserError(
                f"batch inputs: expected one row per point of each "
                f"streamline, found {int(rows[index])} rows for the "
                f"{int(points[index])} points of streamline {index}.")

    def compute_previous_dirs(self, streamlines, add_eos):
        """Previous directions of every prediction point, (M, 3 * k).

        Empty (M, 0) when ``nb_previous_dirs`` is 0.
        """
        if self.nb_previous_dirs == 0:
            n = sum(len(s) for s in streamlines) - (0 if add_eos else
                                                    len(streamlines))
            return streamlines[0].new_zeros((n, 0))
        return compute_previous_dirs(streamlines, self.nb_previous_dirs,
                                     add_eos, self.normalize_prev_dirs)

    @property
    def tracking_context_points(self):
        """Last points of each streamline that ``forward_step`` reads.

        The tracker passes ``forward_step`` only these last points, (N, m, 3),
        instead of the whole streamlines: the previous directions (at least
        one, the Transformers' target) need k + 1 points. A model whose
        step reads more overrides it; None means the whole streamlines.
        """
        return max(self.nb_previous_dirs, 1) + 1

    def compute_last_previous_dirs(self, partial_streamlines):
        """Previous directions at each partial streamline's last point."""
        if self.nb_previous_dirs == 0:
            return partial_streamlines[0].new_zeros(
                (len(partial_streamlines), 0))
        return compute_last_previous_dirs(
            partial_streamlines, self.nb_previous_dirs,
            self.normalize_prev_dirs)

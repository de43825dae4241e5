"""Pictures of what a Transformer model attends to, on a few streamlines.

:func:`subject_attention` runs the model over some streamlines of one
subject, as in validation (no augmentation), and gathers every attention's
weights (:func:`dwi_ml.models.transformer_attention.attention_maps`).
:func:`draw_heatmap` draws one layer and head (query position against key
position, one panel per streamline) and :func:`save_attention_tractogram`
writes the streamlines with per-point summaries as ``data_per_point``.
"""
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dwi_ml.batching.dataloaders import BatchRequest
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.packed import make_array_sequence
from dwi_ml.data.splits import Split
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.transformer_attention import (
    attention_maps,
    point_attention_values,
)
from dwi_ml.models.transformer_base import TransformerModelAbstract
from dwi_ml.monitoring.loss_per_point import loaded_split
from dwi_ml.tracking.tracking_io import save_tractogram_atomic
from dwi_ml.training.experiment_builder import build_loader

ATTENTION_TITLES = {"encoder": "encoder self-attention",
                    "decoder": "decoder self-attention",
                    "cross": "decoder-encoder cross-attention"}


@dataclass
class SubjectAttention:
    """Attention of a model over some streamlines of one subject.

    Attributes
    ----------
    streamline_ids : np.ndarray of int
        Indices in the subject's streamline group, in order.
    streamlines : nibabel ArraySequence
        As the model saw them: voxel space, corner origin.
    maps : dict of str to torch.Tensor (layers, N, heads, T, T)
        Weights per attention name ("encoder", "decoder", "cross"), on
        CPU, float64.
    counts : np.ndarray of int (N,)
        Prediction points (real query and key positions) per streamline.
    affine : np.ndarray (4, 4)
    dimensions : tuple of 3 int
    window : int or None
        The model's ``attention_window``.
    """

    streamline_ids: np.ndarray
    streamlines: object
    maps: dict
    counts: np.ndarray
    affine: np.ndarray
    dimensions: tuple
    window: object = None


def check_transformer(model, experiment_path):
    """Refuse a model without attention (e.g. Learn2track)."""
    if not isinstance(model, TransformerModelAbstract):
        raise DwiMLUserError(
            f"experiment '{experiment_path}': expected a Transformer model "
            f"(transformer_original, transformer_src_tgt or "
            f"transformer_src_only), found a {type(model).__name__}, which "
            f"has no attention to show.")


def subject_attention(model, hdf5_file, subject_id, input_group,
                      streamline_group, streamline_ids, device="cpu"):
    """Attention maps of ``model`` over some streamlines of a subject.

    Parameters
    ----------
    model : TransformerModelAbstract
        In eval mode, on ``device``.
    hdf5_file, subject_id : str
        The subject may be in any split.
    input_group, streamline_group : str
    streamline_ids : sequence of int
        Indices in the subject's streamline group.
    device : str or torch.device

    Returns
    -------
    SubjectAttention
    """
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data(subj_id=subject_id, volume_groups=[input_group],
                      streamline_groups=[streamline_group])
    try:
        split = loaded_split(dataset)
        sft_data = getattr(dataset, f"{split}_set").get_subject(0) \
            .sft_data_list[0]
        ids = np.asarray(streamline_ids, dtype=np.int64)
        bad = ids[(ids < 0) | (ids >= sft_data.nb_streamlines)]
        if len(bad):
            raise DwiMLUserError(
                f"--streamline_ids: subject '{subject_id}' has "
                f"{sft_data.nb_streamlines} streamlines in group "
                f"'{streamline_group}' (IDs 0 to "
                f"{sft_data.nb_streamlines - 1}), found {int(bad[0])}.")
        loader = build_loader(dataset, {"streamline_group": streamline_group,
                                        "input_group": input_group},
                              model, device)
        batch = loader.prepare_batch(loader.load_batch(
            BatchRequest(Split(split), 0, 0, [(0, ids)])), device)
        maps, counts = attention_maps(model, batch.inputs_list(),
                                      batch.input_streamlines())
        lengths = batch.lengths.cpu().numpy()
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        streamlines = make_array_sequence(
            batch.target_points.cpu().numpy(), offsets.astype(np.int64),
            lengths)
        affine = np.asarray(sft_data.space_attributes[0], dtype=np.float64)
        dimensions = tuple(int(d) for d in sft_data.space_attributes[1])
    finally:
        dataset.close()
    return SubjectAttention(ids, streamlines,
                            {name: weights.double().cpu()
                             for name, weights in maps.items()},
                            counts, affine, dimensions,
                            model.attention_window)


def draw_heatmap(attention, name, layer, head):
    """One layer and head of one attention: a panel per streamline.

    Each panel shows the weights of query position (rows) over key
    position (columns) of the streamline's real positions, with a colour
    bar; the causal mask leaves the upper triangle at 0.

    Returns
    -------
    matplotlib.figure.Figure
    """
    nb_streamlines = len(attention.counts)
    figure = Figure(figsize=(4.2 * nb_streamlines, 4.0), dpi=100,
                    layout="constrained")
    axes = figure.subplots(1, nb_streamlines, squeeze=False)[0]
    for ax, row, count, sid in zip(axes, range(nb_streamlines),
                                   attention.counts, attention.streamline_ids):
        weights = attention.maps[name][layer, row, head, :count,
                                       :count].numpy()
        image = ax.imshow(weights, vmin=0, vmax=max(weights.max(), 1e-12),
                          cmap="viridis", origin="upper",
                          interpolation="nearest")
        ax.set_title(f"streamline {sid}", fontsize="small")
        ax.set_xlabel("key position (point attended to)")
        ax.set_ylabel("query position (point attending)")
        # Positions are whole points: no 2.5 on a short streamline.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        figure.colorbar(image, ax=ax, label="attention weight")
    figure.suptitle(f"{ATTENTION_TITLES[name]}, layer {layer}, head {head}")
    return figure


def heatmap_names(attention):
    """(name, layer, head, file name) of every heatmap to draw."""
    return [(name, layer, head, f"{name}_layer{layer}_head{head}.png")
            for name, maps in attention.maps.items()
            for layer in range(maps.shape[0])
            for head in range(maps.shape[2])]


def save_attention_tractogram(attention, out_path):
    """The streamlines with :func:`point_attention_values` per point.

    Keys ``attention_received`` (in [0, 1]) and ``most_attended_from`` (a
    point index) in ``data_per_point``, one float32 per point; a .trk or
    .trx file on the streamline group's grid (RAS mm).
    """
    streamlines = attention.streamlines
    values = point_attention_values(attention.maps, attention.counts,
                                    streamlines._lengths, attention.window)
    data_per_point = {
        key: make_array_sequence(np.concatenate(rows), streamlines._offsets,
                                 streamlines._lengths)
        for key, rows in values.items()}
    save_tractogram_atomic(streamlines, attention.affine,
                           attention.dimensions, out_path,
                           data_per_point=data_per_point,
                           bbox_valid_check=False)

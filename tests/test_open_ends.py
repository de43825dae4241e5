"""Split pieces that end at a cut, and the EOS learned there.

Splitting cuts a streamline in two; the piece whose last point is the cut
(the first piece, or the second once reversed) does not end where its fibre
ends. The loader marks those pieces (``LoadedBatch.open_ends``). By default
(as the reference) their last point is an EOS target like any other; with
the direction getter's ``eos_only_at_fibre_ends`` the loss leaves it out.
"""
import numpy as np
import pytest
import torch

from dwi_ml.batching.batch_loader import BatchLoaderOneInput
from dwi_ml.batching.dataloaders import BatchRequest
from dwi_ml.data.dataset.multi_subject_dataset import MultiSubjectDataset
from dwi_ml.data.processing.augmentation import open_ended_pieces
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.directions import rows_with_targets
from dwi_ml.models.learn2track import Learn2TrackModel
from dwi_ml.monitoring.loss_per_point import compute_per_prediction_losses
from tests.tolerances import rounding_atol
from tests.training_data import make_trainer, make_training_hdf5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_ends")
    data = MultiSubjectDataset(make_training_hdf5(str(folder),
                                                  nb_streamlines=40))
    data.load_data()
    return data


def _eos_model(dataset, only_at_fibre_ends=True):
    torch.manual_seed(0)
    return Learn2TrackModel(
        "m", nb_features=dataset.nb_features[0], step_size=1.5,
        rnn_layer_sizes=[8],
        dg_args={"add_eos": True,
                 "eos_only_at_fibre_ends": only_at_fibre_ends})


def _split_batch(dataset, model, **augmentations):
    loader = BatchLoaderOneInput(dataset, "streamlines", input_group="input",
                                 input_spec=model.input_spec, seed=3,
                                 **augmentations)
    ids = np.arange(len(dataset.training_set.get_lengths(0, 0)))
    return loader, loader.load_batch(BatchRequest("training", 0, 0,
                                                  [(0, ids)]))


def test_open_ends_are_first_pieces_or_reversed_second_pieces():
    # Streamlines 0 and 2 were split (pieces 0-1 and 3-4), 2 was not.
    sources = np.array([0, 0, 1, 2, 2])
    np.testing.assert_array_equal(open_ended_pieces(sources),
                                  [True, False, False, True, False])
    reversed_ = np.array([False, True, False, True, False])
    np.testing.assert_array_equal(open_ended_pieces(sources, reversed_),
                                  [True, True, False, False, False])
    assert open_ended_pieces(np.zeros(0, dtype=np.int64)).shape == (0,)


@pytest.mark.parametrize("reverse_ratio", [0.0, 0.5])
def test_a_piece_is_open_ended_iff_its_last_point_is_not_a_fibre_end(
        dataset, reverse_ratio):
    model = _eos_model(dataset)
    loader, batch = _split_batch(dataset, model, split_ratio=1.0,
                                 reverse_ratio=reverse_ratio)
    sft_data = dataset.training_set.get_subject(0).sft_data_list[0]
    ids = np.arange(len(dataset.training_set.get_lengths(0, 0)))
    originals = loader.resample(
        sft_data.get_streamlines(ids),
        np.asarray(sft_data.space_attributes[0]))
    fibre_ends = np.concatenate([np.stack([s[0], s[-1]]) for s in originals])
    pieces = [s.numpy() for s in batch.target_streamlines()]
    assert len(pieces) == 2 * len(originals)  # every streamline was split
    is_fibre_end = np.array([
        np.any(np.all(fibre_ends == piece[-1], axis=1)) for piece in pieces])
    np.testing.assert_array_equal(batch.open_ends.numpy(), ~is_fibre_end)
    if not reverse_ratio:  # one open end per split streamline
        assert batch.open_ends.sum() == len(originals)
    else:  # a streamline has 0 to 2 open ends, as its pieces are reversed
        assert 0 < batch.open_ends.sum() < len(pieces)


def test_validation_and_unsplit_batches_have_no_open_ends(dataset):
    model = _eos_model(dataset)
    _, batch = _split_batch(dataset, model, reverse_ratio=0.5)
    assert batch.open_ends is None


def test_the_eos_loss_leaves_out_the_last_point_of_open_ended_pieces(dataset):
    model = _eos_model(dataset)
    _, batch = _split_batch(dataset, model, split_ratio=0.5,
                            reverse_ratio=0.5)
    streamlines = batch.target_streamlines()
    with torch.no_grad():
        outputs = model(batch.inputs_list(), batch.input_streamlines())
        losses, n_points = model.compute_loss(outputs, streamlines,
                                              open_ends=batch.open_ends)
        per_point = compute_per_prediction_losses(model, outputs, streamlines)
    nb_open = int(batch.open_ends.sum())
    assert nb_open > 0
    assert n_points == int(batch.lengths.sum()) - nb_open
    last_rows = torch.cumsum(batch.lengths, 0) - 1
    keep = torch.ones(len(per_point["eos"]), dtype=torch.bool)
    keep[last_rows[batch.open_ends]] = False
    for name in ("direction", "eos"):
        expected = per_point[name][keep].mean()
        # A mean of n_points float32 values: one rounding per addition.
        atol = rounding_atol(float(per_point[name].abs().max()), n_points)
        torch.testing.assert_close(losses[name], expected, rtol=0, atol=atol)
    # Every EOS target left in the loss is a true end of a fibre.
    assert set(keep[last_rows].nonzero().squeeze(1).tolist()) == set(
        torch.nonzero(~batch.open_ends).squeeze(1).tolist())


def test_without_eos_or_open_ends_every_row_counts():
    lengths = torch.tensor([3, 4])
    assert rows_with_targets(lengths, torch.tensor([True, False]),
                             add_eos=False) is None
    assert rows_with_targets(lengths, None, add_eos=True) is None
    assert rows_with_targets(lengths, torch.tensor([False, False]),
                             add_eos=True) is None
    np.testing.assert_array_equal(
        rows_with_targets(lengths, torch.tensor([True, True]), True).numpy(),
        [0, 1, 3, 4, 5])


def test_the_trainer_gives_the_open_ends_to_the_loss(dataset, tmp_path):
    model = _eos_model(dataset)
    trainer = make_trainer(dataset, tmp_path, model=model)
    loader, batch = _split_batch(dataset, model, split_ratio=1.0)
    trainer.batch_loader = loader
    with torch.no_grad():
        _, n_points = trainer.run_one_batch(batch)
    assert n_points == int(batch.lengths.sum()) - int(batch.open_ends.sum())


def test_by_default_every_last_point_is_an_eos_target(dataset):
    model = _eos_model(dataset, only_at_fibre_ends=False)
    _, batch = _split_batch(dataset, model, split_ratio=1.0)
    with torch.no_grad():
        outputs = model(batch.inputs_list(), batch.input_streamlines())
        with_ends = model.compute_loss(outputs, batch.target_streamlines(),
                                       open_ends=batch.open_ends)
        without = model.compute_loss(outputs, batch.target_streamlines())
    assert with_ends[1] == without[1] == int(batch.lengths.sum())
    for name in ("direction", "eos"):
        assert torch.equal(with_ends[0][name], without[0][name])


def test_the_option_is_saved_and_needs_eos(dataset, tmp_path):
    from dwi_ml.models.direction_getters import make_direction_getter
    getter = make_direction_getter("cosine-regression", 8,
                                   _eos_model(dataset).direction_getter.params)
    assert getter.params["eos_only_at_fibre_ends"] is True
    with pytest.raises(DwiMLUserError, match="eos_only_at_fibre_ends"):
        make_direction_getter("cosine-regression", 8,
                              {"eos_only_at_fibre_ends": "yes"})

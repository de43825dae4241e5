"""dwiml_train_model.py refuses, in one line and before any work, an
option that nothing in the run would read."""
import pytest
from error_checks import assert_user_error
from training_data import make_training_hdf5

from dwi_ml.cli import dwiml_train_model as train_cli

TRACKING = ["--tracking_validation_every", "1"]
WHOLE = [*TRACKING, "--tracking_validation_mode", "whole_subject",
         "--tracking_validation_tracking_mask_group", "wm_mask"]
CASES = [
    (["--tracking_validation_nb_seeds", "10"],
     "argument --tracking_validation_nb_seeds: an option of "
     "--tracking_validation_every N, found 10 with tracking validation off."),
    (["--tracking_validation_tracking_mask_group", "wm_mask"],
     "argument --tracking_validation_tracking_mask_group: an option of "
     "--tracking_validation_every N, found 'wm_mask' with tracking "
     "validation off."),
    (["--tracking_validation_every", "0", "--tracking_validation_mode",
      "whole_subject"],
     "argument --tracking_validation_mode: an option of "
     "--tracking_validation_every N, found 'whole_subject' with tracking "
     "validation off."),
    ([*TRACKING, "--tracking_validation_nb_seeds", "10"],
     "argument --tracking_validation_nb_seeds: an option of "
     "--tracking_validation_mode whole_subject, found 10 with "
     "--tracking_validation_mode generation."),
    ([*TRACKING, "--tracking_validation_seeding_mask_group", "wm_mask"],
     "argument --tracking_validation_seeding_mask_group: an option of "
     "--tracking_validation_mode whole_subject, found 'wm_mask' with "
     "--tracking_validation_mode generation."),
    ([*WHOLE, "--tracking_validation_nb_streamlines", "10"],
     "argument --tracking_validation_nb_streamlines: an option of "
     "--tracking_validation_mode generation, found 10 with "
     "--tracking_validation_mode whole_subject."),
    ([*WHOLE, "--tracking_validation_nb_points", "3"],
     "argument --tracking_validation_nb_points: an option of "
     "--tracking_validation_mode generation, found 3 with "
     "--tracking_validation_mode whole_subject."),
    (["--cache_size", "2"],
     "argument --cache_size: an option of --lazy, found 2 without --lazy."),
    (["--lr_step_size", "5"],
     "argument --lr_step_size: an option of --lr_scheduler step, found 5 "
     "with --lr_scheduler constant."),
    (["--lr_scheduler", "plateau", "--lr_step_size", "5"],
     "argument --lr_step_size: an option of --lr_scheduler step, found 5 "
     "with --lr_scheduler plateau."),
    (["--lr_gamma", "0.1"],
     "argument --lr_gamma: an option of --lr_scheduler step or plateau, "
     "found 0.1 with --lr_scheduler constant."),
    (["--momentum", "0.5"],
     "argument --momentum: an option of --optimizer SGD, found 0.5 with "
     "--optimizer Adam."),
    (["--add_eos", "--eos_only_at_fibre_ends"],
     "argument --eos_only_at_fibre_ends: an option of --split_ratio (> 0), "
     "found without --split_ratio."),
    # Typed at its default: the user still expects it to act.
    (["--momentum", "0.9"],
     "argument --momentum: an option of --optimizer SGD, found 0.9 with "
     "--optimizer Adam."),
    (["--lr_scheduler", "cosine", "--lr_gamma", "0.5"],
     "argument --lr_gamma: an option of --lr_scheduler step or plateau, "
     "found 0.5 with --lr_scheduler cosine."),
    (["--lr_step_size", "10"],
     "argument --lr_step_size: an option of --lr_scheduler step, found 10 "
     "with --lr_scheduler constant."),
    (["--tracking_validation_nb_seeds", "1000"],
     "argument --tracking_validation_nb_seeds: an option of "
     "--tracking_validation_every N, found 1000 with tracking validation "
     "off."),
    (["--d_model", "64"],
     "argument --d_model: an option of --model_type transformer_original or "
     "transformer_src_tgt or transformer_src_only, found 64 with "
     "--model_type learn2track."),
    (["--eos_weight", "1.0"],
     "argument --eos_weight: an option of --add_eos, found 1.0 without "
     "--add_eos."),
    (["--cnn_nb_filters", "8"],
     "argument --cnn_nb_filters: an option of --input_embedding_key cnn, "
     "found 8 with --input_embedding_key none."),
    (["--rnn_layer_sizes", "8", "--rnn_stacking", "reference"],
     "argument --rnn_stacking: an option of two or more RNN layers or "
     "--dropout (the stackings differ between layers and by the dropout "
     "after the last one), found 'reference' with one layer "
     "(--rnn_layer_sizes 8) and no dropout."),
]


@pytest.fixture(scope="module")
def hdf5_file(tmp_path_factory):
    return make_training_hdf5(str(tmp_path_factory.mktemp("data")),
                              nb_streamlines=20)


@pytest.mark.parametrize("options, expected", CASES)
def test_an_option_that_does_not_apply_is_refused(hdf5_file, tmp_path,
                                                  capsys, options, expected):
    message = assert_user_error(
        train_cli.main, [str(tmp_path), "x", hdf5_file, "input",
                         "streamlines", "--step_size", "1.5", *options],
        capsys, tmp_path)
    assert message == expected
    assert not (tmp_path / "x").exists()

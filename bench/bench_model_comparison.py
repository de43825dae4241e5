#!/usr/bin/env python3
"""Learning comparison: the three Transformers against Learn2track.

End to end on synthetic data from our generator
(:func:`dwi_ml.data.synthetic.make_synthetic_dataset`, 3 subjects: one for
training, one for validation, one held out for testing):

1. the HDF5 file (step size ``--step_size`` mm);
2. each model is trained with the same budget: same batches (``--batch_size``
   streamlines, split/reverse/noise augmentation), same epochs
   (``--max_epochs``), same seed; the learning rate and cosine schedule
   are shared unless ``--tf_learning_rate`` / ``--tf_lr_scheduler`` give
   the Transformers their own, and the Transformers' size, dropout,
   pre-norm and previous directions are their own options; the best model
   (lowest validation loss, or best ``--best_model_metric``) is kept;
3. each best model tracks the held-out testing subject with
   ``dwiml_track_from_model.py`` (``--nt`` seeds in the white-matter mask,
   ``--theta`` degrees, both directions);
4. the tractogram is scored against the subject's true streamlines with
   :func:`dwi_ml.tracking.scoring.score_tractogram`: the share of tracked
   points within 1 voxel of a true streamline (``points_within_1_vox``)
   and the share whose direction is within 30 degrees of the nearest true
   point's direction (``points_aligned``, that point within 2 voxels).

Prints a table: best validation loss, training CPU time, number of
tracked streamlines and the two scores. Run with ``OMP_NUM_THREADS=1``;
everything is seeded.
"""
import argparse
import json
import os
import time

import nibabel as nib
import numpy as np
import torch

from dwi_ml.batching.batch_loader import BatchLoaderOneInput
from dwi_ml.batching.batch_sampler import BatchSampler
from dwi_ml.cli.dwiml_track_from_model import main as track_main
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.data.hdf5.creation import create_hdf5_dataset
from dwi_ml.data.processing.input_spec import InputSpec
from dwi_ml.data.synthetic import make_synthetic_dataset
from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.models import Learn2TrackModel
from dwi_ml.models.transformers import (
    OriginalTransformerModel,
    TransformerSrcAndTgtModel,
    TransformerSrcOnlyModel,
)
from dwi_ml.tracking.scoring import score_tractogram
from dwi_ml.tracking.scoring_io import load_tractogram_vox_corner
from dwi_ml.tracking.stopping import eos_stop_value
from dwi_ml.tracking.tracking_validation import TrackingValidationCallback
from dwi_ml.tracking.tracking_validation_args import TrackingValidationParams
from dwi_ml.training.trainer_one_input import DWIMLTrainerOneInput

MODEL_TYPES = ("learn2track", "transformer_original", "transformer_src_tgt",
               "transformer_src_only")
TRANSFORMERS = {"transformer_original": OriginalTransformerModel,
                "transformer_src_tgt": TransformerSrcAndTgtModel,
                "transformer_src_only": TransformerSrcOnlyModel}


def write_fibre_masks(paths):
    """Each subject's ``fibre_mask.nii.gz``: the voxels its true streamlines
    cross (their points and segment midpoints, at steps under a voxel), and
    a config with that group; returns the config's path."""
    for subject in paths.subjects.values():
        image = nib.load(subject.wm_mask)
        world_to_vox = np.linalg.inv(image.affine)
        mask = np.zeros(image.shape[:3], np.uint8)
        for bundle in subject.bundles:
            for points in nib.streamlines.load(bundle).streamlines:
                dense = np.concatenate(
                    [points, points[:-1] + np.diff(points, axis=0) / 2])
                # RAS mm -> voxel, corner origin.
                voxels = np.floor(nib.affines.apply_affine(
                    world_to_vox, dense) + 0.5).astype(np.int64)
                mask[tuple(voxels.T)] = 1
        nib.save(nib.Nifti1Image(mask, image.affine, image.header),
                 os.path.join(subject.folder, "fibre_mask.nii.gz"))
    with open(paths.config) as f:
        config = json.load(f)
    config["fibre_mask"] = {"type": "volume", "files": ["fibre_mask.nii.gz"],
                            "standardization": "none"}
    config_file = os.path.join(os.path.dirname(paths.config),
                               "config_fibres.json")
    with open(config_file, "w") as f:
        json.dump(config, f)
    return config_file


def make_data(args):
    """Synthetic subjects and their HDF5 file; returns (paths, hdf5)."""
    paths = make_synthetic_dataset(os.path.join(args.out_dir, "synthetic"),
                                   nb_subjects=3,
                                   nb_streamlines=args.nb_streamlines,
                                   seed=args.seed)
    config = (write_fibre_masks(paths) if args.seeding == "fibres"
              else paths.config)
    hdf5_file = os.path.join(args.out_dir, "data.hdf5")
    create_hdf5_dataset(os.path.join(paths.out_folder, "dwi_ml_ready"),
                        hdf5_file, config, paths.splits["training"],
                        paths.splits["validation"], paths.splits["testing"],
                        step_size=args.step_size)
    return paths, hdf5_file


def make_model(model_type, nb_features, args):
    """The model, seeded: Learn2track LSTM [64] with 2 previous directions,
    or a Transformer of ``--d_model``, ``--nheads``, ``--n_layers`` per
    stack, ``--dropout``, ``--norm_first``, ``--ffnn_hidden_size``,
    ``--position_encoding``, ``--attention_window`` and
    ``--tf_nb_previous_dirs``; a
    cosine-regression direction getter for all."""
    torch.manual_seed(args.seed)
    common = dict(nb_features=nb_features, step_size=args.step_size,
                  dg_key="cosine-regression",
                  dg_args=({"add_eos": True, "eos_only_at_fibre_ends":
                            args.eos_only_at_fibre_ends,
                            "eos_weight": model_option(model_type, args,
                                                       "eos_weight")}
                           if args.add_eos else None))
    if model_type == "learn2track":
        return Learn2TrackModel(model_type, rnn_layer_sizes=[64],
                                nb_previous_dirs=2, **common)
    extra = ({"n_layers_d": args.n_layers}
             if model_type == "transformer_original" else {})
    return TRANSFORMERS[model_type](
        model_type, d_model=args.d_model, nheads=args.nheads,
        n_layers_e=args.n_layers, dropout=args.dropout,
        norm_first=args.norm_first, ffnn_hidden_size=args.ffnn_hidden_size,
        nb_previous_dirs=args.tf_nb_previous_dirs,
        position_encoding=args.position_encoding,
        attention_window=args.attention_window, activation=args.activation,
        **extra, **common)


def model_option(model_type, args, name):
    """Option ``name`` of the model: ``--tf_NAME`` for the Transformers when
    given, else ``--NAME`` (e.g. eos_stop: None is the model's default)."""
    own = getattr(args, "tf_" + name)
    if model_type != "learn2track" and own is not None:
        return own
    return getattr(args, name)


def train(model_type, dataset, args):
    """Train with the shared budget; returns (experiment dir, best
    validation loss, CPU seconds, the best model's epoch)."""
    sampler = BatchSampler(dataset, "streamlines", args.batch_size,
                           args.batch_size, "nb_streamlines", seed=args.seed)
    loader = BatchLoaderOneInput(
        dataset, "streamlines", "input",
        InputSpec.from_options(step_size=args.step_size, nb_previous_dirs=2),
        split_ratio=args.split_ratio, reverse_ratio=0.5,
        noise_gaussian_size_forward=(args.noise_forward
                                     if model_type == "learn2track"
                                     else args.tf_noise_forward),
        noise_gaussian_size_loss=(args.noise_loss if model_type == "learn2track"
                                  else args.tf_noise_loss),
        seed=args.seed)
    learning_rate, scheduler = args.learning_rate, "cosine"
    optimization = {name: model_option(model_type, args, name)
                    for name in ("optimizer", "weight_decay", "clip_grad")}
    if model_type != "learn2track":
        learning_rate = args.tf_learning_rate or args.learning_rate
        scheduler = args.tf_lr_scheduler
    model = make_model(model_type, dataset.nb_features[
        dataset.volume_groups.index("input")], args)
    callbacks = []
    if args.best_model_metric != "valid_loss":
        # Whole-subject tracking of the validation subject at every epoch,
        # seeded as the testing subject is.
        callbacks.append(TrackingValidationCallback(TrackingValidationParams(
            every=1, mode="whole_subject", nb_seeds=args.nt,
            seeding_mask_group=("fibre_mask" if args.seeding == "fibres"
                                else "wm_mask"),
            tracking_mask_group="wm_mask",
            eos_stop=model_option(model_type, args, "eos_stop"))))
    trainer = DWIMLTrainerOneInput(
        model, args.out_dir, model_type, sampler, loader,
        max_epochs=args.max_epochs, learning_rate=learning_rate,
        lr_scheduler=scheduler, seed=args.seed, callbacks=callbacks,
        best_model_metric=args.best_model_metric, **optimization)
    trainer.save_parameters()
    start = time.process_time()
    trainer.train_and_validate()
    cpu = time.process_time() - start
    experiment = os.path.join(args.out_dir, model_type)
    valid_losses = np.load(os.path.join(experiment, "logs",
                                        "valid_loss.npy"))
    return (experiment, float(np.min(valid_losses)), cpu,
            trainer.best_tracker.best_epoch)


def track_subject(experiment, hdf5_file, subject, out, args, eos_stop=None):
    """Track one subject of the HDF5 file as the bench does (seeds in the
    fibre or white-matter mask, tracking in the white-matter mask, ``--nt``,
    ``--theta``, ``--seed``), with EOS threshold ``eos_stop`` (None: the
    model's default); writes the tractogram ``out``."""
    eos = [] if eos_stop is None else ["--eos_stop", str(eos_stop)]
    track_main([experiment, hdf5_file, subject, "input", out,
                "--tracking_mask_group", "wm_mask",
                "--seeding_mask_group",
                "fibre_mask" if args.seeding == "fibres" else "wm_mask",
                "--nt", str(args.nt),
                "--theta", str(args.theta), "--seed", str(args.seed), "-f",
                "-v", "WARNING", *eos])


def score_subject(out, grid, subject_data, volume_groups):
    """score_tractogram of the tractogram ``out`` (on the NIfTI ``grid``)
    against the subject's true streamlines (its first streamline group)."""
    tracked = load_tractogram_vox_corner(out, grid)
    true = subject_data.sft_data_list[0]
    mri = subject_data.mri_data_list[volume_groups.index("wm_mask")]
    return score_tractogram(
        tracked.streamlines,
        true.get_streamlines(np.arange(true.nb_streamlines)),
        mri.shape, mri.affine)


def track_and_score(experiment, paths, hdf5_file, dataset, args):
    """Track the testing subject; scores against its true streamlines."""
    subject = paths.splits["testing"][0]
    out = os.path.join(args.out_dir, os.path.basename(experiment) + ".trk")
    track_subject(experiment, hdf5_file, subject, out, args,
                  model_option(os.path.basename(experiment), args,
                               "eos_stop"))
    return score_subject(out, paths.subjects[subject].dwi,
                         dataset.testing_set.get_subject(0),
                         dataset.volume_groups)


def add_tracking_args(parser):
    """--nt and --theta, for this bench and those that track its models."""
    parser.add_argument("--nt", type=int, default=1000,
                        help="Seeds tracked per subject (default: 1000).")
    parser.add_argument("--theta", type=float, default=45.0,
                        help="Tracking's largest angle, degrees "
                             "(default: 45).")


@script_entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("out_dir", help="New folder for the data, the "
                                        "experiments and the tractograms.")
    parser.add_argument("--model_types", nargs="+", choices=MODEL_TYPES,
                        default=MODEL_TYPES,
                        help="Models to compare (default: all four).")
    parser.add_argument("--nb_streamlines", type=int, default=1000,
                        help="Streamlines per synthetic subject "
                             "(default: 1000).")
    parser.add_argument("--step_size", type=float, default=2.0,
                        help="Step size of the HDF5 and of tracking, mm "
                             "(default: 2, one voxel along x).")
    parser.add_argument("--batch_size", type=int, default=25,
                        help="Streamlines per training batch (default: 25).")
    parser.add_argument("--max_epochs", type=int, default=8,
                        help="Epochs for every model (default: 8).")
    parser.add_argument("--learning_rate", type=float, default=0.003,
                        help="Initial learning rate of Learn2track, cosine "
                             "schedule, and of the Transformers without "
                             "--tf_learning_rate (default: 0.003).")
    parser.add_argument("--d_model", type=int, default=64,
                        help="Width of the Transformers (default: 64).")
    parser.add_argument("--tf_learning_rate", type=float, default=None,
                        help="Initial learning rate of the Transformers "
                             "(default: --learning_rate).")
    parser.add_argument("--tf_lr_scheduler", default="cosine",
                        choices=("cosine", "onecycle", "constant"),
                        help="Schedule of the Transformers (default: cosine; "
                             "onecycle warms up then anneals).")
    parser.add_argument("--optimizer", default="Adam",
                        choices=("Adam", "AdamW", "RAdam"),
                        help="Optimizer of every model unless --tf_optimizer "
                             "(default: Adam).")
    parser.add_argument("--weight_decay", type=float, default=0.0,
                        help="Weight decay of every model unless "
                             "--tf_weight_decay (default: 0).")
    parser.add_argument("--clip_grad", type=float, default=None,
                        help="Gradient norm clipping of every model unless "
                             "--tf_clip_grad (default: none, unlike "
                             "dwiml_train_model.py's 1.0 since session 15, "
                             "so that earlier figures reproduce).")
    parser.add_argument("--tf_optimizer", default=None,
                        choices=("Adam", "AdamW", "RAdam"),
                        help="Optimizer of the Transformers (default: "
                             "--optimizer).")
    parser.add_argument("--tf_weight_decay", type=float, default=None,
                        help="Weight decay of the Transformers (default: "
                             "--weight_decay).")
    parser.add_argument("--tf_clip_grad", type=float, default=None,
                        help="Gradient norm clipping of the Transformers "
                             "(default: --clip_grad).")
    parser.add_argument("--activation", default="relu",
                        choices=("relu", "gelu"),
                        help="Feed-forward activation of the Transformers "
                             "(default: relu).")
    parser.add_argument("--noise_forward", type=float, default=0.1,
                        help="Sigma (mm) of the noise on Learn2track's input "
                             "points (--noise_gaussian_size_forward; "
                             "default: 0.1).")
    parser.add_argument("--tf_noise_forward", type=float, default=0.1,
                        help="The same for the Transformers (default: 0.1).")
    parser.add_argument("--noise_loss", type=float, default=0.0,
                        help="Sigma (mm) of the noise on Learn2track's target "
                             "streamlines (--noise_gaussian_size_loss; "
                             "default: 0).")
    parser.add_argument("--tf_noise_loss", type=float, default=0.0,
                        help="The same for the Transformers (default: 0).")
    parser.add_argument("--nheads", type=int, default=4,
                        help="Attention heads of the Transformers "
                             "(default: 4).")
    parser.add_argument("--n_layers", type=int, default=2,
                        help="Layers per Transformer stack (default: 2).")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="Dropout of the Transformers (default: 0).")
    parser.add_argument("--norm_first", action="store_true",
                        help="Pre-norm Transformer layers (default: "
                             "post-norm).")
    parser.add_argument("--ffnn_hidden_size", type=int, default=None,
                        help="Feed-forward width of the Transformers "
                             "(default: d_model / 2).")
    parser.add_argument("--tf_nb_previous_dirs", type=int, default=2,
                        help="Previous directions in the Transformers' "
                             "source tokens (default: 2, as Learn2track).")
    parser.add_argument("--position_encoding", default="learned",
                        choices=("learned", "sinusoidal", "none", "alibi"),
                        help="Position encoding of the Transformers "
                             "(default: learned; sinusoidal learned 1.7x "
                             "slower in our runs).")
    parser.add_argument("--attention_window", type=int, default=None,
                        help="Attention window of the Transformers "
                             "(default: none, every earlier point).")
    parser.add_argument("--split_ratio", type=float, default=0.5,
                        help="Share of the training streamlines split in "
                             "two, every model (default: 0.5). A split "
                             "piece's last point is an EOS target too, "
                             "unless --eos_only_at_fibre_ends.")
    parser.add_argument("--eos_only_at_fibre_ends", action="store_true",
                        help="With --add_eos: the last point of a split "
                             "piece that ends at the cut is left out of "
                             "the loss (default: an EOS target).")
    parser.add_argument("--add_eos", action="store_true",
                        help="Every model predicts an end of streamline "
                             "(EOS), and tracking stops where its "
                             "probability is above 0.5 (default: no EOS).")
    parser.add_argument("--eos_weight", type=float, default=1.0,
                        help="With --add_eos: the weight of the EOS loss "
                             "beside the direction loss, every model "
                             "unless --tf_eos_weight (default: 1.0).")
    parser.add_argument("--tf_eos_weight", type=float, default=None,
                        help="The same for the Transformers (default: "
                             "--eos_weight).")
    parser.add_argument("--eos_stop", type=eos_stop_value, default=None,
                        metavar="P|max",
                        help="With --add_eos: the EOS threshold of every "
                             "model unless --tf_eos_stop, for the testing "
                             "subject (dwiml_track_from_model.py's "
                             "--eos_stop) and for tracking validation "
                             "(--tracking_validation_eos_stop) (default: "
                             "the model's, 0.5).")
    parser.add_argument("--tf_eos_stop", type=eos_stop_value, default=None,
                        metavar="P|max",
                        help="The same for the Transformers (default: "
                             "--eos_stop).")
    parser.add_argument("--seeding", choices=("wm_mask", "fibres"),
                        default="wm_mask",
                        help="Where the testing subject's seeds are drawn: "
                             "the white-matter mask (the voxels the true "
                             "streamlines cross, dilated by one voxel, which "
                             "makes about 70 %% of it fibre-free), or those "
                             "voxels alone ('fibres'); tracking stays in the "
                             "white-matter mask (default: wm_mask).")
    parser.add_argument("--best_model_metric", default="valid_loss",
                        help="The monitor that picks every model's best "
                             "epoch: valid_loss, or a tracking metric "
                             "(e.g. tracking_points_within_1_vox), then "
                             "measured at each epoch by tracking --nt seeds "
                             "on the validation subject (default: "
                             "valid_loss).")
    add_tracking_args(parser)
    parser.add_argument("--seed", type=int, default=1,
                        help="Seed of the data, the models, the batches "
                             "and the seeds (default: 1).")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if os.path.lexists(args.out_dir):
        raise DwiMLUserError(
            f"out_dir '{args.out_dir}' already exists; expected a new folder "
            "(this bench writes its data, experiments and tractograms "
            "there).")
    os.makedirs(args.out_dir)
    paths, hdf5_file = make_data(args)
    dataset = MultiSubjectDataset(hdf5_file)
    dataset.load_data()
    rows = []
    for model_type in args.model_types:
        experiment, valid_loss, cpu, epoch = train(model_type, dataset, args)
        scores = track_and_score(experiment,
                                 paths, hdf5_file, dataset, args)
        rows.append((model_type, valid_loss, cpu, scores, epoch))
        print(f"{model_type}: done ({cpu:.0f} s CPU training)", flush=True)
    print(f"\n{args.nb_streamlines} streamlines per subject, "
          f"EOS {args.add_eos} (stop {args.eos_stop}, Transformers "
          f"{args.tf_eos_stop}), {args.position_encoding} positions, "
          f"attention window "
          f"{args.attention_window}, "
          f"{args.max_epochs} epochs of batches of {args.batch_size}, lr "
          f"{args.learning_rate} (cosine), {args.nt} seeds on the testing "
          f"subject; Transformers: d_model {args.d_model}, {args.nheads} "
          f"heads, {args.n_layers} layers, dropout {args.dropout}, "
          f"norm_first {args.norm_first}, ffnn {args.ffnn_hidden_size}, "
          f"{args.tf_nb_previous_dirs} previous dirs, lr "
          f"{args.tf_learning_rate or args.learning_rate} "
          f"({args.tf_lr_scheduler})\n")
    print("| model | best valid loss | training CPU (s) | tracked "
          "streamlines | points within 1 voxel | points within 30 deg | "
          f"best epoch ({args.best_model_metric}) |")
    print("|---|---|---|---|---|---|---|")
    for model_type, valid_loss, cpu, scores, epoch in rows:
        print(f"| {model_type} | {valid_loss:.4f} | {cpu:.0f} | "
              f"{scores['nb_tracked']:.0f} | "
              f"{scores['points_within_1_vox']:.3f} | "
              f"{scores['points_aligned']:.3f} | {epoch} |")


if __name__ == "__main__":
    main()

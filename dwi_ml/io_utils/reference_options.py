"""The reference dwi_ml's options for training, resuming, tracking,
plotting logs and showing the noise, on our scripts' terms.

The reference is scil-vital/dwi_ml: its ``l2t_*`` and ``tt_*`` train,
resume and track scripts, ``dwiml_visualize_logs.py`` and
``dwiml_visualize_noise_on_streamlines.py``, with the helpers
that add their options. Each table is given to
:func:`dwi_ml.io_utils.script_args.parse_script_args`: a :class:`SameAs`
option has here the same meaning and default under our name and is
accepted; a str says what to use instead of an option with no equivalent
here, or with another meaning or default; a dict gives, for the values of a
choice that we spell differently, what to use. ``*_SAME_NAMES`` lists the
reference options that we take under the same name (some with another
default: see docs/scripts.md).
"""
from dwi_ml.io_utils.script_args import SameAs

_LOGGING = "use -v [DEBUG|INFO|WARNING]"
_USE_GPU = "use --device cuda"
_EMBEDDING_KEYS = {"no_embedding": "use none here",
                   "nn_embedding": "use linear here (one linear layer)",
                   "cnn_embedding": "use cnn here (with --neighborhood_type "
                                    "grid)"}
_NOISE_SIZE_TRAINING = ("use --noise_gaussian_size_forward S (inputs) and "
                        "--noise_gaussian_size_loss S (targets)")
_FIXED_NOISE_SIGMA = ("the noise sigma is fixed here "
                      "(--noise_gaussian_size_forward); drop it")
_NO_COPY_PREV = ("the model predicts each direction itself here, not an "
                 "increment on the previous one; drop it")

TRAIN_REFERENCE_OPTIONS = {
    # Memory, logging, seed.
    "--rng": SameAs("--seed"),
    "--use_gpu": _USE_GPU,
    "--nbr_processes": "use --nb_workers N (DataLoader workers; default 0 "
                       "here)",
    "--processes": "use --nb_workers N (DataLoader workers; default 0 here)",
    "--logging": _LOGGING,
    "--taskman_managed": "progress is shown with -v INFO",
    # Batch sampler and loader.
    "--nb_streamlines_per_chunk": "length_mm batches are filled exactly "
                                  "here; drop it",
    "--noise_gaussian_size_training": _NOISE_SIZE_TRAINING,
    "--noise_gaussian_size_validation": "validation batches get no noise "
                                        "here; drop it",
    "--noise_gaussian_var_training": _FIXED_NOISE_SIGMA,
    "--noise_gaussian_var_validation": "validation batches get no noise "
                                       "here; drop it",
    # Tracking validation.
    "--add_a_tracking_validation_phase": "use --tracking_validation_every N "
                                         "(off by default)",
    "--tracking_phase_frequency": "use --tracking_validation_every N",
    "--tracking_mask": SameAs("--tracking_validation_tracking_mask_group"),
    **{option: "use --tracking_validation_nb_points K (points kept, i.e. "
               "segments + 1; default 5)"
       for option in ("--tracking_phase_nb_segments_init",
                      "--tracking_phase_nb_steps_init")},
    # Learn2track.
    "--prev_dirs_embedded_size": SameAs("--prev_dirs_embedding_size"),
    "--prev_dirs_embedding_key": {
        key: hint for key, hint in _EMBEDDING_KEYS.items()
        if key != "cnn_embedding"},
    "--input_embedding_key": _EMBEDDING_KEYS,
    "--input_embedded_size": "use --input_embedding_size N (Learn2track) or "
                             "--d_model N (Transformers: the token width)",
    "--nb_cnn_filters": "use --cnn_nb_filters N (one convolution, kernel 3)",
    "--kernel_size": "the cnn embedding's kernel is 3 here "
                     "(--cnn_nb_filters sets its filters); drop it",
    "--use_skip_connection": "skip connections are on by default here; "
                             "--no_skip_connection turns them off",
    "--use_layer_normalization": "layer normalisation is on by default "
                                 "here; --no_layer_norm turns it off",
    "--start_from_copy_prev": _NO_COPY_PREV,
    # Direction getters.
    "--dg_key": {"fisher-von-mises-mixture": "not available here; use "
                                             "fisher-von-mises or "
                                             "gaussian-mixture"},
    "--dg_nb_gaussians": SameAs("--nb_gaussians"),
    "--dg_nb_clusters": "the Fisher-von-Mises mixture is not available "
                        "here; use --dg_key gaussian-mixture with "
                        "--nb_gaussians N",
    "--add_entropy_to_gauss": "use --entropy_weight W (1.0 for the "
                              "reference's flag given alone)",
    # Transformers.
    "--model": "use --model_type transformer_original (TTO), "
               "transformer_src_only (TTS) or transformer_src_tgt (TTST)",
    "--dropout_rate": SameAs("--dropout"),
    "--SOS_token_type": "use --sos_token_type class (a class label) or "
                        "learned (a learned vector, the default)",
    "--target_embedding_key": _EMBEDDING_KEYS,
    "--position_encoding": {"relational": "use sinusoidal, learned, none or "
                                          "alibi"},
    "--norm_first": {value: "--norm_first is a flag here: give it alone "
                            "for True, leave it out for False"
                     for value in ("True", "False", "true", "false")},
}

TRAIN_SAME_NAMES = (
    "--batch_size_training", "--batch_size_validation", "--batch_size_units",
    "--nb_subjects_per_batch", "--cycles", "--step_size", "--compress",
    "--nb_points", "--noise_gaussian_size_forward",
    "--noise_gaussian_size_loss", "--split_ratio", "--reverse_ratio",
    "--learning_rate", "--weight_decay", "--optimizer", "--max_epochs",
    "--patience", "--patience_delta", "--max_batches_per_epoch_training",
    "--max_batches_per_epoch_validation", "--clip_grad", "--comet_workspace",
    "--comet_project", "--lazy", "--cache_size", "--nb_previous_dirs",
    "--prev_dirs_embedding_key", "--prev_dirs_embedding_size",
    "--normalize_prev_dirs", "--input_embedding_key", "--neighborhood_type",
    "--neighborhood_radius", "--neighborhood_resolution", "--rnn_key",
    "--rnn_layer_sizes", "--dropout", "--dg_key", "--dg_dropout",
    "--normalize_targets", "--normalize_outputs", "--add_eos",
    "--eos_weight", "--sphere", "--max_len", "--nheads", "--n_layers_e",
    "--n_layers_d", "--ffnn_hidden_size", "--activation", "--norm_first",
    "--position_encoding", "--target_embedding_key",
    "--target_embedded_size")

RESUME_REFERENCE_OPTIONS = {
    "--logging": _LOGGING,
    "--use_gpu": _USE_GPU,
    "--nbr_processes": "use --nb_workers N (DataLoader workers)",
    "--processes": "use --nb_workers N (DataLoader workers)",
}

RESUME_SAME_NAMES = ("--hdf5_file", "--new_patience", "--new_max_epochs")

TRACK_REFERENCE_OPTIONS = {
    "--logging": _LOGGING,
    "--use_gpu": _USE_GPU,
    **{option: "tracking runs in batches on one device here (--batch_size "
               "N, --device); drop it"
       for option in ("--nbr_processes", "--processes")},
    "--simultaneous_tracking": "use --batch_size N (streamlines tracked at "
                               "once; default 1000)",
    "--rng_seed": "use --seed N (default 1234)",
    "--rng": "use --seed N (default 1234)",
    "--skip": "a streamline's draws depend only on --seed and its seed's "
              "index here: give another --seed for new streamlines",
    "--subset": "the subject is found in any split here; drop it",
    "--lazy": "only the tracked subject is read here; drop it",
    "--cache_size": "only the tracked subject is read here; drop it",
    "--data_interp": "inputs are always interpolated trilinearly here; drop "
                     "it",
    "--max_invalid_len": "use --max_invalid_nb_points N (points, default 0)",
    "--save_seeds": "seeds are always saved here (data_per_streamline "
                    "'seeds', not in .tck); drop it",
    "--sphere": "a classification model tracks on the sphere it was "
                "trained with; drop it",
    "--compress": SameAs("--compress_th"),
    "--step": "use --step_size MM (default: the model's step, not 0.5)",
}

TRACK_SAME_NAMES = (
    "--algo", "--step_size", "--track_forward_only", "--mask_interp",
    "--min_length", "--max_length", "--tracking_mask_group", "--theta",
    "--eos_stop", "--discard_last_point", "--max_invalid_nb_points",
    "--npv", "--nt", "--use_latest_epoch")

VISUALIZE_LOGS_REFERENCE_OPTIONS = {
    "--show_now": SameAs("--show"),
    "--ylims": SameAs("--ylim"),
    "--save_figures": "the figures are always written: give their prefix "
                      "with --out PREFIX",
    "--allow_missing": "a log missing from an experiment is a warning "
                       "here; drop it",
    "--logging": _LOGGING,
}

VISUALIZE_LOGS_SAME_NAMES = (
    "--save_to_csv", "--graph", "--nb_plots_per_fig", "--xlim",
    "--remove_outliers")

VISUALIZE_NOISE_REFERENCE_OPTIONS = {
    "--noise_gaussian_var_forward": _FIXED_NOISE_SIGMA,
    "--noise_gaussian_size_training": _NOISE_SIZE_TRAINING,
    "--logging": _LOGGING,
}

VISUALIZE_NOISE_SAME_NAMES = (
    "--subset", "--step_size", "--compress", "--noise_gaussian_size_forward",
    "--noise_gaussian_size_loss", "--split_ratio", "--reverse_ratio")

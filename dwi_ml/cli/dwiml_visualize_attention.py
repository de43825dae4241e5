"""See what a trained Transformer attends to, on a few streamlines."""
import os

from dwi_ml.io_utils.arg_checks import check_device
from dwi_ml.io_utils.atomic import atomic_output_folder
from dwi_ml.io_utils.errors import DwiMLUserError, script_entry_point
from dwi_ml.io_utils.output_folders import (
    check_output_folder,
    mark_output_folder,
    seal_output_folder,
)
from dwi_ml.io_utils.script_args import (
    add_experiment_group_args,
    add_experiment_subject_args,
    add_output_args,
    check_inputs_exist,
    make_parser,
    parse_script_args,
)
from dwi_ml.monitoring.attention_views import (
    check_transformer,
    draw_heatmap,
    heatmap_names,
    save_attention_tractogram,
    subject_attention,
)
from dwi_ml.training.experiment_builder import load_experiment_model_for

TRACTOGRAM_NAME = "streamlines_attention.trk"
DEFAULT_IDS = (0, 1, 2)

DESCRIPTION = f"""\
Run the Transformer model of an experiment (its best model, or its latest
epoch with --use_latest_epoch) over a few streamlines of one subject of a
dwi_ml HDF5 file, as in validation (no augmentation), and show its
attention weights. OUT_DIR receives:

- one PNG heatmap per layer and head of each attention, named
  ATTENTION_layerL_headH.png, with one panel per streamline: query position
  (the point attending, rows) against key position (the point attended
  to, columns), with a colour bar. ATTENTION is 'encoder' (self-attention
  of the encoder, every model), and for transformer_original 'decoder'
  (the decoder's self-attention) and 'cross' (the decoder's attention to
  the encoder's outputs). Position t is the t-th point of the streamline;
  attention is causal, so the upper triangle is 0;
- {TRACTOGRAM_NAME}: those streamlines (as the model saw them, in the
  subject's space) with two data_per_point keys, averaged over every
  self-attention layer and head: 'attention_received', the mean weight
  that the points allowed to see a point (itself and the later ones) give
  it, in [0, 1]; 'most_attended_from', the index of the point that gives
  it its largest weight. A point without a position (the last one, for a
  model without EOS) gets 0 and its own index. TrackVis and MI-Brain show
  them as colours.

The weights are computed, for this view only, from the same queries and
keys as the model's attention kernel (whose outputs are unchanged). A
Learn2track experiment is refused. OUT_DIR must be new or empty, or (with
-f) a folder this script wrote before. Every input is checked before any
work."""


def _build_parser():
    parser = make_parser(DESCRIPTION)
    add_experiment_subject_args(parser, "The experiment folder (a Transformer).")
    parser.add_argument("out_dir", metavar="OUT_DIR",
                        help="Output folder for the PNGs and the .trk.")
    model = parser.add_argument_group("Model and data")
    model.add_argument("--streamline_ids", type=int, nargs="+",
                       default=list(DEFAULT_IDS), metavar="ID",
                       help="Indices of the streamlines in the subject's "
                            "streamline group.")
    # All the streamlines go through the model at once: no --batch_size.
    model.add_argument("--use_latest_epoch", action="store_true",
                       help="Use the checkpoint's model, not best_model/.")
    model.add_argument("--device", default="cpu",
                       help="'cpu' or 'cuda[:N]'.")
    add_experiment_group_args(model, "to read")
    add_output_args(parser)
    return parser


@script_entry_point
def main(argv=None):
    """Entry point of dwiml_visualize_attention.py."""
    args = parse_script_args(_build_parser(), argv)
    check_inputs_exist(args.experiment_path, what="experiment")
    check_inputs_exist(args.hdf5_file, what="HDF5 file")
    check_device(args.device, "--device")
    if len(set(args.streamline_ids)) != len(args.streamline_ids):
        raise DwiMLUserError(
            f"--streamline_ids: expected distinct IDs, found "
            f"{args.streamline_ids}.")
    check_output_folder(args.out_dir, "attention_views", args.overwrite)
    model, input_group, streamline_group = load_experiment_model_for(args)
    check_transformer(model, args.experiment_path)

    attention = subject_attention(model, args.hdf5_file, args.subject_id,
                                  input_group, streamline_group,
                                  args.streamline_ids, args.device)
    names = heatmap_names(attention)
    # Written whole in a temporary folder, then swapped in: the previous
    # views stay complete until then (-f stopped midway loses nothing).
    with atomic_output_folder(args.out_dir) as tmp_dir:
        for name, layer, head, file_name in names:
            figure = draw_heatmap(attention, name, layer, head)
            figure.savefig(os.path.join(tmp_dir, file_name), format="png")
        save_attention_tractogram(attention,
                                  os.path.join(tmp_dir, TRACTOGRAM_NAME))
        mark_output_folder(tmp_dir, "attention_views")
        seal_output_folder(tmp_dir)
        # Again before the swap: what came there meanwhile is not lost.
        check_output_folder(args.out_dir, "attention_views", args.overwrite)
    print(f"Saved {len(names)} heatmaps and {TRACTOGRAM_NAME} in "
          f"{args.out_dir}.")


if __name__ == "__main__":
    main()

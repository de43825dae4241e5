"""What an output was made from, recorded with it.

A number or a tractogram is only worth what one knows of how it was made.
The scripts that run a trained model record that model
(:func:`model_provenance`: the experiment, best or latest model, its epoch,
the sha256 of its weights, the dwi_ml version), and every script that
writes a JSON records its inputs and options (:func:`run_record`).

A tractogram cannot hold such a record (a .tck has a bare header, and
dipy's writers take no extra header fields), so it goes in a JSON file
beside it, its *provenance sidecar* ``OUT.trk.json``
(:func:`provenance_path`). The sidecar is an output like any other: it is
checked free before any work, written atomically, and replaced with ``-f``
only when it is one of ours (its ``kind``). It records the sha256 of the
tractogram it describes, so that :func:`read_provenance` never attributes
a record to a tractogram replaced since.
"""
import os

from dwi_ml import __version__
from dwi_ml.io_utils.atomic import write_json_atomic
from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import BEST_EPOCH_FILE, read_model_epoch
from dwi_ml.io_utils.manifest import file_sha256
from dwi_ml.io_utils.output_folders import (
    PROVENANCE_KIND,
    PROVENANCE_SUFFIX,
    PROVENANCE_WHAT,
    check_output_free,
    is_provenance_sidecar,
    provenance_record,
)

# Arguments that change how a script runs or talks, not what it writes.
_NOT_RECORDED = ("overwrite", "verbose", "options_given", "argv")


def model_provenance(experiment_dir, use_latest_epoch, weights_path):
    """Which model of an experiment was used, as JSON-ready values.

    Call it while reading the model (inside the read that
    :func:`~dwi_ml.models.model_io.load_model_of_experiment` repeats when
    a running training replaces the model meanwhile), so that the epoch
    and the hash are those of the weights loaded.

    Parameters
    ----------
    experiment_dir : str
    use_latest_epoch : bool
        The checkpoint's model instead of the best model.
    weights_path : str
        The weights file that was loaded.

    Returns
    -------
    dict
        ``experiment`` (absolute path), ``model`` ('best' or 'latest'),
        ``epoch`` (0-based; None for a best model saved without its
        ``best_epoch.json``, by hand), ``epoch_complete`` (False for a
        checkpoint written inside an epoch, None when the epoch is
        unknown), ``weights_sha256`` (as in the folder's
        ``MANIFEST.sha256``) and ``dwi_ml_version``.
    """
    if use_latest_epoch or os.path.isfile(os.path.join(
            os.path.dirname(weights_path), BEST_EPOCH_FILE)):
        epoch, epoch_complete = read_model_epoch(experiment_dir,
                                                 use_latest_epoch)
    else:
        # A best_model/ saved by hand (save_params_and_state) records none.
        epoch = epoch_complete = None
    return {"experiment": os.path.abspath(experiment_dir),
            "model": "latest" if use_latest_epoch else "best",
            "epoch": epoch, "epoch_complete": epoch_complete,
            "weights_sha256": file_sha256(weights_path),
            "dwi_ml_version": __version__}


def run_record(args, input_paths=(), other_inputs=(), leave_out=()):
    """The inputs and options of a script's run, and the dwi_ml version.

    Parameters
    ----------
    args : argparse.Namespace
        The run's parsed arguments.
    input_paths : sequence of str
        Names of the arguments that are input files (recorded absolute).
    other_inputs : sequence of str
        Names of other arguments that say which data was read (a subject).
    leave_out : sequence of str
        Names of arguments recorded elsewhere (the outputs, the
        experiment of :func:`model_provenance`).

    Returns
    -------
    dict
        ``inputs``, ``options`` (every other argument, by its name, at the
        value used, defaults included; not ``-f`` and ``-v``), ``argv``
        (the arguments as typed, when parsed by
        :func:`~dwi_ml.io_utils.script_args.parse_script_args`; else None)
        and ``dwi_ml_version``.
    """
    values = vars(args)
    inputs = {name: None if values[name] is None
              else os.path.abspath(values[name]) for name in input_paths}
    inputs.update({name: values[name] for name in other_inputs})
    skipped = {*inputs, *leave_out, *_NOT_RECORDED}
    options = {name: value for name, value in sorted(values.items())
               if name not in skipped}
    return {"inputs": inputs, "options": options,
            "argv": getattr(args, "argv", None),
            "dwi_ml_version": __version__}


def provenance_path(output_path):
    """The provenance sidecar of an output file: ``OUT.trk`` ->
    ``OUT.trk.json`` (the extension kept: ``OUT.trk`` and ``OUT.tck`` have
    their own)."""
    return output_path + PROVENANCE_SUFFIX


def check_provenance_free(output_path, overwrite):
    """Check, before any work, that the sidecar of ``output_path`` may be
    written: as :func:`~dwi_ml.io_utils.output_folders.check_output_free`,
    and an existing file is replaced (``-f``) only when it is a sidecar
    written by dwi_ml.

    Raises
    ------
    DwiMLUserError
    """
    path = provenance_path(output_path)
    check_output_free(path, overwrite, what=PROVENANCE_WHAT)
    if os.path.lexists(path) and not is_provenance_sidecar(path):
        raise DwiMLUserError(
            f"provenance sidecar '{path}' exists and is not a dwi_ml "
            f"provenance file (no \"kind\": \"{PROVENANCE_KIND}\"): refused "
            "with or without -f; move it or give another output name.")


def remove_provenance(output_path):
    """Remove the sidecar of ``output_path`` (checked to be ours by
    :func:`check_provenance_free`) before the output is replaced: a run
    that stops between the two writes then leaves an output without a
    record, never one with the record of the output it replaced."""
    path = provenance_path(output_path)
    if os.path.lexists(path) and is_provenance_sidecar(path):
        os.remove(path)


def write_provenance(output_path, record):
    """Write the sidecar of the written ``output_path``, atomically.

    Parameters
    ----------
    output_path : str
        The complete output file.
    record : dict
        JSON values (no NaN), written with ``kind``, ``output`` (the
        file's name) and ``output_sha256``, keys sorted.
    """
    write_json_atomic(provenance_path(output_path), {
        "kind": PROVENANCE_KIND, "output": os.path.basename(output_path),
        "output_sha256": file_sha256(output_path), **record})


def read_provenance(output_path):
    """The sidecar record of ``output_path``, or None when it has none, or
    one that is not ours or describes another version of the file (its
    ``output_sha256`` differs)."""
    record = provenance_record(provenance_path(output_path))
    if record is None or \
            record.get("output_sha256") != file_sha256(output_path):
        return None
    return record

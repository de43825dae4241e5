"""Fine-tuning: a new experiment that starts from another one's model.

``dwiml_train_model.py --pretrained EXPERIMENT`` takes the model type,
options and weights of EXPERIMENT's best model (or of its checkpoint's
model, ``--pretrained_use_latest_epoch``); the data, sampler, loader and
trainer come from the command line as for any run. ``parameters.json``
records where the weights came from, in its ``pretrained`` section::

    {"experiment": ABSOLUTE_PATH, "use_latest_epoch": false, "epoch": 4,
     "weights_sha256": "...", "valid_loss": 0.0321}

``valid_loss`` is the pretrained model's loss on the new run's validation
set (up to :data:`~dwi_ml.training.copy_previous.BASELINE_MAX_STREAMLINES`
streamlines of each subject), computed once before the first epoch and
logged at each epoch as ``pretrained_valid_loss``: where fine-tuning
starts from. A resumed run reads it back from ``parameters.json``.
"""
import math
import os

from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.models.model_io import load_model_of_experiment
from dwi_ml.training.callbacks import Callback

PRETRAINED_LOG = "pretrained_valid_loss"


def load_pretrained(experiment_dir, use_latest_epoch=False):
    """The model of an experiment, to start another experiment from.

    Parameters
    ----------
    experiment_dir : str
    use_latest_epoch : bool
        The checkpoint's model instead of the best model.

    Returns
    -------
    model : MainModelAbstract
        On the CPU.
    info : dict
        The ``pretrained`` section of ``parameters.json`` (without
        ``valid_loss``).

    Raises
    ------
    DwiMLUserError
        Not an experiment folder, or no model to read.
    """
    if not os.path.isdir(experiment_dir):
        raise DwiMLUserError(
            f"argument --pretrained: expected an experiment folder, found no "
            f"folder '{experiment_dir}'.")
    try:
        model, provenance = load_model_of_experiment(
            experiment_dir, use_latest_epoch, with_provenance=True)
    except DwiMLUserError as error:
        raise DwiMLUserError(f"argument --pretrained: {error}") from None
    return model, {"experiment": provenance["experiment"],
                   "use_latest_epoch": use_latest_epoch,
                   "epoch": provenance["epoch"],
                   "weights_sha256": provenance["weights_sha256"]}


def pretrained_valid_loss(model, trainer):
    """The loss of ``model`` (the pretrained weights) on ``trainer``'s
    validation set, or None without validation or for a model that is not
    a direction-getter model."""
    # Imported here: evaluation reads the experiment builder, which reads
    # this module.
    from dwi_ml.training.copy_previous import BASELINE_MAX_STREAMLINES
    from dwi_ml.training.evaluation import evaluate_model
    loader = trainer.batch_loader
    if not trainer.use_validation or getattr(model, "direction_getter",
                                             None) is None:
        return None
    was_training = model.training
    model.eval()
    try:
        return evaluate_model(
            model, loader.dataset, "validation", loader.input_group,
            loader.streamline_group, device=trainer.device,
            max_streamlines=BASELINE_MAX_STREAMLINES)["all"]["loss"]
    finally:
        model.train(was_training)


class PretrainedBaseline(Callback):
    """Log ``pretrained_valid_loss`` at each epoch: the pretrained model's
    validation loss, read from the ``pretrained`` section of the run's
    parameters (NaN when it has none)."""

    name = None  # no state: the value is in parameters.json

    def __init__(self, pretrained_info):
        self.pretrained_info = pretrained_info

    def on_validation_end(self, trainer, epoch):
        value = self.pretrained_info.get("valid_loss")
        trainer.monitors.get_or_create(PRETRAINED_LOG).set_epoch_value(
            math.nan if value is None else value)

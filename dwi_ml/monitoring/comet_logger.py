"""Send a training run to Comet, online or as an offline archive.

``comet_ml`` is optional: it is imported only when a Comet experiment is
created, so importing dwi_ml never imports it. Comet never stops a run: the
first failure prints one warning and the run goes on with its local logs
(``EXPERIMENT/logs/*.npy``).

Metric names are those of the ``.npy`` logs (``train_loss``,
``valid_loss``, ``learning_rate``...), with ``step = epoch``, plus
``best_epoch`` and ``best_loss`` (as in ``best_model/best_epoch.json``).
``train_loss_per_batch`` (optional) uses the global batch index as step:
the row of ``logs/train_loss_per_batch.npy``. The run records which steps
it logged (:func:`add_logged_step`), so that values sent after the run
(:mod:`~dwi_ml.monitoring.comet_upload`) leave out those Comet has.
"""
import contextlib
import logging
import math
import os
import random
import sys

from dwi_ml.io_utils.errors import DwiMLUserError
from dwi_ml.io_utils.experiment_layout import PARAMETERS_FILE, read_parameters
from dwi_ml.io_utils.script_args import quiet_logger
from dwi_ml.training.callbacks import Callback

logger = logging.getLogger(__name__)

PER_BATCH_METRIC = "train_loss_per_batch"
COMET_RETRY_VARIABLE = "COMET_HTTP_SESSION_RETRY_TOTAL"

# Comet's automatic logging would duplicate what the callback logs itself
# (hyper-parameters, metrics, model graph), log the command line twice, or
# fill the experiment with progress bars (console output).
_EXPERIMENT_OPTIONS = dict(
    log_code=False, log_graph=False, auto_param_logging=False,
    auto_metric_logging=False, parse_args=False, auto_output_logging=False,
    log_git_patch=False, display_summary_level=0)


def import_comet():
    """Import and return ``comet_ml``.

    Two Comet features are turned off unless the user's environment says
    otherwise: its import hooks, which only serve automatic logging (off
    here) and warn that torch was imported first; and its reports of its
    own errors to Comet's Sentry server, which, without network (offline
    runs on a cluster), fill the log with retry warnings.
    """
    os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")
    os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")
    try:
        import comet_ml
    except ImportError as error:
        if getattr(error, "name", None) not in (None, "comet_ml"):
            # Installed, but something it imports is not.
            raise DwiMLUserError(
                f"the Comet options need the comet_ml package, which is "
                f"installed but failed to import ({error}); upgrade it: pip "
                "install -U comet_ml.") from None
        raise DwiMLUserError(
            f"the Comet options need the comet_ml package ({error}).") from None
    return comet_ml


def comet_api_key_is_set():
    """True when Comet finds an API key (COMET_API_KEY or its config file)."""
    return bool(import_comet().get_config()["comet.api_key"])


def describe_comet_error(error):
    """A short one-line description of ``error``, API key removed."""
    text = " ".join(str(error).split()) or "no message"
    # Read the key only where comet_ml is already loaded: this runs in error
    # handlers, which must not fail themselves.
    comet_ml = sys.modules.get("comet_ml")
    api_key = (comet_ml.get_config()["comet.api_key"] if comet_ml
               else os.environ.get("COMET_API_KEY"))
    if api_key:
        text = text.replace(api_key, "***")
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(error).__name__}: {text}"


def check_comet_workspace(workspace, then=None):
    """Reach Comet and raise a clear error when it does not know
    ``workspace``; return False when Comet cannot be reached.

    The check is the run's first contact with Comet. When it fails (no
    network, a bad key), it warns once and returns False: the run goes on
    without Comet, rather than retrying every later call for a minute and
    printing a warning for each retry. Comet's own HTTP retries are off
    for the check unless COMET_HTTP_SESSION_RETRY_TOTAL says otherwise.

    ``then``: what follows, said in the warning (default: a training run's
    "the run goes on without Comet"); "" for a caller that stops there, in
    its own error.
    """
    if then is None:
        then = ("the run goes on without Comet, its logs are in the "
                "experiment's logs/ folder")
    comet_ml = import_comet()
    try:
        with quiet_logger("comet_ml"), quiet_logger("urllib3"), \
                _environment_default(COMET_RETRY_VARIABLE, "0"):
            workspaces = comet_ml.API().get_workspaces()
    except Exception as error:  # comet raises requests' and its own errors
        if then:
            logger.warning(
                "Comet could not be reached to check the workspace '%s' "
                "(%s); %s.", workspace, describe_comet_error(error), then)
        else:
            logger.warning(
                "Comet could not be reached to check the workspace '%s' "
                "(%s).", workspace, describe_comet_error(error))
        return False
    if workspace not in workspaces:
        raise DwiMLUserError(
            f"--comet_workspace: '{workspace}' is not one of your Comet "
            f"workspaces ({', '.join(sorted(workspaces)) or 'none'}).")
    return True


@contextlib.contextmanager
def _environment_default(name, value):
    """Environment variable ``name`` is ``value`` in the block, unless set."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        del os.environ[name]


# Comet's own measures of the machine (CPU, GPU, disk use, host details)
# and of the git checkout: off for a process that only sends logs written
# by another run.
_NO_SYSTEM_METRICS = dict(
    log_env_details=False, log_env_gpu=False, log_env_host=False,
    log_env_cpu=False, log_env_disk=False, log_git_metadata=False)


def create_comet_experiment(workspace=None, project=None, offline_dir=None,
                            experiment_key=None, system_metrics=True):
    """Create or continue a Comet experiment.

    Parameters
    ----------
    workspace, project : str or None
        Where the experiment goes (for an offline archive: once uploaded).
    offline_dir : str or None
        None logs online; otherwise the folder of the offline archive
        (``KEY.zip``, uploaded later with ``comet upload``).
    experiment_key : str or None
        Continue this experiment (resumed training) instead of creating
        one. A continued offline experiment writes a new archive,
        ``KEY-XXXXXX.zip``, that adds to the first one once both are
        uploaded.
    system_metrics : bool
        Let Comet log this machine's CPU, GPU, disk and host details (as
        it does for a training run); False for a process that does not
        train.

    Returns
    -------
    comet_ml.Experiment, ExistingExperiment, OfflineExperiment or
    ExistingOfflineExperiment
        Online, ``experiment.alive`` is False when Comet could not be
        reached.
    """
    comet_ml = import_comet()
    options = dict(_EXPERIMENT_OPTIONS,
                   **({} if system_metrics else _NO_SYSTEM_METRICS))
    if offline_dir is None:
        # Comet logs errors of its own when it cannot connect; the callback
        # says it once, in its own words, so Comet's are held back here.
        with quiet_logger("comet_ml"):
            if experiment_key:
                return comet_ml.ExistingExperiment(
                    experiment_key=experiment_key, **options)
            return comet_ml.Experiment(workspace=workspace,
                                       project_name=project, **options)
    options.update(workspace=workspace, project_name=project,
                   offline_directory=offline_dir)
    with _python_random_from_entropy():
        if experiment_key:
            return comet_ml.ExistingOfflineExperiment(
                experiment_key=experiment_key, **options)
        return comet_ml.OfflineExperiment(**options)


def add_logged_step(ranges, step, every=1):
    """Record ``step`` in ``ranges``, a list of ``[first, last, every]``
    (the steps ``first, first + every, ..., last``); a step that continues
    the last range extends it, so a run's record stays a few numbers."""
    if ranges and ranges[-1][2] == every and ranges[-1][1] + every == step:
        ranges[-1][1] = step
    else:
        ranges.append([step, step, every])


def logged_steps(ranges):
    """The set of steps of ``ranges`` (see :func:`add_logged_step`)."""
    return {step for first, last, every in ranges
            for step in range(first, last + 1, every)}


@contextlib.contextmanager
def _python_random_from_entropy():
    """Python's ``random`` seeded from the system's entropy inside, its
    state as it was outside.

    Comet draws a resumed offline archive's name suffix (``KEY-XXXXXX.zip``)
    from ``random``, which a seeded run seeds: every first resume of an
    experiment (or of its copy) drew the same name, and one archive
    replaced another. The run's own draws are left as they were: Comet's
    other draws (as it logs and ends) had moved the run's state, so a run
    with Comet, or resumed with it, ended in another state than without.
    """
    state = random.getstate()
    random.seed()
    try:
        yield
    finally:
        random.setstate(state)


class CometCallback(Callback):
    """Trainer callback logging the run to one Comet experiment.

    The experiment is created at ``on_train_start`` on the main process
    only (``trainer.is_main_process``, True when absent). Its key is this
    callback's state (``experiment_key``), saved in the trainer's checkpoint
    under ``callbacks['comet']``; on resume, the same experiment is
    continued. The state also records the epochs and the rows of
    ``train_loss_per_batch`` logged to that experiment (``logged_epochs``,
    ``logged_batches``: :func:`add_logged_step` ranges), or None for each
    when unknown: an experiment continued from a checkpoint written before
    dwi_ml recorded them.

    Parameters
    ----------
    workspace, project, offline_dir : str or None
        See :func:`create_comet_experiment`.
    hyperparameters : dict or None
        Logged at each start; nested dicts appear as ``outer|inner``.
        None logs the experiment's ``parameters.json`` as it is when
        training starts (the training scripts write it just before).
    experiment_name : str or None
        Name given to a new experiment (e.g. the experiment folder's name).
    log_every : int or None
        Log the training loss every ``log_every`` batches; 0 never. None:
        the checkpoint's value on resume (it is part of the state), else 0.
    experiment_key : str or None
        Experiment to continue; None creates a new experiment unless a
        checkpoint's state gives one (:meth:`load_state_dict`).
    """

    name = "comet"

    def __init__(self, workspace=None, project=None, offline_dir=None,
                 hyperparameters=None, experiment_name=None, log_every=None,
                 experiment_key=None):
        self.workspace = workspace
        self.project = project
        self.offline_dir = offline_dir
        self.hyperparameters = hyperparameters
        self.experiment_name = experiment_name
        self._log_every_given = log_every is not None
        self.log_every = log_every or 0
        self.experiment_key = experiment_key
        # A key given here comes from a checkpoint that kept no record.
        self.logged_epochs = None if experiment_key else []
        self.logged_batches = None if experiment_key else []
        self.experiment = None

    @property
    def mode(self):
        """'online' or 'offline'."""
        return "online" if self.offline_dir is None else "offline"

    def on_train_start(self, trainer):
        if not getattr(trainer, "is_main_process", True):
            return
        self._guarded(self._start, trainer, self.experiment_key)

    def _start(self, trainer, key):
        experiment = create_comet_experiment(
            self.workspace, self.project, self.offline_dir, key)
        if not experiment.alive:
            raise ConnectionError(
                "Comet could not be reached or refused the experiment "
                "(network, API key or experiment key)")
        self.experiment = experiment
        self.experiment_key = experiment.get_key()
        if key is None:
            self.logged_epochs, self.logged_batches = [], []
        if key is None and self.experiment_name:
            experiment.set_name(self.experiment_name)
        experiment.log_parameters(self._hyperparameters(trainer))
        experiment.set_model_graph(str(trainer.model))
        logger.info("Comet %s experiment %s.", self.mode,
                    "continued" if key else "created")

    def _hyperparameters(self, trainer):
        if self.hyperparameters is not None:
            return self.hyperparameters
        if os.path.isfile(os.path.join(trainer.experiment_dir,
                                       PARAMETERS_FILE)):
            return read_parameters(trainer.experiment_dir)
        logger.info("No %s yet: no hyper-parameters logged to Comet.",
                    PARAMETERS_FILE)
        return {}

    def state_dict(self):
        """``{'experiment_key': key, 'log_every': N, 'logged_epochs':
        ranges, 'logged_batches': ranges}`` once an experiment exists (no
        ranges when unknown)."""
        if self.experiment_key is None:
            return None
        state = {"experiment_key": self.experiment_key,
                 "log_every": self.log_every}
        if self.logged_epochs is not None:
            state.update(logged_epochs=self.logged_epochs,
                         logged_batches=self.logged_batches)
        return state

    def load_state_dict(self, state):
        """Continue the experiment of a checkpoint, logging the training
        loss as often as it did unless told otherwise (a resume without
        --comet_log_every stopped the per-batch curve)."""
        self.experiment_key = state.get("experiment_key")
        # Absent from the checkpoints of earlier versions: unknown.
        self.logged_epochs = state.get("logged_epochs")
        self.logged_batches = state.get("logged_batches")
        if not self._log_every_given:
            self.log_every = int(state.get("log_every") or 0)

    def on_epoch_end(self, trainer, epoch, epoch_logs):
        if self.experiment is not None:
            self._guarded(self._log_epoch, trainer, epoch, epoch_logs)

    def _log_epoch(self, trainer, epoch, epoch_logs):
        # A NaN (e.g. valid_loss without a validation set) is no value.
        metrics = {name: value for name, value in epoch_logs.items()
                   if not (isinstance(value, float)
                           and not math.isfinite(value))}
        best = trainer.best_tracker
        metrics["best_epoch"] = best.best_epoch
        if math.isfinite(best.best_loss):
            metrics["best_loss"] = best.best_loss
        self.experiment.log_metrics(metrics, step=epoch, epoch=epoch)
        if self.logged_epochs is not None:
            add_logged_step(self.logged_epochs, epoch)

    def on_train_batch_end(self, trainer, batch, outputs):
        if self.experiment is None or not self.log_every:
            return
        # Row of this batch in logs/train_loss_per_batch.npy; it continues
        # across resumes because the monitor is saved in the checkpoint.
        global_batch = len(trainer.monitors["train_loss"].batch_history) - 1
        if global_batch % self.log_every == 0:
            self._guarded(self._log_batch, trainer, global_batch,
                          outputs["loss"])

    def _log_batch(self, trainer, global_batch, loss):
        self.experiment.log_metric(PER_BATCH_METRIC, loss, step=global_batch,
                                   epoch=trainer.current_epoch)
        if self.logged_batches is not None:
            add_logged_step(self.logged_batches, global_batch, self.log_every)

    def on_train_end(self, trainer):
        if self.experiment is not None:
            self._guarded(self.experiment.end)
            self.experiment = None

    def _guarded(self, function, *args, **kwargs):
        """Call ``function``; on any error, warn once and stop using Comet.
        Python's ``random`` is left as it was: Comet draws from it when it
        logs and ends (see :func:`_python_random_from_entropy`)."""
        try:
            with _python_random_from_entropy():
                function(*args, **kwargs)
        except Exception as error:  # Comet must never stop a training run
            self.experiment = None
            logger.warning(
                "Comet (%s) stopped: %s. Training goes on; the logs are in "
                "the experiment's logs/ folder.", self.mode,
                describe_comet_error(error))

"""DWIMLAbstractTrainer: the epoch loop of dwi_ml.

``train_and_validate`` reads like the pseudocode of the docs::

    for each epoch until max_epochs or patience:
        train_one_epoch      (per batch: run_one_batch, back_propagation,
                              optimizer_step every grad_accumulation_steps)
        validate_one_epoch   (per batch: run_one_batch, no gradients)
        end_epoch            (monitors, LR scheduler, best epoch)
        save_best_model      (if this epoch is the best)
        save_checkpoint

After each optimizer step and validation batch the trainer polls its
:class:`~dwi_ml.training.interruptions.RunInterruptions`: a stop signal or
``max_time`` ends the run with a checkpoint of its exact position inside the
epoch (:class:`~dwi_ml.training.epoch_position.EpochPosition`), and
``checkpoint_every_n_batches``/``checkpoint_every_minutes`` write the same
checkpoint and go on. A run resumed from it continues as if never stopped.

Every step is a method a model author can override. Progress bars, the NaN
check, the ``.npy`` logs, Comet and the log line are callbacks
(:mod:`dwi_ml.training.callbacks`). Saving and resuming live in
:mod:`dwi_ml.training.trainer_checkpointing`; the optimisation steps (loss
reduction across ranks, back-propagation, gradient accumulation, optimizer
step) in :mod:`dwi_ml.training.trainer_optimization`; the DataLoaders and
their iteration in :mod:`dwi_ml.training.trainer_dataloading`.
"""
import logging
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from dwi_ml.batching.dataloaders import shut_down_workers
from dwi_ml.data.splits import Split
from dwi_ml.io_utils.errors import DwiMLUserError, count_of
from dwi_ml.io_utils.experiment_layout import LOGS_DIR
from dwi_ml.models.main_models import MainModelAbstract
from dwi_ml.training.callbacks import (
    CallbackList,
    EpochSummaryCallback,
    NanCheckCallback,
    NpyLoggerCallback,
    ProgressBarCallback,
)
from dwi_ml.training.distributed import all_gather_objects, current_context
from dwi_ml.training.epoch_position import (
    END_PHASE,
    TRAIN_PHASE,
    VALID_PHASE,
    EpochPosition,
)
from dwi_ml.training.interruptions import RunInterruptions
from dwi_ml.training.monitors import BestEpochTracker, EpochMonitors
from dwi_ml.training.optimizers import (
    SchedulerFactory,
    create_optimizer,
    scheduler_factory_from_name,
)
from dwi_ml.training.random_states import seed_everything, set_deterministic
from dwi_ml.training.trainer_args import (
    DEFAULT_CLIP_GRAD,
    check_callbacks,
    check_trainer_args,
    check_trainer_parts,
    refuse_previous_run,
)
from dwi_ml.training.trainer_checkpointing import TrainerCheckpointing
from dwi_ml.training.trainer_dataloading import TrainerDataLoading
from dwi_ml.training.trainer_optimization import TrainerOptimization

logger = logging.getLogger(__name__)



class DWIMLAbstractTrainer(TrainerOptimization, TrainerCheckpointing,
                           TrainerDataLoading):
    """Trains a dwi_ml model with a BatchSampler and a BatchLoader.

    Parameters
    ----------
    model : dwi_ml.models.main_models.MainModelAbstract
    experiments_path : str
        Parent folder of the experiment.
    experiment_name : str
        The experiment folder ``experiments_path/experiment_name`` holds
        ``parameters.json``, ``best_model/``, ``checkpoint/`` and ``logs/``.
    batch_sampler : dwi_ml.batching.batch_sampler.BatchSampler
    batch_loader : the collate step (e.g. BatchLoaderOneInput)
    optimizer : str
        'Adam', 'AdamW', 'RAdam' or 'SGD' (with ``momentum``).
    learning_rate : float or None
        None: the model's ``default_learning_rate`` (0.005 for
        Learn2track, 0.001 for the Transformers and by default), as in
        the training script.
    weight_decay, momentum : float
    lr_scheduler, lr_step_size, lr_gamma : str or SchedulerFactory, int, float
        'constant', 'step' (times ``lr_gamma`` every ``lr_step_size``
        epochs), 'cosine', 'plateau' (times ``lr_gamma``), 'onecycle', or a
        :class:`~dwi_ml.training.optimizers.SchedulerFactory`.
    max_epochs : int
    patience : int or None
        Stop after this many epochs without improvement of
        ``best_model_metric``.
    patience_delta : float
        Minimal change of that metric counted as an improvement.
    best_model_metric : str
        The monitor that chooses ``best_model/`` and drives patience, with
        its direction (``monitors.BEST_MODEL_METRICS``): 'valid_loss' (the
        training loss when there is no validation set), or a metric a
        callback writes, e.g. 'tracking_f1'.
    max_batches_per_epoch_training, max_batches_per_epoch_validation : int
        Cap on the batches per epoch (None: the whole epoch).
    clip_grad : float or None
        Clip the gradients' total norm to this value, once per update
        (default 1.0, as the training script); None never clips.
    grad_accumulation_steps : int
        Update the weights every N batches, with each batch's loss scaled
        by 1/N: N batches of equal numbers of points then give the update
        of one batch N times bigger.
    nb_workers : int
        DataLoader worker processes.
    device : str
        'cpu' or 'cuda[:N]'.
    mixed_precision : None, 'bf16' or 'fp16'
        Autocast: bf16 on CUDA or CPU; fp16, with a gradient scaler, on
        CUDA only.
    seed : int
        Seeds torch's global generator (dropout).
    callbacks : list of Callback
        Added after the default ones (progress, NaN check, logs).
    max_time_s : float or None
        Stop with a mid-epoch checkpoint before this many seconds (counted
        from the start of this process's training).
    checkpoint_every_n_batches : int or None
        Also write a mid-epoch checkpoint every N training batches.
    checkpoint_every_minutes : float or None
        Also write a mid-epoch checkpoint when this long has passed since
        the last checkpoint.
    deterministic : bool
        Deterministic algorithms on CUDA (see
        :func:`~dwi_ml.training.random_states.set_deterministic`). CPU
        runs are bitwise reproducible at a fixed thread count either way.
    distributed : DistributedContext or None
        This process's rank under torchrun (default: read from the started
        process group, or a single process). The model is then wrapped in
        DistributedDataParallel, losses are weighted so that the update
        equals a single process's on the same global batch, logs hold the
        mean over ranks, and only rank 0 writes files.
    """

    def __init__(self, model, experiments_path, experiment_name,
                 batch_sampler, batch_loader, optimizer="Adam",
                 learning_rate=None, weight_decay=0.0,
                 momentum=0.9, lr_scheduler="constant", lr_step_size=10,
                 lr_gamma=0.5,
                 max_epochs=10, patience=None, patience_delta=0.0,
                 max_batches_per_epoch_training=None,
                 max_batches_per_epoch_validation=None,
                 clip_grad=DEFAULT_CLIP_GRAD,
                 grad_accumulation_steps=1, nb_workers=0, device="cpu",
                 mixed_precision=None, seed=1234, callbacks=(),
                 distributed=None, max_time_s=None,
                 checkpoint_every_n_batches=None,
                 checkpoint_every_minutes=None, deterministic=False,
                 best_model_metric="valid_loss"):
        if learning_rate is None:
            learning_rate = getattr(model, "default_learning_rate",
                                    MainModelAbstract.default_learning_rate)
        check_trainer_args(locals())
        check_trainer_parts(model, experiment_name, batch_loader)
        # False until a checkpoint is loaded or the run starts: a new run
        # refuses a folder that holds another run's outputs.
        self.continues_a_run = False
        self.model = model
        self.experiment_dir = os.path.join(experiments_path, experiment_name)
        self.experiments_path = experiments_path
        self.experiment_name = experiment_name
        self.batch_sampler = batch_sampler
        self.batch_loader = batch_loader
        self.optimizer_name = optimizer
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.lr_scheduler_name = (lr_scheduler if isinstance(lr_scheduler, str)
                                  else repr(lr_scheduler))
        self.lr_step_size = lr_step_size
        self.lr_gamma = lr_gamma
        self.max_epochs = max_epochs
        self.max_batches = {Split.TRAINING: max_batches_per_epoch_training,
                            Split.VALIDATION: max_batches_per_epoch_validation}
        self.clip_grad = clip_grad
        self.grad_accumulation_steps = int(grad_accumulation_steps)
        self.nb_workers = nb_workers
        self.device = torch.device(device)
        # Saved as asked; bf16 autocasts anywhere, fp16 on CUDA only.
        self.mixed_precision = mixed_precision
        self.seed = seed
        self.deterministic = bool(deterministic)
        set_deterministic(self.deterministic)
        self.interruptions = RunInterruptions(
            max_time_s, checkpoint_every_n_batches, checkpoint_every_minutes)

        self.distributed = distributed or current_context()
        seed_everything(seed)
        self.model.to(self.device)
        self.forward_model = self.model
        if self.distributed.is_distributed:
            self.forward_model = DistributedDataParallel(
                self.model, device_ids=([self.device.index]
                                        if self.device.type == "cuda" else None))
        self.optimizer = create_optimizer(
            self.model.parameters(), optimizer, learning_rate, weight_decay,
            momentum)
        self.scheduler_factory = (
            lr_scheduler if isinstance(lr_scheduler, SchedulerFactory)
            else scheduler_factory_from_name(lr_scheduler, learning_rate,
                                             lr_step_size, lr_gamma))
        self.scheduler = self.scheduler_factory(
            self.optimizer, max_epochs, self._updates_per_epoch())
        self.grad_scaler = torch.amp.GradScaler("cuda", enabled=(
            mixed_precision == "fp16" and self.device.type == "cuda"))
        if mixed_precision == "fp16" and self.device.type != "cuda":
            logger.warning(
                "mixed_precision fp16: CUDA only; this run on %s trains in "
                "float32 (kept in its parameters for a resume on CUDA; "
                "bf16 autocasts on CPU).", self.device.type)
        # Source of the DataLoaders' worker base seeds (unused: batches draw
        # from (seed, split, epoch, batch)); a fresh generator each time, so
        # that no state moves with the processes that create iterators.
        self.dataloader_seed = seed

        self.use_validation = self._has_validation_data()
        self.best_tracker = BestEpochTracker(patience, patience_delta,
                                             best_model_metric)
        self.monitors = EpochMonitors()
        callbacks = check_callbacks(callbacks)
        self.callbacks = CallbackList([ProgressBarCallback(),
                                       NanCheckCallback(),
                                       NpyLoggerCallback(),
                                       EpochSummaryCallback(), *callbacks])
        self.current_epoch = 0
        self.position = EpochPosition()
        self.batch_index = 0
        self.stopped_reason = None
        self.interrupted_by = None
        self._dataloaders = {}
        self.data_wait_s = {}

    @property
    def is_main_process(self):
        """Only the main process (rank 0) writes files."""
        return self.distributed.is_main_process

    @property
    def logs_dir(self):
        """``EXPERIMENT/logs``, created on first use."""
        path = os.path.join(self.experiment_dir, LOGS_DIR)
        os.makedirs(path, exist_ok=True)
        return path

    @property
    def params_for_checkpoint(self):
        """The trainer's constructor arguments, JSON-able."""
        return {
            "optimizer": self.optimizer_name,
            "learning_rate": self.learning_rate,
            "weight_decay": self.weight_decay, "momentum": self.momentum,
            "lr_scheduler": self.lr_scheduler_name,
            "lr_step_size": self.lr_step_size, "lr_gamma": self.lr_gamma,
            "max_epochs": self.max_epochs,
            "patience": self.best_tracker.patience,
            "patience_delta": self.best_tracker.patience_delta,
            "max_batches_per_epoch_training": self.max_batches[Split.TRAINING],
            "max_batches_per_epoch_validation":
                self.max_batches[Split.VALIDATION],
            "clip_grad": self.clip_grad,
            "grad_accumulation_steps": self.grad_accumulation_steps,
            "nb_workers": self.nb_workers, "device": str(self.device),
            "mixed_precision": self.mixed_precision, "seed": self.seed,
            "max_time_s": self.interruptions.max_time_s,
            "checkpoint_every_n_batches":
                self.interruptions.checkpoint_every_n_batches,
            "checkpoint_every_minutes": (
                None if self.interruptions.checkpoint_every_s is None
                else self.interruptions.checkpoint_every_s / 60.0),
            "deterministic": self.deterministic,
            "best_model_metric": self.best_tracker.metric,
        }

    # ------------------------------------------------------------------
    # The loop
    def train_and_validate(self):
        """Run epochs until ``max_epochs``, patience or a stop request."""
        if not self.continues_a_run:
            # Decided by rank 0, raised by every rank: the others would wait
            # for it at their first collective.
            refusal = None
            if self.is_main_process:
                try:
                    refuse_previous_run(self.experiment_dir)
                except DwiMLUserError as error:
                    refusal = str(error)
            refusal = all_gather_objects(refusal)[0]
            if refusal is not None:
                raise DwiMLUserError(refusal)
        if self.is_main_process:
            os.makedirs(self.experiment_dir, exist_ok=True)
        self.continues_a_run = True
        self.warn_if_without_validation()
        self.create_dataloaders()
        self.callbacks.on_train_start(self)
        self.interruptions.start()
        try:
            # A stop requested while the run started (a signal while the
            # data loaded) stops here: the checkpoint is the exact position.
            # A new run saves one too: a kill between its first best model
            # and first checkpoint left no run to continue.
            if self.poll_interruptions(is_training_batch=False) or (
                    self.current_epoch == 0 and self.position.at_epoch_start):
                self.save_checkpoint()
            while not self.is_finished() and not self.interrupted_by:
                epoch = self.current_epoch
                if self.position.at_epoch_start:
                    self.callbacks.on_epoch_start(self, epoch)
                if self.position.phase == TRAIN_PHASE:
                    self.train_one_epoch(epoch)
                if self.position.phase == VALID_PHASE and not self.interrupted_by:
                    self.validate_one_epoch(epoch)
                if self.position.phase == END_PHASE:
                    self.finish_epoch(epoch)
                elif self.interrupted_by:
                    self.save_checkpoint()
        finally:
            # Before the signals' handlers are given back (torch's SIGCHLD).
            for loader in self._dataloaders.values():
                shut_down_workers(loader)
            self.interruptions.stop()
        self.callbacks.on_train_end(self)

    def warn_if_without_validation(self):
        """One warning, from the main process, at the start of a run
        without validation: its valid_loss is NaN, and the best model and
        patience follow :attr:`best_metric_name` instead."""
        if self.use_validation or not self.is_main_process:
            return
        reason = (self.batch_sampler.missing_validation_reason()
                  or "no validation batch")
        logger.warning("%s; training runs without validation (valid_loss "
                       "is NaN): the best model and patience follow %s.",
                       reason, self.best_metric_name)

    def finish_epoch(self, epoch):
        """Close the epoch: monitors, best model, callbacks, checkpoint."""
        epoch_logs, is_best = self.end_epoch(epoch)
        self.apply_pending_scheduler_horizon()
        if is_best:
            self.save_best_model()
        self.current_epoch += 1
        self.position = EpochPosition()
        self.callbacks.on_epoch_end(self, epoch, epoch_logs)
        self.save_checkpoint()
        # A signal that came during the epoch's last steps or its save
        # stops here: the checkpoint just written is the exact position.
        # After the last epoch, the run is done: nothing to resume.
        if self.poll_interruptions(is_training_batch=False) \
                and self.is_finished():
            logger.info("%s received after the last epoch's checkpoint: the "
                        "run is finished.", self.interrupted_by)
            self.interrupted_by = None

    def is_finished(self):
        """True when max_epochs is reached or patience ran out.

        A run interrupted inside its last epoch is not finished.
        """
        if not self.position.at_epoch_start:
            return False
        if self.current_epoch >= self.max_epochs:
            self.stopped_reason = f"reached max_epochs ({self.max_epochs})"
            return True
        if self.best_tracker.is_patience_reached:
            self.stopped_reason = "patience reached: no improvement for " \
                + count_of(self.best_tracker.nb_bad_epochs, "epoch")
            return True
        return False

    def nb_batches(self, split):
        """Number of batches of this epoch of ``split``, up to the cap.

        The one count of an epoch's batches: the loop, the per-batch LR
        schedulers and the progress bar read it.
        """
        total = len(self.batch_sampler.for_split(split))
        cap = self.max_batches[split]
        return total if cap is None else min(total, cap)

    def train_one_epoch(self, epoch):
        """Train on the epoch's batches, from the current position.

        Returns early, with the position kept, when a stop is requested.
        """
        self.model.train()
        nb_batches = self.nb_batches(Split.TRAINING)
        if self.position.nb_batches_done == 0:
            self.monitors.start_phase(TRAIN_PHASE)
        lr_log = self.monitors["learning_rate"]
        if len(lr_log.epoch_history) == epoch:
            # Once per epoch: a run stopped before its first batch already
            # logged it, and its checkpoint holds that value.
            lr_log.set_epoch_value(self.optimizer.param_groups[0]["lr"])
        self.optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter() - self.position.elapsed_s
        for batch in self.iterate_batches(Split.TRAINING, epoch):
            self.callbacks.on_train_batch_start(self, batch)
            with self.autocast():
                losses, n_points = self.run_one_batch(batch)
            loss, outputs = self.reduce_losses(losses, n_points)
            group_size = self.accumulation_group_size(nb_batches)
            self.back_propagation(self.weight_loss_for_ranks(
                loss, n_points, outputs["n_points"]) / group_size)
            is_update = self.is_update_step(nb_batches)
            if is_update:
                outputs.update(self.optimizer_step())
            self.monitors.record_batch(TRAIN_PHASE, outputs)
            self.callbacks.on_train_batch_end(self, batch, outputs)
            self.position.nb_batches_done = self.batch_index + 1
            self.position.elapsed_s = time.perf_counter() - start
            # Gradients of a partial accumulation group are not saved:
            # requests wait for the group's update.
            if is_update and self.poll_interruptions(True, group_size):
                break
        if self.interrupted_by and self.position.nb_batches_done < nb_batches:
            return
        self.monitors["train_time"].set_epoch_value(time.perf_counter() - start)
        self.position.start_phase(VALID_PHASE if self.use_validation
                                  else END_PHASE)

    def validate_one_epoch(self, epoch):
        """Compute the validation losses, without gradients.

        Starts from the current position; returns early, with the position
        kept, when a stop is requested.
        """
        self.model.eval()
        nb_batches = self.nb_batches(Split.VALIDATION)
        if self.position.nb_batches_done == 0:
            self.monitors.start_phase(VALID_PHASE)
        start = time.perf_counter() - self.position.elapsed_s
        with torch.no_grad():
            for batch in self.iterate_batches(Split.VALIDATION, epoch):
                with self.autocast():
                    losses, n_points = self.run_one_batch(batch)
                _, outputs = self.reduce_losses(losses, n_points)
                self.monitors.record_batch(VALID_PHASE, outputs)
                self.callbacks.on_validation_batch_end(self, batch, outputs)
                self.position.nb_batches_done = self.batch_index + 1
                self.position.elapsed_s = time.perf_counter() - start
                if self.poll_interruptions(is_training_batch=False):
                    break
        if self.interrupted_by and self.position.nb_batches_done < nb_batches:
            return
        self.monitors["valid_time"].set_epoch_value(time.perf_counter() - start)
        self.position.start_phase(END_PHASE)

    def run_one_batch(self, batch):
        """Forward one batch; return ``(losses, n_points)``.

        ``losses`` is the mean loss tensor, or a dict of named mean loss
        tensors whose sum is optimised (each is logged as ``loss_NAME``).
        Abstract: ``DWIMLTrainerOneInput`` implements it for one-input
        models. Call ``self.forward_model`` (the DDP-wrapped model under
        torchrun) for the forward pass.
        """
        raise NotImplementedError(
            f"{type(self).__name__}.run_one_batch: not implemented; "
            "a subclass must define it (docs/extending.md).")

    def _has_validation_data(self):
        # Validation subjects without a streamline give no batch: a run
        # without validation, not one with a NaN valid_loss. Planned now,
        # so that a budget leaving ranks no batch is refused before the run.
        return (self.batch_sampler.nb_streamlines(Split.VALIDATION) > 0
                and len(self.batch_sampler.for_split(Split.VALIDATION)) > 0)

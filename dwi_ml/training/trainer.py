"""DWIMLAbstractTrainer: the epoch loop, best model, checkpoints and resume.

``train_and_validate`` reads like the pseudocode of docs/training.md::

    for each epoch until max_epochs or patience:
        train_one_epoch      (run_one_batch, back_propagation per batch)
        validate_one_epoch   (run_one_batch per batch, no gradients)
        end_epoch            (monitors, LR scheduler, best epoch)
        save_best_model      (if this epoch is the best)
        save_checkpoint

Every step is a method a model author can override. Progress bars, the NaN
check, the ``.npy`` logs and the log line are callbacks
(:mod:`dwi_ml.training.callbacks`).
"""
import logging
import math
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from dwi_ml.batching.dataloaders import make_dataloader
from dwi_ml.io_utils.atomic import atomic_output_folder
from dwi_ml.training.callbacks import (
    CallbackList,
    EpochSummaryCallback,
    NanCheckCallback,
    NpyLoggerCallback,
    ProgressBarCallback,
)
from dwi_ml.training.checkpoint_io import (
    BEST_MODEL_DIR,
    CHECKPOINT_DIR,
    LOGS_DIR,
    load_checkpoint_state,
    write_json_atomic,
)
from dwi_ml.training.distributed import (
    all_gather_objects,
    all_reduce_sum,
    barrier,
    current_context,
)
from dwi_ml.training.monitors import BatchMeanMonitor, BestEpochTracker
from dwi_ml.training.optimizers import (
    create_optimizer,
    create_scheduler,
    step_scheduler,
)
from dwi_ml.training.random_states import (
    get_global_random_states,
    seed_everything,
    set_global_random_states,
)
from dwi_ml.training.trainer_args import check_trainer_args

logger = logging.getLogger(__name__)

EPOCH_MONITORS = ("train_loss", "valid_loss", "grad_norm_before_clip",
                  "grad_norm_after_clip", "learning_rate", "train_time",
                  "valid_time")


class DWIMLAbstractTrainer:
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
    learning_rate, weight_decay, momentum : float
    lr_scheduler : str
        'constant', 'step' (``lr_step_size`` epochs, ``lr_gamma``),
        'cosine' or 'plateau'.
    max_epochs : int
    patience : int or None
        Stop after this many epochs without improvement of the validation
        loss (of the training loss when there is no validation set).
    patience_delta : float
        Minimal decrease of the loss counted as an improvement.
    max_batches_per_epoch_training, max_batches_per_epoch_validation : int
        Cap on the batches per epoch (None: the whole epoch).
    clip_grad : float or None
        Clip the gradients' total norm to this value.
    nb_workers : int
        DataLoader worker processes.
    device : str
        'cpu' or 'cuda[:N]'.
    mixed_precision : None, 'bf16' or 'fp16'
        Autocast on CUDA; fp16 uses a gradient scaler.
    seed : int
        Seeds torch's global generator (dropout, initialisation).
    callbacks : list of Callback
        Added after the default ones (progress, NaN check, logs).
    distributed : DistributedContext or None
        This process's rank under torchrun (default: read from the started
        process group, or a single process). The model is then wrapped in
        DistributedDataParallel, losses are weighted so that the update
        equals a single process's on the same global batch, logs hold the
        mean over ranks, and only rank 0 writes files.
    """

    def __init__(self, model, experiments_path, experiment_name,
                 batch_sampler, batch_loader, optimizer="Adam",
                 learning_rate=1e-3, weight_decay=0.0, momentum=0.9,
                 lr_scheduler="constant", lr_step_size=10, lr_gamma=0.5,
                 max_epochs=10, patience=None, patience_delta=0.0,
                 max_batches_per_epoch_training=None,
                 max_batches_per_epoch_validation=None, clip_grad=None,
                 nb_workers=0, device="cpu", mixed_precision=None, seed=1234,
                 callbacks=(), distributed=None):
        check_trainer_args(locals())
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
        self.lr_scheduler_name = lr_scheduler
        self.lr_step_size = lr_step_size
        self.lr_gamma = lr_gamma
        self.max_epochs = max_epochs
        self.max_batches = {"training": max_batches_per_epoch_training,
                            "validation": max_batches_per_epoch_validation}
        self.clip_grad = clip_grad
        self.nb_workers = nb_workers
        self.device = torch.device(device)
        self.mixed_precision = (mixed_precision if self.device.type == "cuda"
                                else None)
        self.seed = seed

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
        self.scheduler = create_scheduler(self.optimizer, lr_scheduler,
                                          max_epochs, lr_step_size, lr_gamma)
        self.grad_scaler = torch.amp.GradScaler(
            "cuda", enabled=self.mixed_precision == "fp16")
        self.dataloader_generator = torch.Generator().manual_seed(seed)

        self.use_validation = self._has_validation_data()
        self.best_tracker = BestEpochTracker(patience, patience_delta)
        self.monitors = {name: BatchMeanMonitor(
            name, keep_batch_values=(name == "train_loss"))
            for name in EPOCH_MONITORS}
        self.callbacks = CallbackList([ProgressBarCallback(),
                                       NanCheckCallback(),
                                       NpyLoggerCallback(),
                                       EpochSummaryCallback(), *callbacks])
        self.current_epoch = 0
        self.batch_index = 0
        self.stopped_reason = None
        self._dataloaders = {}

    @property
    def is_main_process(self):
        """Only the main process (rank 0) writes files."""
        return self.distributed.is_main_process

    # ------------------------------------------------------------------
    # Folders and parameters
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
            "max_batches_per_epoch_training": self.max_batches["training"],
            "max_batches_per_epoch_validation": self.max_batches["validation"],
            "clip_grad": self.clip_grad, "nb_workers": self.nb_workers,
            "device": str(self.device),
            "mixed_precision": self.mixed_precision, "seed": self.seed,
        }

    def save_parameters(self, extra_params=None):
        """Write ``parameters.json``: trainer, model and ``extra_params``."""
        if not self.is_main_process:
            return
        params = {"trainer": self.params_for_checkpoint,
                  "model_type": type(self.model).__name__,
                  "model": self.model.params_for_checkpoint,
                  **(extra_params or {})}
        os.makedirs(self.experiment_dir, exist_ok=True)
        write_json_atomic(os.path.join(self.experiment_dir,
                                       "parameters.json"), params)

    # ------------------------------------------------------------------
    # The loop
    def train_and_validate(self):
        """Run epochs until ``max_epochs`` or patience; see module doc."""
        if self.is_main_process:
            os.makedirs(self.experiment_dir, exist_ok=True)
        self.create_dataloaders()
        self.callbacks.on_train_start(self)
        while not self.is_finished():
            epoch = self.current_epoch
            self.callbacks.on_epoch_start(self, epoch)
            self.train_one_epoch(epoch)
            if self.use_validation:
                self.validate_one_epoch(epoch)
            epoch_logs, is_best = self.end_epoch(epoch)
            if is_best:
                self.save_best_model()
            self.current_epoch += 1
            self.callbacks.on_epoch_end(self, epoch, epoch_logs)
            self.save_checkpoint()
        self.callbacks.on_train_end(self)

    def is_finished(self):
        """True when max_epochs is reached or patience ran out."""
        if self.current_epoch >= self.max_epochs:
            self.stopped_reason = f"reached max_epochs ({self.max_epochs})"
            return True
        if self.best_tracker.is_patience_reached:
            self.stopped_reason = (
                f"patience reached: no improvement for "
                f"{self.best_tracker.nb_bad_epochs} epochs")
            return True
        return False

    def create_dataloaders(self):
        """Create the training and validation DataLoaders (kept for reuse)."""
        contexts = ["training"] + (["validation"] if self.use_validation
                                   else [])
        for context in contexts:
            if context not in self._dataloaders:
                self._dataloaders[context] = make_dataloader(
                    self.batch_sampler, self.batch_loader, context,
                    self.nb_workers, self.dataloader_generator,
                    pin_memory=self.device.type == "cuda")

    def nb_batches(self, phase):
        """Number of batches of this epoch for phase 'train' or 'valid'."""
        context = "training" if phase == "train" else "validation"
        total = len(self._dataloaders[context])
        cap = self.max_batches[context]
        return total if cap is None else min(total, cap)

    def iterate_batches(self, context, epoch):
        """Yield the epoch's batches of ``context``, up to the cap."""
        self.batch_sampler.set_epoch(epoch)
        if hasattr(self.batch_loader, "set_epoch"):
            self.batch_loader.set_epoch(epoch)
        cap = self.max_batches[context]
        for batch_index, batch in enumerate(self._dataloaders[context]):
            if cap is not None and batch_index >= cap:
                break
            self.batch_index = batch_index
            yield batch

    def train_one_epoch(self, epoch):
        """Train on every batch of the epoch."""
        self.model.train()
        for name in ("train_loss", "grad_norm_before_clip",
                     "grad_norm_after_clip"):
            self.monitors[name].start_epoch()
        self.monitors["learning_rate"].set_epoch_value(
            self.optimizer.param_groups[0]["lr"])
        start = time.perf_counter()
        for batch in self.iterate_batches("training", epoch):
            self.callbacks.on_train_batch_start(self, batch)
            with self.autocast():
                loss, n_points = self.run_one_batch(batch)
            mean_loss, total_points = self.reduce_over_ranks(loss, n_points)
            grad_norm, clipped_norm = self.back_propagation(
                self.weight_loss_for_ranks(loss, n_points, total_points))
            outputs = {"loss": mean_loss, "n_points": total_points,
                       "grad_norm": grad_norm,
                       "grad_norm_after_clip": clipped_norm}
            self.record_train_batch(outputs)
            self.callbacks.on_train_batch_end(self, batch, outputs)
        self.monitors["train_time"].set_epoch_value(time.perf_counter() - start)

    def validate_one_epoch(self, epoch):
        """Compute the validation loss on every batch, without gradients."""
        self.model.eval()
        self.monitors["valid_loss"].start_epoch()
        start = time.perf_counter()
        with torch.no_grad():
            for batch in self.iterate_batches("validation", epoch):
                with self.autocast():
                    loss, n_points = self.run_one_batch(batch)
                mean_loss, total_points = self.reduce_over_ranks(loss, n_points)
                outputs = {"loss": mean_loss, "n_points": total_points}
                self.monitors["valid_loss"].update(mean_loss, total_points)
                self.callbacks.on_validation_batch_end(self, batch, outputs)
        self.monitors["valid_time"].set_epoch_value(time.perf_counter() - start)

    def run_one_batch(self, batch):
        """Forward one batch; return ``(mean_loss tensor, n_points)``.

        Abstract: ``DWIMLTrainerOneInput`` implements it for one-input
        models.
        """
        raise NotImplementedError

    def reduce_over_ranks(self, loss, n_points):
        """Mean loss and number of points of the batch over all ranks.

        Alone, ``(loss.item(), n_points)``; under torchrun, the
        points-weighted mean of every rank's loss, so logs and stopping
        decisions are the same on every rank.
        """
        if not self.distributed.is_distributed:
            return loss.item(), int(n_points)
        weighted, total = all_reduce_sum(
            [loss.item() * int(n_points), int(n_points)], self.device)
        return weighted / total, int(total)

    def weight_loss_for_ranks(self, loss, n_points, total_points):
        """Scale a rank's mean loss so DDP's gradient average is the global one.

        DDP averages gradients over ranks; weighting rank r's loss by
        ``world_size * n_r / n_total`` makes that average the gradient of
        the mean loss over all points of the global batch.
        """
        if not self.distributed.is_distributed:
            return loss
        return loss * (self.distributed.world_size * int(n_points)
                       / total_points)

    def back_propagation(self, loss):
        """Backward, clip and step; return grad norms before/after clipping."""
        self.optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale(loss).backward()
        self.grad_scaler.unscale_(self.optimizer)
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.clip_grad if self.clip_grad is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))
        clipped_norm = grad_norm if self.clip_grad is None else float(
            torch.nn.utils.get_total_norm([p.grad for p in parameters]))
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        return grad_norm, clipped_norm

    def record_train_batch(self, outputs):
        """Update the training monitors with one batch's outputs."""
        self.monitors["train_loss"].update(outputs["loss"], outputs["n_points"])
        self.monitors["grad_norm_before_clip"].update(outputs["grad_norm"])
        self.monitors["grad_norm_after_clip"].update(
            outputs["grad_norm_after_clip"])

    def end_epoch(self, epoch):
        """Close the monitors, step the scheduler, update the best epoch.

        Returns
        -------
        epoch_logs : dict
            This epoch's value of every monitor.
        is_best : bool
        """
        for name in ("train_loss", "grad_norm_before_clip",
                     "grad_norm_after_clip"):
            self.monitors[name].end_epoch()
        if self.use_validation:
            self.monitors["valid_loss"].end_epoch()
        else:
            self.monitors["valid_loss"].set_epoch_value(math.nan)
            self.monitors["valid_time"].set_epoch_value(0.0)
        epoch_logs = {name: monitor.epoch_history[-1]
                      for name, monitor in self.monitors.items()}
        loss = epoch_logs["valid_loss" if self.use_validation else "train_loss"]
        step_scheduler(self.scheduler, loss)
        is_best = self.best_tracker.update(loss, epoch)
        return epoch_logs, is_best

    def autocast(self):
        """Mixed-precision context on CUDA; a no-op otherwise."""
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            self.mixed_precision)
        return torch.autocast(device_type=self.device.type, dtype=dtype,
                              enabled=dtype is not None)

    # ------------------------------------------------------------------
    # Saving and resuming
    def save_best_model(self):
        """Write ``best_model/`` (model params and state, epoch and loss)."""
        if not self.is_main_process:
            return
        path = os.path.join(self.experiment_dir, BEST_MODEL_DIR)
        with atomic_output_folder(path) as tmp_dir:
            self.model.save_params_and_state(tmp_dir)
            write_json_atomic(os.path.join(tmp_dir, "best_epoch.json"), {
                "epoch": self.best_tracker.best_epoch,
                "loss": self.best_tracker.best_loss})

    def checkpoint_state(self):
        """Everything needed to continue exactly, as tensors and lists."""
        state = {
            "current_epoch": self.current_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict(),
            # One entry per rank: each resumes its own streams.
            "random_states": all_gather_objects(get_global_random_states()),
            "dataloader_generator": all_gather_objects(
                self.dataloader_generator.get_state()),
            "sampler": self.batch_sampler.state_dict(),
            "loader": (self.batch_loader.state_dict()
                       if hasattr(self.batch_loader, "state_dict") else {}),
            "monitors": {name: monitor.state_dict()
                         for name, monitor in self.monitors.items()},
            "best": self.best_tracker.state_dict(),
            "callbacks": self.callbacks.state_dict(),
            "comet_key": getattr(self, "comet_key", None),
        }
        self.callbacks.on_checkpoint_save(self, state)
        return state

    def save_checkpoint(self):
        """Write ``checkpoint/`` atomically: a kill keeps the previous one."""
        state = self.checkpoint_state()
        if self.is_main_process:
            path = os.path.join(self.experiment_dir, CHECKPOINT_DIR)
            with atomic_output_folder(path) as tmp_dir:
                self.model.save_params_and_state(os.path.join(tmp_dir, "model"))
                torch.save(state, os.path.join(tmp_dir, "checkpoint_state.pt"))
        barrier()

    def load_checkpoint(self, state=None):
        """Restore the state saved by :meth:`save_checkpoint`.

        The model weights are loaded separately, when the model is rebuilt
        (see :func:`dwi_ml.training.checkpoint_io.load_checkpoint_model`).
        """
        if state is None:
            state = load_checkpoint_state(self.experiment_dir)
        self.current_epoch = int(state["current_epoch"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.grad_scaler.load_state_dict(state["grad_scaler"])
        set_global_random_states(self._own_rank_entry(state["random_states"]))
        self.dataloader_generator.set_state(
            self._own_rank_entry(state["dataloader_generator"]))
        self.batch_sampler.load_state_dict(state["sampler"])
        if hasattr(self.batch_loader, "load_state_dict"):
            self.batch_loader.load_state_dict(state["loader"])
        for name, monitor in self.monitors.items():
            monitor.load_state_dict(state["monitors"][name])
        patience = self.best_tracker.patience
        self.best_tracker.load_state_dict(state["best"])
        self.best_tracker.patience = patience
        self.callbacks.load_state_dict(state["callbacks"])
        self.comet_key = state.get("comet_key")
        self.callbacks.on_checkpoint_load(self, state)

    def _own_rank_entry(self, per_rank):
        """This rank's saved entry; rank 0's if the number of ranks changed."""
        if len(per_rank) == self.distributed.world_size:
            return per_rank[self.distributed.rank]
        return per_rank[0]

    def _has_validation_data(self):
        subset = getattr(self.batch_sampler.dataset, "validation_set", None)
        return subset is not None and subset.nb_subjects > 0

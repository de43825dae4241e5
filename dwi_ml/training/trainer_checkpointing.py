"""Saving and resuming a trainer: best model, checkpoint, parameters.json,
and the stop and checkpoint requests polled between steps.

Mixed into :class:`~dwi_ml.training.trainer.DWIMLAbstractTrainer`. Only the
main process writes; every process takes part in gathering the per-rank
random states. Checkpoints hold tensors and plain Python only, so they load
with ``torch.load(weights_only=True)``.
"""
import math
import os
import time

import torch

from dwi_ml.data.splits import SAMPLED_SPLITS, Split
from dwi_ml.io_utils.atomic import (
    atomic_output_folder,
    save_torch_file,
    write_failures_named,
    write_json_atomic,
)
from dwi_ml.io_utils.errors import DwiMLUserError, count_of
from dwi_ml.io_utils.experiment_layout import (
    BEST_EPOCH_FILE,
    BEST_MODEL_DIR,
    CHECKPOINT_DIR,
    CHECKPOINT_POSITION,
    EXPERIMENT_FORMAT_VERSION,
    PARAMETERS_FILE,
    has_checkpoint,
    load_checkpoint_state,
)
from dwi_ml.io_utils.manifest import write_manifest
from dwi_ml.models.model_io import model_params
from dwi_ml.training.distributed import all_gather_objects, all_reduce_max, barrier
from dwi_ml.training.epoch_position import VALID_PHASE, EpochPosition
from dwi_ml.training.interruptions import describe_stop
from dwi_ml.training.optimizers import (
    load_optimizer_state,
    load_scheduler_state,
    scheduler_horizon,
)
from dwi_ml.training.preemption import resume_command
from dwi_ml.training.random_states import (
    get_global_random_states,
    set_global_random_states,
)


class TrainerCheckpointing:
    """best_model/, checkpoint/ and parameters.json of a trainer."""

    # Horizon of the LR schedule to take at the current epoch's end (a
    # longer run resumed inside an epoch; see load_checkpoint).
    _pending_scheduler_horizon = None

    def apply_pending_scheduler_horizon(self):
        """At an epoch's end: move the LR schedule to the run's new length,
        if a resume inside the epoch left one pending."""
        if self._pending_scheduler_horizon is not None:
            load_scheduler_state(self.scheduler, self.scheduler.state_dict(),
                                 self._pending_scheduler_horizon)
            self._pending_scheduler_horizon = None

    def save_parameters(self, extra_params=None):
        """Write ``parameters.json``: trainer, model and ``extra_params``.

        Returns what it wrote (None on processes other than the main one).
        """
        if not self.is_main_process:
            return None
        params = {"format_version": EXPERIMENT_FORMAT_VERSION,
                  "trainer": self.params_for_checkpoint,
                  "model_type": type(self.model).__name__,
                  "model": model_params(self.model),
                  **(extra_params or {})}
        os.makedirs(self.experiment_dir, exist_ok=True)
        path = os.path.join(self.experiment_dir, PARAMETERS_FILE)
        with self.named_write_failures("the parameters", path):
            write_json_atomic(path, params)
        return params

    def save_best_model(self):
        """Write ``best_model/`` (model params and state, epoch and loss)."""
        if not self.is_main_process:
            return
        path = os.path.join(self.experiment_dir, BEST_MODEL_DIR)
        with self.named_write_failures("the best model", path), \
                atomic_output_folder(path) as tmp_dir:
            self.model.save_params_and_state(tmp_dir)
            write_json_atomic(os.path.join(tmp_dir, BEST_EPOCH_FILE), {
                "epoch": self.best_tracker.best_epoch,
                # JSON has no NaN: null while the metric has no value.
                "loss": (None if math.isnan(self.best_tracker.best_loss)
                         else self.best_tracker.best_loss),
                "metric": self.best_metric_name})
            write_manifest(tmp_dir)

    def checkpoint_state(self):
        """Everything needed to continue exactly, as tensors and lists.

        Between epochs or inside one: ``position`` says which phase and
        batch come next, the sampler's position is the trainer's (workers
        prefetch ahead of it) and the monitors keep their partial sums.
        """
        state = {
            "current_epoch": self.current_epoch,
            "position": self.position.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict(),
            # One entry per rank: each resumes its own streams.
            "random_states": all_gather_objects(get_global_random_states()),
            "sampler": self._sampler_state_at_position(),
            "loader": (self.batch_loader.state_dict()
                       if hasattr(self.batch_loader, "state_dict") else {}),
            "monitors": self.monitors.state_dict(),
            "best": self.best_tracker.state_dict(),
            "callbacks": self.callbacks.state_dict(),
            # A CPU run's float rounding depends on it: a resume keeps it.
            "cpu_threads": torch.get_num_threads(),
        }
        self.callbacks.on_checkpoint_save(self, state)
        return state

    def poll_interruptions(self, is_training_batch, nb_batches=1):
        """Act on stop and checkpoint requests after a step.

        ``nb_batches`` is the number of training batches of the step (the
        batches of an accumulation group). Every rank takes the same
        decision (the max of their requests), so that collective
        operations stay in step. Returns True when the run must stop.
        """
        requests = self.interruptions.poll(is_training_batch, nb_batches)
        if self.distributed.is_distributed:
            requests = all_reduce_max(requests, self.device)
        stop_code, checkpoint_due = requests
        if stop_code:
            self.interrupted_by = describe_stop(stop_code)
            # A count, not an index: "batch 3" read as the 4th (0-based,
            # as epochs are) or the 3rd.
            kind = ("validation batch" if self.position.phase == VALID_PHASE
                    else "training batch")
            self.stopped_reason = (
                f"stopped by {self.interrupted_by} in epoch "
                f"{self.current_epoch} after "
                f"{count_of(self.position.nb_batches_done, kind, kind + 'es')}")
            return True
        if checkpoint_due:
            self.save_checkpoint()
        return False

    def _sampler_state_at_position(self):
        state = self.batch_sampler.state_dict()
        in_validation = self.position.phase == VALID_PHASE
        done = {Split.TRAINING: (0 if in_validation
                                 else self.position.nb_batches_done),
                Split.VALIDATION: self.position.nb_batches_done if in_validation
                else 0}
        state["epoch"] = self.current_epoch
        state["nb_batches_yielded"] = [done[split] for split in SAMPLED_SPLITS]
        return state

    def save_checkpoint(self):
        """Write ``checkpoint/`` atomically: a kill keeps the previous one."""
        start = time.monotonic()
        state = self.checkpoint_state()
        if self.is_main_process:
            path = os.path.join(self.experiment_dir, CHECKPOINT_DIR)
            with self.named_write_failures("the checkpoint", path), \
                    atomic_output_folder(path) as tmp_dir:
                self.model.save_params_and_state(os.path.join(tmp_dir, "model"))
                save_torch_file(state,
                                os.path.join(tmp_dir, "checkpoint_state.pt"))
                # Readers of the latest model read its epoch there.
                write_json_atomic(
                    os.path.join(tmp_dir, CHECKPOINT_POSITION),
                    {"current_epoch": self.current_epoch,
                     **self.position.state_dict()})
                write_manifest(tmp_dir)
        barrier()
        self.interruptions.checkpoint_written(time.monotonic() - start)

    def named_write_failures(self, what, path):
        """A write the disk refuses (no space, quota, file size limit): one
        line that says the last complete one is kept, and how to go on."""
        experiments_path, name = os.path.split(
            os.path.normpath(self.experiment_dir))
        then = (f"resume with: {resume_command(experiments_path, name)}"
                if has_checkpoint(self.experiment_dir) else
                "start the run again with -f (it has no checkpoint yet)")
        return write_failures_named(
            what, path, "the last one written, if any, is kept whole: "
            f"{{remedy}}, then {then}")

    def load_checkpoint(self, state=None):
        """Restore the state saved by :meth:`save_checkpoint`.

        The model weights are loaded separately, when the model is rebuilt
        (``load_model_from_params_and_state(checkpoint_model_dir(...))``).
        """
        if state is None:
            state = load_checkpoint_state(self.experiment_dir)
        self.continues_a_run = True
        self.current_epoch = int(state["current_epoch"])
        self.position = EpochPosition.from_state(state.get("position"))
        saved_ranks = int(state["sampler"]["world_size"])
        if (saved_ranks != self.distributed.world_size
                and not self.position.at_epoch_start):
            # Each rank's batches are parts of the global ones: the parts
            # done with one number of ranks do not map onto another.
            raise DwiMLUserError(
                f"checkpoint of '{self.experiment_dir}' was saved inside epoch "
                f"{self.current_epoch} by {saved_ranks} process(es); resume it "
                f"with {saved_ranks} (found {self.distributed.world_size}), "
                "then change the number at an epoch end.")
        load_optimizer_state(self.optimizer, state["optimizer"])
        if self.position.at_epoch_start:
            load_scheduler_state(self.scheduler, state["scheduler"])
        else:
            # Inside an epoch, a new horizon (--new_max_epochs) waits for
            # the epoch's end: its remaining batches keep the saved curve,
            # as they would have had the run been extended at that end.
            self._pending_scheduler_horizon = scheduler_horizon(self.scheduler)
            self.scheduler.load_state_dict(state["scheduler"])
        if state["grad_scaler"]:  # empty when saved off CUDA or without fp16
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        set_global_random_states(self._own_rank_entry(state["random_states"]))
        self.batch_sampler.load_state_dict(state["sampler"])
        if hasattr(self.batch_loader, "load_state_dict"):
            self.batch_loader.load_state_dict(state["loader"])
        self.monitors.load_state_dict(state["monitors"])
        patience = self.best_tracker.patience
        self.best_tracker.load_state_dict(state["best"])
        self.best_tracker.patience = patience
        self.callbacks.load_state_dict(state["callbacks"])
        self.callbacks.on_checkpoint_load(self, state)

    def _own_rank_entry(self, per_rank):
        """This rank's saved entry; rank 0's if the number of ranks changed."""
        if len(per_rank) == self.distributed.world_size:
            return per_rank[self.distributed.rank]
        return per_rank[0]

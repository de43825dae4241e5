"""DWIMLTrainerOneInput: run_one_batch for models with one input volume."""
from dwi_ml.training.trainer import DWIMLAbstractTrainer
from dwi_ml.training.trainer_optimization import compute_batch_loss


class DWIMLTrainerOneInput(DWIMLAbstractTrainer):
    """Trainer of :class:`~dwi_ml.models.main_models.MainModelOneInput`.

    The batch loader is a :class:`~dwi_ml.batching.batch_loader.BatchLoaderOneInput`;
    its ``prepare_batch`` moves each batch to the trainer's device and
    interpolates its inputs if the workers left them to the main process.
    """

    def run_one_batch(self, batch):
        """Forward the batch; return ``(mean_loss, n_points)``."""
        batch = self.batch_loader.prepare_batch(batch, self.device)
        outputs = self.forward_model(batch.inputs_list(),
                                     batch.input_streamlines())
        return compute_batch_loss(self.model, outputs, batch)

"""DWIMLTrainerOneInput: run_one_batch for models with one input volume."""
from dwi_ml.training.trainer import DWIMLAbstractTrainer


class DWIMLTrainerOneInput(DWIMLAbstractTrainer):
    """Trainer of :class:`~dwi_ml.models.main_models.MainModelOneInput`.

    The batch loader is a :class:`~dwi_ml.batching.batch_loader.BatchLoaderOneInput`.
    When the loader leaves interpolation to the main process
    (``interpolation_device`` set), inputs are computed here on the
    trainer's device, with the volumes cached there.
    """

    def run_one_batch(self, batch):
        """Forward the batch; return ``(mean_loss, n_points)``."""
        batch = batch.to(self.device, non_blocking=True)
        if batch.inputs is None:
            batch.inputs = self.batch_loader.compute_inputs(batch, self.device)
        outputs = self.forward_model(batch.inputs_list(),
                                     batch.input_streamlines())
        return self.model.compute_loss(outputs, batch.target_streamlines())

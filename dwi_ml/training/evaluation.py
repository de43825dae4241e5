"""Angular error of a trained model's predicted directions, in mm space."""
import numpy as np
import torch

from dwi_ml.batching.dataloaders import BatchRequest
from dwi_ml.data.dataset import MultiSubjectDataset
from dwi_ml.models.directions import compute_direction_targets
from dwi_ml.models.model_io import load_model_from_params_and_state
from dwi_ml.training.experiment_builder import build_loader


def evaluate_angular_error(model_dir, hdf5_file, split, input_group,
                           streamline_group, batch_size=200, device="cpu"):
    """Mean angle, in degrees, between predicted and true directions.

    Deterministic directions ("det") of the model at every point of every
    streamline of ``split`` ('training' or 'validation'), against the
    streamline's own next segment. Both are mapped to RAS mm through the
    subject's affine first, so anisotropic voxels do not bend the angles.
    Points where the target is "stop" (EOS models) are left out.
    """
    model = load_model_from_params_and_state(model_dir, device)
    dataset = MultiSubjectDataset(hdf5_file, lazy=True)
    dataset.load_data(load_training=split == "training",
                      load_validation=split == "validation",
                      load_testing=False, streamline_groups=[streamline_group],
                      volume_groups=[input_group])
    loader = build_loader(dataset, {"streamline_group": streamline_group,
                                    "input_group": input_group}, model, device)
    subset = getattr(dataset, f"{split}_set")
    angles = []
    with torch.no_grad():
        for subj_idx in range(subset.nb_subjects):
            sft_data = subset.get_subject(subj_idx).sft_data_list[0]
            linear = torch.as_tensor(
                np.asarray(sft_data.space_attributes[0])[:3, :3],
                dtype=torch.float32, device=device)
            ids = np.arange(sft_data.nb_streamlines)
            for start in range(0, len(ids), batch_size):
                request = BatchRequest(split, 0, start // batch_size,
                                       [(subj_idx, ids[start:start + batch_size])])
                batch = loader.load_batch(request).to(device)
                if batch.inputs is None:
                    batch.inputs = loader.compute_inputs(batch, device)
                outputs = model(batch.inputs_list(), batch.input_streamlines())
                predicted, _ = model.get_tracking_directions(outputs, "det")
                targets, eos = compute_direction_targets(
                    batch.target_streamlines(), model.add_eos)
                keep = torch.ones(len(targets), dtype=torch.bool, device=device) \
                    if eos is None else eos == 0
                cosines = torch.nn.functional.cosine_similarity(
                    predicted[keep] @ linear.T, targets[keep] @ linear.T, dim=1)
                angles.append(torch.rad2deg(torch.arccos(
                    cosines.clamp(-1, 1))).cpu())
    dataset.close()
    return float(torch.cat(angles).mean())

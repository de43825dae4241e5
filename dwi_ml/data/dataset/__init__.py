"""Reading a dwi_ml HDF5 file: subjects, volumes and streamlines.

See docs/architecture.md ("Dataset API").
"""
from dwi_ml.data.dataset.mri_data import LazyMRIData, MRIData
from dwi_ml.data.dataset.multi_subject_dataset import MultiSubjectDataset
from dwi_ml.data.dataset.sft_data import LazySFTData, SFTData
from dwi_ml.data.dataset.subjects import SubjectData
from dwi_ml.data.dataset.subsets import MultiSubjectSubset

__all__ = ["LazyMRIData", "LazySFTData", "MRIData", "MultiSubjectDataset",
           "MultiSubjectSubset", "SFTData", "SubjectData"]

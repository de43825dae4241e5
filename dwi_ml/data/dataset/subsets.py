"""The subjects of one split (training, validation or testing)."""


class MultiSubjectSubset:
    """The subjects of one split, numbered in alphabetical order.

    Parameters
    ----------
    split : str
        'training', 'validation' or 'testing'.
    subjects_data : list of SubjectData
        Sorted by subject id.
    """

    def __init__(self, split, subjects_data=()):
        self.split = split
        self._subjects_data = list(subjects_data)
        self.subjects = [subject.subject_id for subject in self._subjects_data]

    @property
    def nb_subjects(self):
        """Number of subjects loaded in this split."""
        return len(self._subjects_data)

    def get_subject(self, subj_idx):
        """The SubjectData of subject ``subj_idx`` (lazy or not)."""
        return self._subjects_data[subj_idx]

    def get_lengths(self, subj_idx, group_idx):
        """(N,) int64 number of points per streamline, from RAM."""
        return self._subjects_data[subj_idx].sft_data_list[group_idx].lengths

    def get_lengths_mm(self, subj_idx, group_idx):
        """(N,) float32 euclidean length of each streamline in mm, from RAM."""
        return self._subjects_data[subj_idx].sft_data_list[group_idx].lengths_mm

    def __repr__(self):
        return (f"MultiSubjectSubset('{self.split}', "
                f"{self.nb_subjects} subjects)")

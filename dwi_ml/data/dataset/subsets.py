"""The subjects of one split (training, validation or testing)."""
import numbers

from dwi_ml.io_utils.errors import DwiMLUserError


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
        """The SubjectData of one subject (lazy or not).

        Parameters
        ----------
        subj_idx : int or str
            Its index in :attr:`subjects` (alphabetical order), or its id.

        Returns
        -------
        SubjectData
        """
        return self._subjects_data[self._index(subj_idx)]

    def get_lengths(self, subj_idx, group_idx):
        """(N,) int64 number of points per streamline, from RAM.

        Parameters
        ----------
        subj_idx : int or str
            As in :meth:`get_subject`.
        group_idx : int
            Index of the streamline group in the dataset's
            ``streamline_groups``.
        """
        return self._sft_data(subj_idx, group_idx).lengths

    def get_lengths_mm(self, subj_idx, group_idx):
        """(N,) float32 euclidean length of each streamline in mm, from RAM.

        Parameters are those of :meth:`get_lengths`.
        """
        return self._sft_data(subj_idx, group_idx).lengths_mm

    def _index(self, subj_idx):
        if isinstance(subj_idx, str):
            if subj_idx not in self.subjects:
                raise DwiMLUserError(
                    f"{self.split} subjects: no subject '{subj_idx}'; loaded: "
                    f"{', '.join(self.subjects) or 'none'}.")
            return self.subjects.index(subj_idx)
        if (isinstance(subj_idx, bool)
                or not isinstance(subj_idx, numbers.Integral)
                or not 0 <= subj_idx < len(self._subjects_data)):
            raise DwiMLUserError(
                f"{self.split} subjects: expected a subject index in [0, "
                f"{len(self._subjects_data)}) or a subject id, got "
                f"{subj_idx!r}.")
        return int(subj_idx)

    def _sft_data(self, subj_idx, group_idx):
        groups = self.get_subject(subj_idx).sft_data_list
        if (isinstance(group_idx, bool)
                or not isinstance(group_idx, numbers.Integral)
                or not 0 <= group_idx < len(groups)):
            raise DwiMLUserError(
                f"{self.split} subjects: expected a streamline group index "
                f"in [0, {len(groups)}), got {group_idx!r}.")
        return groups[group_idx]

    def __repr__(self):
        return (f"MultiSubjectSubset('{self.split}', "
                f"{self.nb_subjects} subjects)")

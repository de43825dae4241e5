"""Split: the one name of the training, validation and testing sets.

The HDF5 file lists subjects per split, the dataset has one subset per
split, the sampler plans batches per split, the loader augments only
``TRAINING`` batches, and the logs of a split start with its
``log_prefix`` (``train_loss.npy``, ``valid_loss.npy``).
"""
import enum


class Split(str, enum.Enum):
    """A str enum: ``Split.TRAINING == "training"``, hashes as the string.

    Old checkpoints and ``parameters.json`` files hold the plain strings;
    they compare and look up equal to the members.
    """

    TRAINING = "training"
    VALIDATION = "validation"
    TESTING = "testing"

    def __str__(self):
        return self.value

    def __repr__(self):
        # Messages list choices as the strings a user types.
        return repr(self.value)

    def __format__(self, spec):
        return format(self.value, spec)

    @property
    def code(self):
        """0, 1 or 2: this split's number in random seeds (never change)."""
        return _CODES[self]

    @property
    def log_prefix(self):
        """'train', 'valid' or 'test': the prefix of this split's logs."""
        return _LOG_PREFIXES[self]

    @classmethod
    def from_log_prefix(cls, prefix):
        """The split whose logs start with ``prefix`` ('train', 'valid')."""
        return next(split for split, value in _LOG_PREFIXES.items()
                    if value == prefix)


_LOG_PREFIXES = {Split.TRAINING: "train", Split.VALIDATION: "valid",
                 Split.TESTING: "test"}
# Looked up once per batch (the batch's random stream).
_CODES = {split: code for code, split in enumerate(Split)}

# The splits a trainer samples batches from, in the order of saved states.
SAMPLED_SPLITS = (Split.TRAINING, Split.VALIDATION)

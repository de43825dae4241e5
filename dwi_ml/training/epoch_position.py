"""Where a trainer stands inside an epoch, as saved in checkpoints."""
from dataclasses import asdict, dataclass

TRAIN_PHASE = "train"
VALID_PHASE = "valid"
# Both phases are done; the epoch's monitors and checkpoint are not.
END_PHASE = "end"


@dataclass
class EpochPosition:
    """The phase in progress and how much of it is done.

    Attributes
    ----------
    phase : str
        'train', 'valid' or 'end' (the epoch's batches are all done).
    nb_batches_done : int
        Batches of that phase already finished (and optimised, in
        training); the next batch to run has this index.
    elapsed_s : float
        Seconds already spent in that phase (its time log adds them up).
    """

    phase: str = TRAIN_PHASE
    nb_batches_done: int = 0
    elapsed_s: float = 0.0

    @property
    def at_epoch_start(self):
        """True before the first training batch of an epoch."""
        return self.phase == TRAIN_PHASE and self.nb_batches_done == 0

    def start_phase(self, phase):
        """Move to the first batch of ``phase``."""
        self.phase = phase
        self.nb_batches_done = 0
        self.elapsed_s = 0.0

    def state_dict(self):
        """Plain-Python state."""
        return asdict(self)

    @classmethod
    def from_state(cls, state):
        """The position saved by :meth:`state_dict` (epoch start if None)."""
        if state is None:
            return cls()
        return cls(str(state["phase"]), int(state["nb_batches_done"]),
                   float(state["elapsed_s"]))

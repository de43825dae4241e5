"""Curves computed from logs: ``diff(a, b)`` and ``sum(a, b, ...)``.

A graph of ``visualize_logs.py`` may name, instead of a log, an expression
over log names (file names in ``logs/`` without ``.npy``):

- ``diff(a, b)``: ``a - b``, e.g. ``diff(valid_loss, train_loss)``;
- ``sum(a, b, ...)``: ``a + b + ...`` (two logs or more).

Expressions are parsed by a tiny grammar, never evaluated as Python:
``OPERATOR ( NAME , NAME [, NAME ...] )``, spaces allowed, no nesting. Logs
of different lengths (a run in progress) are combined over the epochs (or
batches) they all have.
"""
import re
from dataclasses import dataclass

import numpy as np

from dwi_ml.io_utils.errors import DwiMLUserError

# Log names as the trainer writes them: no parenthesis, comma or space.
LOG_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
EXPRESSION = re.compile(r"\s*(?P<operator>\w+)\s*\((?P<arguments>.*)\)\s*")
# Number of arguments of each operator: (minimum, maximum or None).
ARITY = {"diff": (2, 2), "sum": (2, None)}


@dataclass(frozen=True)
class LogExpression:
    """An operator and the log names it combines, in order."""
    operator: str
    log_names: tuple

    def evaluate(self, logs):
        """The computed curve, or None when a log is missing.

        Parameters
        ----------
        logs : dict of str to np.ndarray
            1-D float64 values by log name.

        Returns
        -------
        np.ndarray or None
            As long as the shortest of the logs.
        """
        if not all(name in logs for name in self.log_names):
            return None
        length = min(len(logs[name]) for name in self.log_names)
        values = np.stack([logs[name][:length] for name in self.log_names])
        if self.operator == "diff":
            return values[0] - values[1]
        return values.sum(axis=0)


def parse_log_expression(text):
    """Parse ``text`` as an expression; None when it is a plain log name.

    Raises
    ------
    DwiMLUserError
        Text that is neither a log name nor a well-formed expression: an
        unknown operator, a wrong number of arguments, or an argument that
        is not a log name (e.g. a nested expression).
    """
    if LOG_NAME.fullmatch(text):
        return None
    match = EXPRESSION.fullmatch(text)
    if match is None:
        raise DwiMLUserError(
            f"graph log '{text}': expected a log name or "
            f"OPERATOR(LOG, LOG, ...) with OPERATOR among "
            f"{', '.join(ARITY)}.")
    operator = match["operator"]
    if operator not in ARITY:
        raise DwiMLUserError(
            f"graph log '{text}': unknown operator '{operator}', expected "
            f"one of {', '.join(ARITY)}.")
    names = tuple(name.strip() for name in match["arguments"].split(","))
    for name in names:
        if not LOG_NAME.fullmatch(name):
            raise DwiMLUserError(
                f"graph log '{text}': expected log names as arguments, found "
                f"'{name}' (expressions do not nest).")
    minimum, maximum = ARITY[operator]
    if len(names) < minimum or (maximum is not None and len(names) > maximum):
        expected = (f"{minimum}" if minimum == maximum
                    else f"at least {minimum}")
        raise DwiMLUserError(
            f"graph log '{text}': {operator} takes {expected} logs, found "
            f"{len(names)}.")
    return LogExpression(operator, names)


def base_log_names(text):
    """The logs that ``text`` (a log name or an expression) reads."""
    expression = parse_log_expression(text)
    return (text,) if expression is None else expression.log_names


def add_expression_logs(experiments, names):
    """Compute each expression of ``names`` into every experiment's logs.

    The curve is stored under the expression's text, as if it were a log,
    in the experiments that have all of its logs (and a finite value).
    Plain log names are left alone.

    Parameters
    ----------
    experiments : list of ExperimentLogs
    names : iterable of str
        Log names and expressions, e.g. every log of every panel.
    """
    for name in names:
        expression = parse_log_expression(name)
        if expression is None:
            continue
        for experiment in experiments:
            values = expression.evaluate(experiment.logs)
            if values is not None and np.isfinite(values).any():
                experiment.logs[name] = values

"""Models: base classes, direction getters and Learn2track.

Importing the package registers every concrete model, so that
:func:`dwi_ml.models.model_io.load_model_from_params_and_state` can rebuild
any of them from its saved folder.
"""
import dwi_ml.models.transformers  # noqa: F401 (registers the Transformer models)
from dwi_ml.models.learn2track import Learn2TrackModel
from dwi_ml.models.main_models import MainModelAbstract, MainModelOneInput
from dwi_ml.models.model_io import (
                                    MODEL_REGISTRY,
                                    load_model_from_params_and_state,
                                    register_model,
)

__all__ = ["Learn2TrackModel", "MainModelAbstract", "MainModelOneInput",
           "MODEL_REGISTRY", "load_model_from_params_and_state",
           "register_model"]

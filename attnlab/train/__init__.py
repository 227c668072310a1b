"""Training and comparison: experiment configs, data and tasks, the Trainer, checkpoints."""

from .config import DataConfig, ExperimentConfig, MQARConfig, PasskeyConfig, TrainConfig
from .trainer import Trainer, TrainingDiverged

__all__ = ["ExperimentConfig", "DataConfig", "TrainConfig", "MQARConfig", "PasskeyConfig", "Trainer",
           "TrainingDiverged"]

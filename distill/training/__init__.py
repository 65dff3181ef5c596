"""Training: the loop both stages share (:mod:`.loop`), torchrun/DDP set-up
(:mod:`.distributed`) and one small file per stage (:mod:`.teacher`, ...).

Stage modules are not imported here, so ``import distill.training`` stays light.
"""

from distill.training.distributed import DistContext, ShardedBatches, cleanup, setup
from distill.training.loop import (
    RESUME_FREE_KEYS,
    Stage,
    TrainingDiverged,
    TrainResult,
    check_out_dir,
    lr_at,
    seed_everything,
    train,
)

__all__ = [
    "RESUME_FREE_KEYS",
    "DistContext",
    "ShardedBatches",
    "Stage",
    "TrainResult",
    "TrainingDiverged",
    "check_out_dir",
    "cleanup",
    "lr_at",
    "seed_everything",
    "setup",
    "train",
]

"""Training: what a stage is (:mod:`.stage`), the loop both stages share (:mod:`.loop`) with
its checkpoints (:mod:`.checkpoints`) and logs (:mod:`.logs`), torchrun/DDP set-up
(:mod:`.distributed`), and one small file per stage (:mod:`.teacher`, :mod:`.student`).

Stage modules are not imported here, so ``import distill.training`` stays light.
"""

from distill.training.checkpoints import RESUME_FREE_KEYS, checkpoint_to_resume
from distill.training.distributed import DistContext, ShardedBatches, cleanup, setup
from distill.training.loop import TrainingDiverged, lr_at, seed_everything, train
from distill.training.stage import Stage, TrainResult

__all__ = [
    "RESUME_FREE_KEYS",
    "DistContext",
    "ShardedBatches",
    "Stage",
    "TrainResult",
    "TrainingDiverged",
    "checkpoint_to_resume",
    "cleanup",
    "lr_at",
    "seed_everything",
    "setup",
    "train",
]

"""Students: rerankers trained to imitate a cached teacher (cross-encoder, bi-encoder, LightGBM)."""

from distill.groups import Group, GroupConfig, build_groups
from distill.training import TrainConfig
from students.bi_encoder import BiEncoderRanker, train_bi_encoder_student
from students.cross_encoder import train_cross_encoder_student
from students.grades import teacher_grades
from students.lightgbm import LightGBMConfig, LightGBMRanker, train_lightgbm_student
from students.losses import LOSSES, build_loss
from students.ranker_features import RankerFeatures

__all__ = [
    "LOSSES", "BiEncoderRanker", "Group", "GroupConfig", "LightGBMConfig", "LightGBMRanker", "RankerFeatures",
    "TrainConfig",
    "build_groups", "build_loss", "teacher_grades", "train_bi_encoder_student", "train_cross_encoder_student",
    "train_lightgbm_student",
]

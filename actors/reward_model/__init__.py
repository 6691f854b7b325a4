"""UI-Genie-RM on CPU: frozen small-LM features + a trained binary head (see ``model``)."""
from actors.reward_model.model import (RMInput, RewardModel, RewardModelSettings, balanced_pos_weight,
                                       format_rm_prompt)

__all__ = ["RMInput", "RewardModel", "RewardModelSettings", "balanced_pos_weight", "format_rm_prompt"]

"""A deterministic simulated Android phone (launcher, Settings, Contacts, To-do, Clock) and its
task suite, for running and testing UI-Genie without an emulator."""
from .device import SimulatedDevice
from .reference import reference_actions, setup
from .state import default_state
from .seed_tasks import seed_suite
from .tasks import TEMPLATES, SimTask, combo_task, task_suite

__all__ = ["SimulatedDevice", "SimTask", "TEMPLATES", "combo_task", "default_state",
           "reference_actions", "seed_suite", "setup", "task_suite"]

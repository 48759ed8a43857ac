"""Task bundles: two file formats, one model, and the catalog that finds bundles on disk.

- `model`: `Task` and its verification variants, what the runner uses.
- `assay_format`: Assay's own `task.yaml` (existing bundles), loaded unchanged.
- `dn_format` and `compose`: the reference platform's `task.yaml` + `docker-compose.yaml`.
- `catalog`: `load_bundle`, `load_catalog`, `TaskCatalog`.
"""

from infrastructure.tasks.assay_format import TaskFile
from infrastructure.tasks.catalog import (
    SHIPPED_TASKS_DIR,
    TASK_FILE,
    TaskCatalog,
    TaskProblem,
    UnknownTask,
    check_bundles,
    load_bundle,
    load_catalog,
)
from infrastructure.tasks.model import (
    AgentTree,
    CheckerScriptVerification,
    FlagFileVerification,
    FlagVerification,
    ScriptVerification,
    Task,
    TaskBundleError,
    TaskScript,
    TaskScriptOutputError,
    Verification,
    environment_name,
    parse_provision_output,
    reserved_environment,
    variables_environment,
    version_key,
)

__all__ = [
    "SHIPPED_TASKS_DIR",
    "TASK_FILE",
    "AgentTree",
    "CheckerScriptVerification",
    "FlagFileVerification",
    "FlagVerification",
    "ScriptVerification",
    "Task",
    "TaskBundleError",
    "TaskCatalog",
    "TaskFile",
    "TaskProblem",
    "TaskScript",
    "TaskScriptOutputError",
    "UnknownTask",
    "Verification",
    "check_bundles",
    "environment_name",
    "load_bundle",
    "load_catalog",
    "parse_provision_output",
    "reserved_environment",
    "variables_environment",
    "version_key",
]

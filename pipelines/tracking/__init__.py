"""Everything MLflow: the store (`stores`: where it is, connecting to it) and its runs
(`runs`, each holding a lease while open: `leases`), the served models (`pyfunc_models`,
logged by `served_models` with the code `model_code` collects), and the registry (`registry`)
with the champion rule (`champion`).

Of `features/`, `models/` and `pipelines/`, this package is the only code that imports
mlflow. Its public names are re-exported here, so
callers use `tracking.log_metrics(...)`, `tracking.register_and_promote(...)`. A logged model
refers to its pyfunc class by module path; the classes are importable from here and from
`served_models` as well as from `pyfunc_models`, so a model logged under any of those paths
loads.
"""

from pipelines.tracking.champion import (
    CHAMPION,
    champion_decision,
    current_champion,
    model_labels,
)
from pipelines.tracking.leases import interrupted_run, running_elsewhere
from pipelines.tracking.registry import (
    Promotion,
    link_evaluation,
    model_version_of,
    register_and_promote,
)
from pipelines.tracking.runs import (
    EpochMetricsLogger,
    delete_tag,
    download_artifacts,
    find_runs,
    finished_model_uri,
    log_artifacts,
    log_dataset,
    log_dict,
    log_figure,
    log_metrics,
    log_params,
    log_table,
    log_text,
    name_refusal,
    open_run,
    open_run_id,
    run_metrics,
    run_params,
    run_tags,
    set_description,
    set_tags,
)
from pipelines.tracking.served_models import (
    SpeechClassifierModel,
    TextClassifierModel,
    evaluated_model,
    load_predictor,
    load_served_model,
    log_speech_classifier,
    log_text_classifier,
    log_to_run,
    model_run_files,
)
from pipelines.tracking.stores import (
    check_tracking,
    connect,
    is_file_store,
    local_store_uri,
    redact,
    require_writable_store,
    store_database,
)

__all__ = [
    "CHAMPION", "EpochMetricsLogger", "Promotion", "SpeechClassifierModel", "TextClassifierModel",
    "champion_decision", "check_tracking", "connect", "current_champion", "delete_tag",
    "download_artifacts", "evaluated_model", "find_runs", "finished_model_uri", "interrupted_run",
    "is_file_store", "link_evaluation", "load_predictor", "load_served_model", "local_store_uri",
    "log_artifacts", "log_dataset", "log_dict", "log_figure", "log_metrics", "log_params",
    "log_speech_classifier", "log_table", "log_text", "log_text_classifier", "log_to_run",
    "model_labels", "model_run_files", "model_version_of", "name_refusal", "open_run",
    "open_run_id", "redact", "register_and_promote",
    "require_writable_store", "run_metrics", "run_params", "run_tags", "running_elsewhere",
    "set_description", "set_tags", "store_database",
]

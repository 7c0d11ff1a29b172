"""`--resume RUN_ID`: the interrupted run's options, where its data and checkpoint are now, and
the checks that it can be continued, all made before anything runs (`lifecycle.prepare_run`)."""

from __future__ import annotations

import logging
from pathlib import Path

from pipelines import checkpoints, distribute, tracking
from pipelines.config import TaskConfig, config_from_params
from pipelines.errors import SetupError

log = logging.getLogger(__name__)

# options naming where things are, not what a run does: a resume takes them as given
LOCATIONS = ("data_dir", "tfds_data_dir", "cache_dir", "checkpoint_dir")


def resumed_config(config: TaskConfig, pipeline: str) -> TaskConfig:
    """The options the interrupted run `config.run.resume` was started with, in this store;
    where its data, caches and checkpoint are (`LOCATIONS`) as given now, if given (a
    relative `--data-dir` is logged as typed; the data digest is checked against the run's).

    Raises:
        SetupError: No such run, not a KILLED, FAILED or abandoned RUNNING `pipeline` run,
            or no checkpoint, or a damaged one.
    """
    run = config.run
    if run.sweep:
        raise SetupError("--resume continues one interrupted run; it cannot be combined with "
                         "--sweep")
    database = tracking.store_database(run.tracking_uri, run.store_dir)
    if database is not None and not database.is_file():  # none is made there
        raise SetupError(f"--resume {run.resume}: there is no MLflow store at {database}: pass "
                         "the --store-dir or --tracking-uri the run logged to")
    params, tags = tracking.interrupted_run(run.resume, run.tracking_uri, run.store_dir)
    parent = tags.get("mlflow.parentRunId")
    sweep = run.resume if tags.get("pipeline") == f"{pipeline}-sweep" else (
        parent if parent and tracking.run_tags(parent, missing_ok=True).get("pipeline")
        == f"{pipeline}-sweep" else None)
    if sweep:
        raise SetupError(f"--resume {run.resume}: that run is "
                         f"{'a sweep' if sweep == run.resume else f'a trial of sweep {sweep}'}"
                         ": a sweep is not continued by --resume; run the sweep again")
    if tags.get("pipeline") != pipeline:
        raise SetupError(f"--resume {run.resume}: that run is not a {pipeline} training run "
                         f"(pipeline tag {tags.get('pipeline')!r})")
    if not tags.get("checkpoint"):
        raise SetupError(f"--resume {run.resume}: the run keeps no checkpoint (a multi-worker "
                         "run keeps none; a run removes its own once trained): start it again")
    defaults = type(config)().options()
    located = {name: value for name, value in config.options().items()  # as given, if given
               if name in LOCATIONS and value != defaults[name]}
    # the run's folder in a --checkpoint-dir given (moved there), then the folder the run
    # tagged, then its folder in the default checkpoint dir here (a project moved elsewhere)
    here = checkpoints.run_folder(run.checkpoint_dir, run.resume)
    tagged = Path(tags["checkpoint"])
    places = list(dict.fromkeys([here, tagged] if "checkpoint_dir" in located
                                else [tagged, here]))
    checkpoint, latest = next(((place, latest) for place in places
                               if (latest := checkpoints.latest_checkpoint(place))),
                              (places[0], None))
    if latest is None:
        raise SetupError(f"--resume {run.resume}: no checkpoint at "
                         f"{' or '.join(map(str, places))} (the run stopped before its first "
                         "epoch ended, or the folder was moved: pass --checkpoint-dir of where "
                         "it is); start a new run")
    damage = checkpoints.damage(latest)
    if damage:
        raise SetupError(f"--resume {run.resume}: its checkpoint {latest} is damaged "
                         f"({damage}); start a new run")
    resumed = config_from_params(type(config), params).replace(
        tracking_uri=run.tracking_uri, store_dir=run.store_dir, resume=run.resume,
        **located | {"checkpoint_dir": str(checkpoint.parent)})
    logged = resumed.options()
    ignored = config.changed_flags(defaults, names=[
        name for name, value in config.options().items()
        if value != logged[name] and name not in located])
    if ignored:
        log.warning("--resume %s takes every option from the run's logged parameters; not "
                    "used: %s", run.resume, ", ".join(ignored))
    return resumed


def require_same_footing(config: TaskConfig, data_digest: str | None) -> None:
    """Checks that the resumed run `config.run.resume` goes on from what it started with: the
    same data (its `data_digest`, when given) and a global batch this machine's replicas make
    (the checkpoint's learning-rate schedule counts steps of it). Made before the run is
    reopened, so a refusal leaves it as it was (KILLED, say: it can be resumed later).

    Raises:
        SetupError: The data changed, or the replicas make another global batch.
    """
    run = config.run
    logged = tracking.run_tags(run.resume).get("data_digest")
    if data_digest is not None and logged != data_digest:
        raise SetupError(f"--resume {run.resume}: the data changed since the run started "
                         f"(digest {data_digest}, the run's {logged}); start a new run")
    trained = tracking.run_metrics(run.resume).get("global_batch_size")
    batch = distribute.global_batch_size(config.optim.batch_size, run.strategy)
    if trained is not None and trained != batch:
        raise SetupError(
            f"--resume {run.resume}: the run trained at a global batch of {trained:g} examples,"
            f" this machine's replicas make {batch:g}; resume it where it has as many replicas"
            " (devices) as it started with")

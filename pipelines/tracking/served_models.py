"""Logging the served models (`pyfunc_models`: raw audio or raw text in) with a signature, the
code they need and pinned requirements, and loading a logged model back.

A logged model is self-contained: its pyfunc class and every project module it imports ship
in its `code/` folder (`model_code`), its `requirements.txt` pins every package that code
imports, so it loads with `mlflow.pyfunc.load_model` in an environment with only those
installed. Versions logged without `code/` name the same classes by their module path and load
where this project is installed.

A model that cannot be used (no such registered model, alias or version; its artifact folder
or one of its files missing; a file damaged or truncated) raises `ModelError` naming the model
(URI, registered name and version) and what is wrong, from `load_served_model` (`predict`,
`evaluate`) and from `load_context` (`mlflow models serve`, whose server then fails to start).
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array

from pipelines.errors import ModelError
from pipelines.tracking import model_code
from pipelines.tracking.pyfunc_models import SpeechClassifierModel, TextClassifierModel
from pipelines.tracking.registry import model_version_of, models_uri_parts
from pipelines.tracking.runs import logged_text, run_params
from pipelines.tracking.stores import (
    DB_NAME,
    check_tracking,
    connect,
    require_writable_store,
    store_database,
)


def connect_to_model_store(model_uri: str, tracking_uri: str | None, store_dir: str | Path,
                           needs_store: bool = False) -> None:
    """Points MLflow at the store a model URI is read from. A model's folder on disk needs
    none: the store is connected to only where it exists (or `tracking_uri` names one), so
    none is made, unless the command reads or writes the store (`needs_store`: the run that
    logged the folder's model).

    Raises:
        SetupError: The tracking server does not answer.
        ModelError: No store in `store_dir` (without `tracking_uri`), or no database file where
            a `sqlite:///` tracking URI points; none is made there.
    """
    check_tracking(tracking_uri)
    in_store = urlparse(model_uri).scheme in ("models", "runs")  # not a folder's path
    database = store_database(tracking_uri, store_dir)
    if (in_store or needs_store) and database is not None and not database.is_file():
        if not tracking_uri:
            raise ModelError(f"{model_uri}: there is no MLflow store in {store_dir} (no "
                             f"{DB_NAME}): pass the --store-dir a run logged to, or "
                             "--tracking-uri")
        raise ModelError(f"{model_uri}: there is no MLflow store at {database} (the tracking "
                         "URI's SQLite file does not exist): pass the URI a run logged to")
    on_disk = urlparse(model_uri).scheme in ("", "file")
    if (in_store or not on_disk or needs_store or tracking_uri
            or (database is not None and database.is_file())):
        connect(tracking_uri, store_dir)


def evaluated_model(model_uri: str, tracking_uri: str | None, store_dir: str | Path,
                    sends: Sequence[str]) -> tuple[str, dict[str, str]]:
    """The model an `evaluate` command scores, before any data is read: `model_uri` pinned to
    the version it names now (`models:/NAME/N` for an alias or `latest`, so that a champion
    moving during the evaluation does not change which version is scored and tagged), and the
    parameters of the run that logged it (its options).

    Raises:
        ModelError: No store, no such model, its run is not in the store, or it takes other
            inputs than `sends` (a model of the other pipeline).
    """
    connect_to_model_store(model_uri, tracking_uri, store_dir, needs_store=True)
    require_writable_store(tracking_uri, store_dir)  # the evaluation is a run of its own
    version = registered_version(model_uri)  # a missing model, alias or version named
    pinned = model_uri if version is None else f"models:/{version.name}/{version.version}"
    try:
        info = mlflow.models.get_model_info(pinned)
        params = run_params(info.run_id)
    except (MlflowException, OSError) as error:
        raise unreadable_run(model_uri, error) from None
    require_inputs(model_uri, info.signature.inputs if info.signature else None, sends)
    return pinned, params


def require_inputs(name: str, schema, sends: Sequence[str]) -> None:
    """Raises ModelError when a model's input `schema` names none of the columns a command
    `sends` (a model of the other pipeline); a model without named inputs passes."""
    takes = schema.input_names() if schema is not None and schema.has_input_names() else None
    if sends and takes is not None and not set(sends) & set(takes):
        raise ModelError(f"{name}: takes {', '.join(takes)}, not the {', '.join(sends)} this "
                         "command sends (a model of the other pipeline?)")


def registered_version(model_uri: str):
    """The registered version a `models:/` URI names (None for other URIs).

    Raises:
        ModelError: No such registered model, alias or version; for a model name no version
            was ever registered under, it says a training run registers one.
    """
    try:
        return model_version_of(model_uri)
    except MlflowException as error:
        name = models_uri_parts(model_uri)[0]
        try:
            MlflowClient().get_registered_model(name)
            hint = ""
        except MlflowException:
            hint = f"; a training run registers the model {name}"
        raise ModelError(f"{model_uri}: no such model version ({error.message}){hint}"
                         ) from None


def load_served_model(model_uri: str, tracking_uri: str | None, store_dir: str | Path,
                      sends: Sequence[str] = (), needs_store: bool = False):
    """Loads a logged or registered model (e.g. `models:/name@champion`) as pyfunc.

    Args:
        sends: The input columns the caller will send (a speech command sends `audio`, a
            sentiment one `text`); a model whose signature takes none of them is refused.

    Raises:
        SetupError: The tracking server does not answer.
        ModelError: No store in `store_dir` (without `tracking_uri`; none is made), no such
            model, alias or version, its artifacts are missing or damaged, or it takes other
            inputs than `sends`; the message names the model and what is wrong.
    """
    connect_to_model_store(model_uri, tracking_uri, store_dir, needs_store)
    version = registered_version(model_uri)
    name = model_uri if version is None else (
        f"{model_uri} (model '{version.name}' version {version.version})")
    folder = None if version is None else local_artifact_folder(model_uri)
    if folder is not None and not folder.is_dir():
        raise ModelError(f"{name}: its artifact folder {folder} is missing")
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except ModelError as error:  # from load_context: names the version and the file
        raise ModelError(f"{model_uri}: {error}") from None
    except (MlflowException, OSError, pickle.UnpicklingError, EOFError) as error:
        message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
        raise ModelError(f"{name}: cannot be loaded ({message})") from error
    require_inputs(name, model.metadata.get_input_schema(), sends)
    return model


def load_predictor(model_uri: str, tracking_uri: str | None, store_dir: str | Path,
                   needs_store: bool = False):
    """The predictor behind a logged model's pyfunc class (`pipelines.serving`'s
    SpeechPredictor or TextPredictor), for commands that run the model themselves (`listen`,
    `export`; `needs_store` as `connect_to_model_store`); raises as `load_served_model`
    does."""
    return load_served_model(model_uri, tracking_uri, store_dir, needs_store=needs_store
                             ).unwrap_python_model().predictor


def unreadable_run(model_uri: str, error: Exception) -> ModelError:
    """The error for a model whose run cannot be read (not in this store, deleted)."""
    message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
    return ModelError(f"{model_uri}: the run that logged it cannot be read ({message})")


def model_run_files(model_uri: str, artifact_path: str) -> tuple[str, set[str]]:
    """The id of the run that logged `model_uri`, and the names of the files it holds under
    `artifact_path`.

    Raises:
        ModelError: That run cannot be read or is deleted (nothing can be logged on it).
    """
    client = mlflow.MlflowClient()
    try:
        run_id = mlflow.models.get_model_info(model_uri).run_id
        if run_id is None:  # saved, not logged (`mlflow.pyfunc.save_model`)
            raise ModelError(f"{model_uri}: logged by no run, so there is no run to log the "
                             "files on")
        run = client.get_run(run_id).info
        files = {Path(info.path).name for info in client.list_artifacts(run.run_id,
                                                                         artifact_path)}
    except (MlflowException, OSError) as error:
        raise unreadable_run(model_uri, error) from None
    if run.lifecycle_stage == "deleted":
        raise ModelError(f"{model_uri}: the run that logged it, {run.run_id}, is deleted "
                         f"(`mlflow runs restore --run-id {run.run_id}` restores it)")
    return run.run_id, files


def log_to_run(run_id: str, paths: Sequence[str | Path], artifact_path: str,
               tags: Mapping[str, str] | None = None) -> None:
    """Logs files as artifacts of run `run_id` (not the active run), under `artifact_path`
    (the run of a model: `model_run_files`), and sets `tags` on it."""
    client = mlflow.MlflowClient()
    for path in paths:
        client.log_artifact(run_id, str(path), artifact_path)
    for key, value in (tags or {}).items():
        client.set_tag(run_id, key, logged_text(value))


def local_artifact_folder(model_uri: str) -> Path | None:
    """The local folder holding a registered version's artifacts (None where they are not on
    this file system)."""
    location = urlparse(ModelsArtifactRepository.get_underlying_uri(model_uri))
    return Path(url2pathname(location.path)) if location.scheme in ("", "file") else None


def output_schema(labels: Sequence[str]) -> Schema:
    return Schema([ColSpec("string", "label")]
                  + [ColSpec("double", f"probability_{label}") for label in labels]
                  + [ColSpec("string", "error", required=False)])


INPUT_EXAMPLE_TEXTS = ("A moving, beautifully acted film.", "Two hours I will never get back.")


def log_text_classifier(classifier_path: str | Path, labels: Sequence[str]) -> str:
    """Logs a text classifier as a pyfunc model that takes raw strings.

    Args:
        classifier_path: A .keras model taking strings, or a joblib scikit-learn pipeline.
        labels: Class names in output order.

    Returns:
        The logged model's URI.
    """
    with tempfile.TemporaryDirectory() as folder:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=TextClassifierModel(labels),
            artifacts={"classifier": str(classifier_path)},
            signature=ModelSignature(inputs=Schema([ColSpec("string", "text")]),
                                     outputs=output_schema(labels)),
            input_example=pd.DataFrame({"text": list(INPUT_EXAMPLE_TEXTS)}),
            code_paths=model_code.write_code(Path(folder)),
            pip_requirements=model_code.requirements(),
        )
    return info.model_uri


def log_speech_classifier(model_path: str | Path, config_path: str | Path,
                          labels: Sequence[str], input_example: pd.DataFrame, *,
                          infer_requirements: bool = False) -> str:
    """Logs a speech classifier as a pyfunc model that takes raw audio.

    Args:
        model_path: The .keras classifier, over waveforms (the MFCC stage its first layer,
            as speech runs log it) or over MFCC frames.
        config_path: Labels and feature configuration (SpeechPredictor.save_config).
        labels: Class names in output order.
        input_example: A few rows of `audio` bytes and/or `waveform` + `sample_rate`.
        infer_requirements: Let MLflow infer the pip requirements, which loads the model in a
            subprocess (~20 s), instead of pinning the installed versions of what it needs.

    Returns:
        The logged model's URI.
    """
    inputs = Schema([ColSpec("binary", "audio", required=False),
                     ColSpec(Array(DataType.double), "waveform", required=False),
                     ColSpec("long", "sample_rate", required=False)])
    with tempfile.TemporaryDirectory() as folder:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=SpeechClassifierModel(),
            artifacts={"classifier": str(model_path), "config": str(config_path)},
            signature=ModelSignature(inputs=inputs, outputs=output_schema(labels)),
            input_example=input_example,
            code_paths=model_code.write_code(Path(folder)),
            pip_requirements=None if infer_requirements else model_code.requirements(),
        )
    return info.model_uri

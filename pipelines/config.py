"""A task's config: one frozen dataclass per stage, composed; its flags and logged parameters.

Each stage config (data source, split composition, MFCC features, augmentation, model,
optimisation, run) is a frozen dataclass that lives beside the code that reads it and declares
each of its options once, as a field whose metadata holds the option's `help`, and optionally
its allowed values (`choices`) and an environment variable that sets the command-line default
(`env`; read when the parser is built, so a config made in code never picks up state that a
library left in os.environ). A stage shared by both tasks leaves the options whose values
differ between them without a default; each task gives them once, in its composition.

A task config (`SpeechConfig`, `SentimentConfig`) is a frozen `TaskConfig` dataclass whose
fields are its stages, each with its default instance. Option names are unique across a task's
stages, so the command line (`--units`) and the run's logged parameters (`units`) stay flat:
`options()`, `from_options(...)` and `replace(...)` convert between the flat names and the
nested config.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from pipelines.errors import ConfigError

log = logging.getLogger(__name__)

# options whose empty value would quietly mean the working folder, or no run to resume
NOT_EMPTY = ("store_dir", "checkpoint_dir", "cache_dir", "resume")


@dataclass(frozen=True)
class Option:
    """One option of a task: the stage that holds it, its field, and its type."""

    stage: str
    field: dataclasses.Field
    base: type
    optional: bool

    @property
    def name(self) -> str:
        return self.field.name

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def given(self, value: Any) -> str:
        """How a command line gives the option `value`: `--units 32`, `--no-register`."""
        if self.base is bool and isinstance(value, bool):
            return self.flag if value else f"--no-{self.flag[2:]}"
        return f"{self.flag} {value}"

    def parse(self, text: str) -> Any:
        """The value of a logged (string) parameter.

        Raises:
            ValueError: The text does not parse as the option's type.
        """
        if self.optional and text == "None":
            return None
        if self.base is bool:
            if text not in ("True", "False"):
                raise ConfigError(f"logged parameter {self.name}={text!r} is not a boolean")
            return text == "True"
        try:
            return self.base(text)
        except ValueError as error:
            raise ConfigError(f"logged parameter {self.name}={text!r} is not a "
                             f"{self.base.__name__}") from error


def field_type(cls: type, name: str) -> tuple[type, bool]:
    """(base type, optional?) of a dataclass field, resolving string annotations."""
    hint = typing.get_type_hints(cls)[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        base = next(arg for arg in typing.get_args(hint) if arg is not type(None))
        return base, True
    return hint, False


class TaskConfig:
    """Base of a task's config: a frozen dataclass whose fields are its stage configs."""

    @classmethod
    def stage_types(cls) -> dict[str, type]:
        """Stage name -> its config class, in declaration order."""
        hints = typing.get_type_hints(cls)
        return {item.name: hints[item.name] for item in dataclasses.fields(cls)}

    @classmethod
    def option_fields(cls) -> dict[str, Option]:
        """Option name -> where it is declared, over every stage.

        Raises:
            TypeError: Two stages declare an option of the same name.
        """
        found: dict[str, Option] = {}
        for stage, stage_type in cls.stage_types().items():
            for item in dataclasses.fields(stage_type):
                if item.name in found:
                    raise TypeError(f"{cls.__name__}: option {item.name!r} is declared by both "
                                    f"{found[item.name].stage} and {stage}")
                found[item.name] = Option(stage, item, *field_type(stage_type, item.name))
        return found

    @classmethod
    def from_options(cls, **values: Any) -> Self:
        """The task's default config with the named options changed.

        Raises:
            ValueError: A name is not an option of the task.
        """
        return cls().replace(**values)

    def replace(self, **values: Any) -> Self:
        """This config with the named options changed (stage validation runs again).

        Raises:
            ValueError: A name is not an option of the task, or a value is out of its range
                (ConfigError).
        """
        options = self.option_fields()
        unknown = sorted(set(values) - set(options))
        if unknown:
            raise ConfigError(f"unknown options: {', '.join(unknown)}")
        stages: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            stages.setdefault(options[name].stage, {})[name] = value
        try:
            return dataclasses.replace(self, **{
                stage: dataclasses.replace(getattr(self, stage), **changed)
                for stage, changed in stages.items()})
        except OverflowError:  # a float too large for the arithmetic of a check
            too_large = [f"{name} ({value:g})" for name, value in values.items()
                         if type(value) is float and abs(value) > 2**63]
            raise ConfigError(f"{', '.join(too_large) or 'an option'}: too large a "
                              "number") from None

    def options(self) -> dict[str, Any]:
        """Every option by its flat name, in declaration order (the run's parameters)."""
        return {name: getattr(getattr(self, option.stage), name)
                for name, option in self.option_fields().items()}

    def changed_flags(self, reference: Mapping[str, Any], names: Iterable[str] | None = None
                      ) -> list[str]:
        """`--flag value` of each option (of `names`; all by default) whose value here is not
        its value in `reference` (option name -> value), in declaration order: how messages
        name options given on a command line."""
        wanted = None if names is None else set(names)
        fields = self.option_fields()
        return [fields[name].given(value) for name, value in self.options().items()
                if (wanted is None or name in wanted) and value != reference[name]]

    def stage_options(self, *stages: str) -> list[str]:
        """The names of the options of `stages` (stage field names: "recurrent")."""
        return [name for name, option in self.option_fields().items() if option.stage in stages]

    def unused_options(self) -> dict[str, list[str]]:
        """What leaves options of this config without effect (`--model tfidf-logreg`) -> their
        names; none here (a task's config says which of its options its choices leave)."""
        return {}

    def warn_unused(self) -> None:
        """Logs a warning for each reason of `unused_options` naming its options given other
        than their defaults (`--units 32`): a flag typed in vain is named, not dropped in
        silence (an option set by its environment variable, as the command line's default, is
        not named)."""
        defaults, values = type(self)().options(), self.options()
        for name, option in self.option_fields().items():
            env = option.field.metadata.get("env")
            if env and os.environ.get(env) == values[name]:
                defaults[name] = values[name]
        for reason, names in self.unused_options().items():
            flags = self.changed_flags(defaults, names)
            if flags:
                log.warning("%s: not used: %s", reason, ", ".join(flags))

    def writable_folders(self) -> dict[str, str]:
        """What each folder a run writes (besides the MLflow store) is for -> its path, from
        every stage that writes one (`writable_folders()` of the stage)."""
        folders: dict[str, str] = {}
        for stage in self.stage_types():
            folders |= getattr(getattr(self, stage), "writable_folders", dict)()
        return folders


def config_parser(prog: str, description: str, cls: type[TaskConfig],
                  epilog: str | None = None) -> argparse.ArgumentParser:
    """A parser with one `--flag` per option of the task config `cls`, grouped by stage (the
    first paragraph of the stage class's docstring), defaults shown in --help."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = cls().options()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name, stage_type in cls.stage_types().items():
        summary = (stage_type.__doc__ or name).strip().split("\n\n")[0]
        title = " ".join(line.strip() for line in summary.splitlines()).rstrip(".")
        groups[name] = parser.add_argument_group(title)
    for name, option in cls.option_fields().items():
        metadata = option.field.metadata
        default = defaults[name]
        help_text = metadata.get("help", "").replace("%", "%%")
        if metadata.get("env"):
            default = os.environ.get(metadata["env"], default)
            help_text += f" [env: {metadata['env']}]"
        group = groups[option.stage]
        if option.base is bool:
            group.add_argument(option.flag, action=argparse.BooleanOptionalAction,
                               default=default, help=help_text)
            continue
        choices = metadata.get("choices")
        group.add_argument(option.flag, type=option.base, default=default, help=help_text,
                           choices=choices,
                           metavar=None if choices else option.base.__name__.upper())
    return parser


def config_from_args(cls: type[TaskConfig], args: argparse.Namespace) -> TaskConfig:
    """Builds the task config `cls` from parsed arguments, refusing what only a command line
    gives (a run logged earlier is read back as it was, `config_from_params`): an empty folder
    or run id (an unset shell variable; NOT_EMPTY), and an integer beyond 64 bits, which
    TensorFlow, NumPy and gensim cannot take.

    Raises:
        ValueError: Such a value, or one out of its option's range.
    """
    values = {name: getattr(args, name) for name in cls.option_fields()}
    empty = [name for name in NOT_EMPTY if values.get(name) == ""]
    if empty:
        raise ConfigError(f"{', '.join(empty)}: empty (''); give a "
                          + ("run id" if empty == ["resume"] else "value"))
    too_large = [f"{name} ({len(str(abs(value)))} digits)" for name, value in values.items()
                 if type(value) is int and abs(value) >= 2**63]
    if too_large:
        raise ConfigError(f"{', '.join(too_large)}: too large a number (an integer option "
                          "fits in 64 bits)")
    return cls.from_options(**values)


def config_from_params(cls: type[TaskConfig], params: Mapping[str, str]) -> TaskConfig:
    """Rebuilds a config from the string parameters a run logged (`options()`); options the
    run did not log keep their defaults, and logged parameters that are no option are ignored.

    Raises:
        ValueError: A logged value does not parse as its option's type.
    """
    options = cls.option_fields()
    return cls.from_options(**{name: options[name].parse(text)
                               for name, text in params.items() if name in options})


def validate_choices(config: TaskConfig) -> None:
    """Raises ValueError for an option whose value is not among its declared choices."""
    options = config.option_fields()
    for name, value in config.options().items():
        choices = options[name].field.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(
                f"unknown {name} {value!r}; valid choices: {', '.join(map(str, choices))}")

"""Settings: one YAML file, every field overridable from the environment.

``RECONCILER_`` prefix, ``__`` for nesting (``RECONCILER_KAFKA__GROUP_ID``), and the
environment wins over the file. Secrets (``SecretStr``) come from the environment or
from files (``*_file`` fields) and are masked wherever settings are printed. Relative
paths in the file (``shard_map``, TLS files) are resolved against the file's folder.
A bad file stops start-up with a message naming the file, the field and the problem.

One module per part of the file: `tables`, `kafka`, `valkey`, `sections` (the smaller
ones), `base` (what they share); `config` holds the whole (`Settings`) and
`load_settings`.
"""

from reconciler.settings.base import read_secret_file
from reconciler.settings.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG,
    IMPLICIT_SOURCE,
    Settings,
    config_path,
    format_validation_error,
    load_settings,
)
from reconciler.settings.kafka import RESERVED_CLIENT_PROPERTIES, KafkaSecurity, KafkaSettings
from reconciler.settings.sections import ConnectSettings, PostgresSettings, SourceSettings
from reconciler.settings.tables import KeySpec, TableSpec
from reconciler.settings.valkey import ParkingSettings, ValkeySettings

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG",
    "IMPLICIT_SOURCE",
    "RESERVED_CLIENT_PROPERTIES",
    "ConnectSettings",
    "KafkaSecurity",
    "KafkaSettings",
    "KeySpec",
    "ParkingSettings",
    "PostgresSettings",
    "Settings",
    "SourceSettings",
    "TableSpec",
    "ValkeySettings",
    "config_path",
    "format_validation_error",
    "load_settings",
    "read_secret_file",
]

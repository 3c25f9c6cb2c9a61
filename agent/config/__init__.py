"""The configuration: what the file may say, and how it is read.

Lives here: the pydantic models of every section (``types`` the constrained types,
``mqtt`` the broker, Sparkplug and metrics, ``plant`` windows, storage, capacity, shifts and
downtime reasons, ``sources`` the PLC endpoints, ``lines`` the points and lines, ``models``
the whole file and its cross-field checks) and ``load``, which reads YAML 1.2 or JSON
within bounds and turns a validation error into one sentence naming file, line and key.

May import: :mod:`agent.contract` only. Everything above imports the models from here
(``from agent.config import Config``).
"""

from agent.config.lines import DEFAULT_STATE_MAP, LineConfig, ModbusTag, OpcUaTag, TagConfig
from agent.config.models import Config
from agent.config.mqtt import (
    BROKER_FORMS,
    MetricsConfig,
    MqttConfig,
    SiteAckConfig,
    SparkplugConfig,
    SparkplugId,
    TlsConfig,
    broker_url,
    resolve_secret_file,
)
from agent.config.plant import (
    BUILTIN_REASONS,
    Break,
    DowntimeConfig,
    PlantConfig,
    PublishConfig,
    ReasonConfig,
    Shift,
    StorageConfig,
)
from agent.config.sources import ModbusSource, OpcUaSecurity, OpcUaSource, SourceConfig
from agent.config.types import (
    COUNTER_ROLES,
    DEFAULT_RATE_BOUND_FACTOR,
    DEPRECATED_OPCUA_POLICIES,
    HHMM,
    ROLE_KEYS,
    TYPE_MODULUS,
    TYPE_WIDTH,
    CounterRole,
    Identifier,
    LineState,
    ModbusTable,
    ModbusType,
    Port,
    PositiveSeconds,
    ReasonCategory,
    StateName,
    TimeZoneName,
    Weekday,
    WordOrder,
)

__all__ = ['BROKER_FORMS', 'BUILTIN_REASONS', 'COUNTER_ROLES', 'DEFAULT_RATE_BOUND_FACTOR', 'DEFAULT_STATE_MAP', 'DEPRECATED_OPCUA_POLICIES', 'HHMM', 'ROLE_KEYS', 'TYPE_MODULUS', 'TYPE_WIDTH', 'Break', 'Config', 'CounterRole', 'DowntimeConfig', 'Identifier', 'LineConfig', 'LineState', 'MetricsConfig', 'ModbusSource', 'ModbusTable', 'ModbusTag', 'ModbusType', 'MqttConfig', 'OpcUaSecurity', 'OpcUaSource', 'OpcUaTag', 'PlantConfig', 'Port', 'PositiveSeconds', 'PublishConfig', 'ReasonCategory', 'ReasonConfig', 'Shift', 'SiteAckConfig', 'SourceConfig', 'SparkplugConfig', 'SparkplugId', 'StateName', 'StorageConfig', 'TagConfig', 'TimeZoneName', 'TlsConfig', 'Weekday', 'WordOrder', 'broker_url', 'resolve_secret_file']

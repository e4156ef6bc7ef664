"""Configuration: frozen dataclasses, loaded once from a TOML file.

The dataclass defaults below are the product's built-in configuration; the
shipped `config.toml` spells out exactly the same values (a test holds the two
together). Loading checks every key and type and fails with a `ConfigError`
that names the file and the key, before anything runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from b12comment.core.dates import site_zone
from b12comment.core.rule_config import RESULT_TYPES, UNFLAGGED_UNRANGED, AgeBand, CodeMatch, RuleConfig
from b12comment.errors import UsageError

# The paths of health and metrics, on the metrics port and the HTTP port alike.
STATUS_PATHS = ("/livez", "/readyz", "/healthz", "/metrics")


class ConfigError(UsageError):
    """A configuration file that cannot be used; the message names file and key."""


@dataclass(frozen=True)
class ListenerConfig:
    enabled: bool = True  # false: serve runs the [http] endpoint only
    host: str = "127.0.0.1"
    port: int = 2575
    max_message_bytes: int = 1048576
    idle_timeout_s: float = 300.0
    max_connections: int = 64
    max_connections_per_peer: int = 16  # 0 = no limit
    first_byte_timeout_s: float = 10.0
    max_invalid_frames: int = 20  # invalid frames in a row before the connection is closed; 0 = no limit
    enhanced_ack: bool = False  # honour MSH-15/MSH-16 (commit ACKs CA/CE); false: original mode (AA/AE) always
    invalid_backoff_s: float = 1.0  # a peer closed for invalid frames waits this long at accept, doubling; 0 = off
    allowed_peers: tuple[str, ...] = ()
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""


@dataclass(frozen=True)
class JournalConfig:
    path: str = "var/journal.sqlite3"
    retransmit_window_s: float = 3600.0
    retention_days: float = 7.0
    commit_timeout_s: float = 5.0


@dataclass(frozen=True)
class DownstreamConfig:
    url: str = "dir:var/outbox"
    timeout_s: float = 30.0
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0
    max_attempts: int = 20
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""


@dataclass(frozen=True)
class MetricsConfig:
    port: int = 0  # 0 = no HTTP health/metrics endpoint
    host: str = "127.0.0.1"
    max_delivery_lag_s: float = 900.0  # /healthz: 503 when the oldest undelivered message is older


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8575
    path: str = "/hl7"
    max_body_bytes: int = 1048576
    request_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0
    max_connections: int = 256
    allowed_peers: tuple[str, ...] = ()
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "auto"  # auto (JSON unless on a terminal), json, console
    patient_data: bool = False


CONTEXT_MODES = ("message", "requisition", "patient")


@dataclass(frozen=True)
class ContextConfig:
    mode: str = "patient"  # message (no store), requisition, patient (requisition plus look-back)
    store: str = "var/context.sqlite3"
    key_file: str = "var/context.key"
    lookback_days: float = 30.0
    hold_s: float = 0.0  # serve: how long a message that would get the comment waits; 0 = no hold


@dataclass(frozen=True)
class AuditConfig:
    enabled: bool = False  # serve and its HTTP endpoint record every decision on a B12 result of a child
    path: str = "var/audit.sqlite3"  # SQLite file (created 0600)
    key_file: str = "var/audit.key"  # HMAC key of the patient and requisition hashes
    retention_days: float = 730.0
    min_cell: int = 5  # outcomes: counts from 1 to min_cell - 1 are suppressed


@dataclass(frozen=True)
class HaConfig:
    """Active-passive instances on one PostgreSQL journal ([journal] path a postgresql:// URL)."""

    instance: str = ""  # this instance's name, unique among those sharing the journal ("" = the host's name)
    lease_s: float = 5.0  # the leader renews its lease every lease_s / 3; a lapsed lease may be taken over
    takeover_s: float = 10.0  # a standby leads within this bound after the leader's lease lapses


@dataclass(frozen=True)
class Config:
    rule: RuleConfig = field(default_factory=RuleConfig)
    listener: ListenerConfig = field(default_factory=ListenerConfig)
    journal: JournalConfig = field(default_factory=JournalConfig)
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    ha: HaConfig = field(default_factory=HaConfig)
    source: str = "<built-in defaults>"


# --------------------------------------------------------------------------
# Loading and validation

_CODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
_FLAG_RE = re.compile(r"^[A-Za-z<>]{1,5}$")
_STATUS_RE = re.compile(r"^[A-Z]$")


class _Reader:
    """Reads one TOML table, remembering the file and key path for errors."""

    def __init__(self, path: str, table: dict[str, Any], prefix: str):
        self.path, self.table, self.prefix = path, dict(table), prefix
        self.known: list[str] = []  # every key asked for: the settings this table has

    def fail(self, key: str, why: str) -> ConfigError:
        name = f"{self.prefix}.{key}" if self.prefix else key
        return ConfigError(f"{self.path}: [{name}] {why}")

    def take(self, key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.known.append(key)
        if key not in self.table:
            return default
        value = self.table.pop(key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and kind is not bool:
            raise self.fail(key, f"must be {_kind_name(kind)}, not a boolean")
        if not isinstance(value, kind):
            raise self.fail(key, f"must be {_kind_name(kind)}, not {type(value).__name__} {value!r}")
        return value

    def take_strings(self, key: str, default: tuple[str, ...], pattern: re.Pattern | None = None) -> tuple[str, ...]:
        value = self.take(key, list, None)
        if value is None:
            return default
        for item in value:
            if not isinstance(item, str):
                raise self.fail(key, f"must be a list of strings, found {item!r}")
            if pattern is not None and not pattern.match(item):
                raise self.fail(key, f"has an invalid entry {item!r}")
        return tuple(value)

    def take_table(self, key: str) -> dict[str, Any]:
        value = self.take(key, dict, {})
        return value

    def done(self) -> None:
        if self.table:
            key = sorted(self.table)[0]
            import difflib  # (only for a setting that is not known: start-up stays lean)

            close = difflib.get_close_matches(key, self.known, n=1, cutoff=0.6)
            if close:
                raise self.fail(key, f"is not a known setting; did you mean {close[0]}?")
            raise self.fail(key, "is not a known setting")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a table",
    }
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)


def _positive(r: _Reader, key: str, value: float, allow_zero: bool = False) -> float:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise r.fail(key, f"must be {'zero or more' if allow_zero else 'greater than zero'}, not {value!r}")
    return value


_MESSAGE_TYPE_RE = re.compile(r"^[A-Z0-9]{3}\^[A-Z0-9]{3}$")
_SHORT_CODE_RE = re.compile(r"^[A-Za-z0-9]{0,5}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,39}$")
_MARKER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._\-]{3,39}$")
_ENTERED_BY_RE = re.compile(r"^[A-Za-z0-9 ._\-]{0,60}(\^[A-Za-z0-9 ._\-]{0,60}){0,5}$")

# [rule] keys that are lists of strings: key -> pattern each entry must match (None: any string)
_RULE_LISTS: dict[str, re.Pattern | None] = {
    "message_types": _MESSAGE_TYPE_RE,
    "final_statuses": _STATUS_RE,
    "final_order_statuses": _STATUS_RE,
    "cancelled_order_statuses": _STATUS_RE,
    "pending_statuses": _STATUS_RE,
    "ignored_statuses": _STATUS_RE,
    "normal_flags": _FLAG_RE,
    "elevated_flags": _FLAG_RE,
    "low_flags": _FLAG_RE,
    "normal_texts": None,
    "ignored_codes": _CODE_RE,
    "no_finding_types": re.compile(r"^[A-Z]{2,3}$"),
    "earlier_texts": None,
}
# [rule] keys that are strings, and the pattern they must match (None: any)
_RULE_STRINGS: dict[str, re.Pattern | None] = {
    "rule_version": _VERSION_RE,
    "text_da": None,
    "text_en": None,
    "nte_source": _SHORT_CODE_RE,
    "nte_comment_type": _SHORT_CODE_RE,
    "nte_entered_by": _ENTERED_BY_RE,
    "comment_marker": _MARKER_RE,
}
_RULE_STRING_RULES = {
    "rule_version": "must be 1-40 letters, digits, '.', '_' or '-'",
    "nte_source": "must be a short code of letters and digits",
    "nte_comment_type": "must be a short code of letters and digits",
    "nte_entered_by": "must be up to 6 components joined by ^, of letters, digits, spaces, '.', '_' or '-'",
    "comment_marker": "must be 4-40 letters, digits, spaces, '.', '_' or '-', starting with a letter or digit",
}


def _load_codes(r: _Reader, default: tuple[CodeMatch, ...]) -> tuple[CodeMatch, ...]:
    raw_codes = r.take("codes", list, None)
    if raw_codes is None:
        return default
    if not raw_codes:
        raise r.fail("codes", "must list at least one code")
    code_list: list[CodeMatch] = []
    for i, entry in enumerate(raw_codes):
        if not isinstance(entry, dict):
            raise r.fail("codes", f"entry {i + 1} must be a table with code and systems")
        er = _Reader(r.path, entry, f"rule.codes[{i + 1}]")
        code = er.take("code", str, None)
        if code is None or not _CODE_RE.match(code):
            raise er.fail("code", f"must be a code of letters, digits, '.', '_' or '-', not {code!r}")
        systems = er.take_strings("systems", ("",))
        er.done()
        code_list.append(CodeMatch(code, systems))
    return tuple(code_list)


def _load_band(r: _Reader, i: int, entry: Any) -> AgeBand:
    if not isinstance(entry, dict):
        raise r.fail("age_bands", f"entry {i + 1} must be a table")
    br = _Reader(r.path, entry, f"rule.age_bands[{i + 1}]")
    below = br.take("below_years", int, None)
    limit = br.take("upper_limit_pmol_l", float, None)
    br.done()
    if below is None or not 1 <= below <= 18:
        raise br.fail("below_years", f"must be an integer from 1 to 18, not {below!r}")
    if limit is None or not math.isfinite(limit) or limit <= 0:
        raise br.fail("upper_limit_pmol_l", f"must be a number above 0, not {limit!r}")
    return AgeBand(below, limit)


def _load_bands(r: _Reader, default: tuple[AgeBand, ...]) -> tuple[AgeBand, ...]:
    raw_bands = r.take("age_bands", list, None)
    if raw_bands is None:
        return default
    band_list = sorted((_load_band(r, i, entry) for i, entry in enumerate(raw_bands)), key=lambda b: b.below_years)
    if not band_list or len({b.below_years for b in band_list}) != len(band_list):
        raise r.fail("age_bands", "must list bands with distinct below_years")
    return tuple(band_list)


def _load_units(r: _Reader, default: tuple[tuple[str, float], ...]) -> tuple[tuple[str, float], ...]:
    raw_units = r.take("units", dict, None)
    if raw_units is None:
        return default
    unit_list: list[tuple[str, float]] = []
    for name, factor in raw_units.items():
        number = isinstance(factor, (int, float)) and not isinstance(factor, bool)
        if not number or not math.isfinite(factor) or factor <= 0:
            raise r.fail(f"units.{name}", f"must be a number above 0 (factor to pmol/L), not {factor!r}")
        unit_list.append((name, float(factor)))
    return tuple(unit_list)


def _load_strings(r: _Reader, d: RuleConfig) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, pattern in _RULE_LISTS.items():
        values[key] = r.take_strings(key, getattr(d, key), pattern)
    for key, pattern in _RULE_STRINGS.items():
        value = r.take(key, str, getattr(d, key))
        if pattern is not None and not pattern.match(value):
            raise r.fail(key, f"{_RULE_STRING_RULES[key]}, not {value!r}")
        values[key] = value
    language = r.take("language", str, d.language)
    if language not in ("da", "en"):
        raise r.fail("language", f'must be "da" or "en", not {language!r}')
    values["language"] = language
    values["use_message_time"] = r.take("use_message_time", bool, d.use_message_time)
    silence = r.take("unflagged_unranged", str, d.unflagged_unranged)
    if silence not in UNFLAGGED_UNRANGED:
        raise r.fail("unflagged_unranged", f'must be "normal" or "doubt", not {silence!r}')
    values["unflagged_unranged"] = silence
    results = sorted(set(values["no_finding_types"]) & set(RESULT_TYPES))
    if results:
        raise r.fail("no_finding_types", f"lists {results}: a value of that type is always a result to judge")
    zone = r.take("timezone", str, d.timezone)
    if zone:
        try:
            site_zone(zone)
        except (ValueError, ZoneInfoNotFoundError):
            raise r.fail(
                "timezone", f"must be an IANA time zone name such as 'Europe/Copenhagen', not {zone!r}"
            ) from None
    values["timezone"] = zone
    return values


def _check_rule(r: _Reader, rule: RuleConfig) -> None:
    """What holds between keys: texts that carry the marker, no status both final and pending."""
    for key in ("text_da", "text_en"):
        if not getattr(rule, key).strip():
            raise r.fail(key, "must not be empty")
        filled = getattr(rule, key).replace("{rule_version}", rule.rule_version)
        if rule.comment_marker not in filled:
            raise r.fail(
                key,
                f"must contain the comment_marker {rule.comment_marker!r} (so that a message commented with "
                "it is never commented again)",
            )
    for i, text in enumerate(rule.earlier_texts):
        if not text.strip():
            raise r.fail("earlier_texts", f"entry {i + 1} must not be empty")
    overlap = set(rule.final_statuses) & set(rule.pending_statuses)
    if overlap:
        raise r.fail("pending_statuses", f"shares {sorted(overlap)} with final_statuses")


def _load_rule(path: str, table: dict[str, Any]) -> RuleConfig:
    d = RuleConfig()
    r = _Reader(path, table, "rule")
    result = RuleConfig(
        codes=_load_codes(r, d.codes),
        age_bands=_load_bands(r, d.age_bands),
        units=_load_units(r, d.units),
        **_load_strings(r, d),
    )
    r.done()
    _check_rule(r, result)
    return result


def _load_simple(cls: type, path: str, table: dict[str, Any], prefix: str):
    defaults = cls()
    r = _Reader(path, table, prefix)
    values = {}
    for f in dataclasses.fields(cls):
        default = getattr(defaults, f.name)
        if isinstance(default, tuple):
            values[f.name] = r.take_strings(f.name, default)
        else:
            values[f.name] = r.take(f.name, type(default), default)
    r.done()
    return cls(**values)


def _check_service(path: str, cfg: Config) -> None:
    lis = cfg.listener
    r = _Reader(path, {}, "listener")
    if not 0 <= lis.port <= 65535:
        raise r.fail("port", f"must be 0-65535, not {lis.port}")
    _positive(r, "max_message_bytes", lis.max_message_bytes)
    _positive(r, "idle_timeout_s", lis.idle_timeout_s)
    _positive(r, "max_connections", lis.max_connections)
    _positive(r, "max_invalid_frames", lis.max_invalid_frames, allow_zero=True)
    _positive(r, "invalid_backoff_s", lis.invalid_backoff_s, allow_zero=True)
    _positive(r, "max_connections_per_peer", lis.max_connections_per_peer, allow_zero=True)
    _positive(r, "first_byte_timeout_s", lis.first_byte_timeout_s)
    _check_peers_and_tls(r, lis)
    _check_http(path, cfg)
    r = _Reader(path, {}, "journal")
    if not cfg.journal.path:
        raise r.fail("path", "must not be empty")
    _positive(r, "retransmit_window_s", cfg.journal.retransmit_window_s, allow_zero=True)
    _positive(r, "retention_days", cfg.journal.retention_days, allow_zero=True)
    _positive(r, "commit_timeout_s", cfg.journal.commit_timeout_s)
    ha = cfg.ha
    r = _Reader(path, {}, "ha")
    _positive(r, "lease_s", ha.lease_s)
    if not ha.takeover_s > ha.lease_s:
        raise r.fail("takeover_s", f"must be more than lease_s ({ha.lease_s:g}), not {ha.takeover_s:g}")
    if not re.match(r"^[A-Za-z0-9._-]{0,40}$", ha.instance):
        raise r.fail("instance", f"must be letters, digits, '.', '_' or '-' (at most 40), not {ha.instance!r}")
    ds = cfg.downstream
    r = _Reader(path, {}, "downstream")
    if not re.match(r"^(mllps?://[^:/\s]+:\d{1,5}|dir:.+)$", ds.url):
        raise r.fail("url", f"must be mllp://host:port, mllps://host:port or dir:/path, not {ds.url!r}")
    _positive(r, "timeout_s", ds.timeout_s)
    _positive(r, "retry_initial_s", ds.retry_initial_s)
    _positive(r, "retry_max_s", ds.retry_max_s)
    _positive(r, "max_attempts", ds.max_attempts)
    if not 0 <= cfg.metrics.port <= 65535:
        raise _Reader(path, {}, "metrics").fail("port", f"must be 0-65535, not {cfg.metrics.port}")
    if not 0 < cfg.metrics.max_delivery_lag_s < float("inf"):
        raise _Reader(path, {}, "metrics").fail("max_delivery_lag_s", "must be a number of seconds above 0")
    lg = _Reader(path, {}, "logging")
    if cfg.logging.level not in ("debug", "info", "warning", "error"):
        raise lg.fail("level", f"must be debug, info, warning or error, not {cfg.logging.level!r}")
    if cfg.logging.format not in ("auto", "json", "console"):
        raise lg.fail("format", f"must be auto, json or console, not {cfg.logging.format!r}")
    cx = cfg.context
    r = _Reader(path, {}, "context")
    if cx.mode not in CONTEXT_MODES:
        raise r.fail("mode", f"must be message, requisition or patient, not {cx.mode!r}")
    for key in ("store", "key_file"):
        if not getattr(cx, key):
            raise r.fail(key, "must not be empty")
    _positive(r, "lookback_days", cx.lookback_days)
    _positive(r, "hold_s", cx.hold_s, allow_zero=True)
    if cx.hold_s and cx.mode == "message":
        raise r.fail("hold_s", 'needs mode "requisition" or "patient": a hold waits for the rest of the requisition')
    au = cfg.audit
    r = _Reader(path, {}, "audit")
    for key in ("path", "key_file"):
        if not getattr(au, key):
            raise r.fail(key, "must not be empty")
    _positive(r, "retention_days", au.retention_days)
    _positive(r, "min_cell", au.min_cell, allow_zero=True)


def _check_peers_and_tls(r: _Reader, section: ListenerConfig | HttpConfig) -> None:
    for peer in section.allowed_peers:
        try:
            ipaddress.ip_network(peer, strict=False)
        except ValueError:
            raise r.fail("allowed_peers", f"has {peer!r}, which is not an address or network") from None
    if bool(section.tls_cert) != bool(section.tls_key):
        raise r.fail("tls_cert", "and tls_key must be given together")
    if section.tls_client_ca and not section.tls_cert:
        raise r.fail("tls_client_ca", "needs tls_cert and tls_key")


def _check_http(path: str, cfg: Config) -> None:
    http = cfg.http
    r = _Reader(path, {}, "http")
    if not 0 <= http.port <= 65535:
        raise r.fail("port", f"must be 0-65535, not {http.port}")
    if not re.match(r"^/[A-Za-z0-9._~!$&'()*+,;=:@/-]*$", http.path) or http.path in STATUS_PATHS:
        raise r.fail(
            "path", f"must be a URL path starting with '/', not {' or '.join(STATUS_PATHS)}, not {http.path!r}"
        )
    _positive(r, "max_body_bytes", http.max_body_bytes)
    _positive(r, "request_timeout_s", http.request_timeout_s)
    _positive(r, "idle_timeout_s", http.idle_timeout_s)
    _positive(r, "max_connections", http.max_connections)
    _check_peers_and_tls(r, http)
    if not cfg.listener.enabled and not http.enabled:
        raise _Reader(path, {}, "listener").fail(
            "enabled", "is false and [http] enabled is false: serve would have nothing to listen on"
        )
    if cfg.listener.enabled and http.enabled and cfg.listener.port == http.port != 0 and cfg.listener.host == http.host:
        raise r.fail("port", f"is the same as [listener] port {http.port}")


def parse_config(text: str, path: str = "<string>") -> Config:
    """Build a Config from TOML text; raises ConfigError naming path and key."""
    import tomllib  # (only with a config file: a replay on the defaults starts without it)

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    top = _Reader(path, data, "")
    rule = _load_rule(path, top.take_table("rule"))
    sections = {}
    for name, cls in (
        ("listener", ListenerConfig),
        ("journal", JournalConfig),
        ("downstream", DownstreamConfig),
        ("metrics", MetricsConfig),
        ("http", HttpConfig),
        ("logging", LoggingConfig),
        ("context", ContextConfig),
        ("audit", AuditConfig),
        ("ha", HaConfig),
    ):
        sections[name] = _load_simple(cls, path, top.take_table(name), name)
    top.done()
    cfg = Config(rule=rule, source=path, **sections)
    _check_service(path, cfg)
    return cfg


def load_config(path: str | Path | None) -> Config:
    """Load a config file; None gives the built-in defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc}") from None
    return parse_config(text, str(p))


def config_digest(cfg: Config) -> str:
    """SHA-256 of the effective configuration (every setting, defaults
    included; not the file's name): two runs with the same digest decided by
    the same settings, whatever the files looked like."""
    data = dataclasses.asdict(cfg)
    data.pop("source", None)
    text = json.dumps(data, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()

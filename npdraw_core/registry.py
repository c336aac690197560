"""Plugin loading and the per-kind registries of components.

Every plugin, built-in or third-party, is a module named by an entry point of the `npdraw` group; one that
adds CLI commands is named under `npdraw.commands` instead (or too), so that the CLI imports only those
modules, never every component plugin with torch behind it. Each entry point is loaded on its own: a
broken plugin is recorded and reported (fatal with NPDRAW_STRICT_PLUGINS=1), never crashes the host.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, is_dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points

import pluggy

from npdraw_core import hookspecs

ENTRY_POINT_GROUP = "npdraw"
COMMANDS_GROUP = "npdraw.commands"  # plugins that add CLI commands: keep their imports light

logger = logging.getLogger(__name__)

# kind → the hook that fills it
KINDS = {
    "dataset": "npdraw_register_datasets",
    "part_bank": "npdraw_register_part_banks",
    "parser": "npdraw_register_parsers",
    "prior": "npdraw_register_priors",
    "encoder": "npdraw_register_encoders",
    "decoder": "npdraw_register_decoders",
    "output_distribution": "npdraw_register_output_distributions",
    "feature_extractor": "npdraw_register_feature_extractors",
}


class PluginError(Exception):
    """A plugin is broken or two plugins disagree."""


class UnknownComponentError(LookupError):
    pass


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable
    config_class: type
    plugin: str

    def build(self, config, **context):
        return self.factory(config, **context)


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str | None
    version: str | None
    registers: list[tuple[str, str]] = field(default_factory=list)  # (kind, component name)


@dataclass
class Registry:
    plugin_manager: pluggy.PluginManager
    components: dict[str, dict[str, Component]]
    plugins: dict[str, PluginInfo]
    failed: dict[str, str]  # plugin name → the error it raised

    def get(self, kind: str, name: str) -> Component:
        if kind not in KINDS:
            raise UnknownComponentError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}")
        available = self.components[kind]
        if name in available:
            return available[name]
        lines = [f"no {kind} named {name!r}. Available: {', '.join(sorted(available)) or '(none)'}."]
        close = difflib.get_close_matches(name, list(available), n=3, cutoff=0.5)
        if close:
            lines.append(f"Did you mean {' or '.join(repr(c) for c in close)}?")
        if self.failed:
            failures = "; ".join(f"{plugin}: {error}" for plugin, error in self.failed.items())
            lines.append(f"Plugins that failed to load (they may provide it): {failures}")
        raise UnknownComponentError(" ".join(lines))

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])


def strict_plugins() -> bool:
    """NPDRAW_STRICT_PLUGINS=1: a broken plugin is an error instead of a report."""
    return os.environ.get("NPDRAW_STRICT_PLUGINS", "") not in ("", "0", "false", "False")


def _describe(entry_point: EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(entry_point, "dist", None)
    return (dist.name, dist.version) if dist is not None else (None, None)


def _plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    return manager


def _load_entry_points(
    manager: pluggy.PluginManager, entry_point_list: list[EntryPoint], plugins: dict, failed: dict
) -> None:
    for entry_point in entry_point_list:
        distribution, version = _describe(entry_point)
        try:
            module = entry_point.load()
            if not manager.is_registered(module):  # a module may be named in both groups
                manager.register(module, name=entry_point.name)
        except Exception as error:  # a broken plugin must never take the host down
            if strict_plugins():
                raise PluginError(f"plugin {entry_point.name!r} ({entry_point.value}) failed to load: {error!r}") from error
            failed[entry_point.name] = f"{type(error).__name__}: {error}"
            continue
        plugins[entry_point.name] = PluginInfo(entry_point.name, entry_point.value, distribution, version)


def _check_pending(manager: pluggy.PluginManager) -> None:
    try:
        manager.check_pending()
    except pluggy.PluginValidationError as error:
        raise PluginError(f"a plugin implements a hook npdraw does not define (misspelt?): {error}") from error


def build_registry(entry_point_list: list[EntryPoint] | None = None, *, extra_plugins: dict | None = None) -> Registry:
    """Load plugins from entry points (or the given list) plus `extra_plugins` {name: module-or-object}
    and collect what they register. Tests pass `extra_plugins` to register a plugin in a fixture."""
    manager = _plugin_manager()
    plugins: dict[str, PluginInfo] = {}
    failed: dict[str, str] = {}

    if entry_point_list is None:
        entry_point_list = [*entry_points(group=ENTRY_POINT_GROUP), *entry_points(group=COMMANDS_GROUP)]
    _load_entry_points(manager, entry_point_list, plugins, failed)
    for name, plugin in (extra_plugins or {}).items():
        manager.register(plugin, name=name)
        plugins[name] = PluginInfo(name, getattr(plugin, "__name__", type(plugin).__name__), None, None)
    _check_pending(manager)
    _warn_about_hidden_commands(manager, entry_point_list)

    components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
    for kind, hook_name in KINDS.items():
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            register = _registrar(kind, impl.plugin_name, components[kind], plugins)
            try:
                impl.function(register=register)
            except PluginError:
                raise
            except Exception as error:
                if strict_plugins():
                    raise PluginError(f"plugin {impl.plugin_name!r} failed in {hook_name}: {error!r}") from error
                failed[impl.plugin_name] = f"{type(error).__name__} in {hook_name}: {error}"
    return Registry(manager, components, plugins, failed)


def _registrar(kind: str, plugin_name: str, table: dict[str, Component], plugins: dict[str, PluginInfo]):
    def register(name: str, factory: Callable, config_class: type) -> None:
        if not is_dataclass(config_class):
            raise PluginError(f"plugin {plugin_name!r} registered {kind} {name!r} with a config_class that is not a dataclass")
        if name in table:
            raise PluginError(
                f"{kind} {name!r} is registered twice: by plugin {table[name].plugin!r} and by plugin {plugin_name!r}; "
                "uninstall one of them or rename the component"
            )
        table[name] = Component(kind, name, factory, config_class, plugin_name)
        if plugin_name in plugins:
            plugins[plugin_name].registers.append((kind, name))

    return register


@cache
def default_registry() -> Registry:
    """The registry of everything installed, built once per process."""
    return build_registry()


def _warn_about_hidden_commands(manager: pluggy.PluginManager, entry_point_list: list[EntryPoint]) -> None:
    listed = {entry_point.value for entry_point in entry_point_list if entry_point.group == COMMANDS_GROUP}
    for impl in manager.hook.npdraw_register_commands.get_hookimpls():
        if getattr(impl.plugin, "__name__", None) not in listed:
            logger.warning(
                "plugin %r implements npdraw_register_commands, but the CLI only looks for commands in "
                "modules named under the %r entry-point group; add it there so its commands appear",
                impl.plugin_name, COMMANDS_GROUP,
            )  # fmt: skip


def command_plugins(entry_point_list: list[EntryPoint] | None = None) -> tuple[pluggy.PluginManager, dict[str, str]]:
    """A plugin manager holding only the `npdraw.commands` plugins (cheap: the CLI loads it for every
    command that is not built in, and for --help), and the plugins that failed to load."""
    manager = _plugin_manager()
    failed: dict[str, str] = {}
    if entry_point_list is None:
        entry_point_list = list(entry_points(group=COMMANDS_GROUP))
    _load_entry_points(manager, entry_point_list, {}, failed)
    _check_pending(manager)
    return manager, failed

"""`npdraw plugins`: every plugin, its version, and what it registers; plugins that failed to load."""

from __future__ import annotations

from npdraw_core.registry import Registry, default_registry


def register(subparsers) -> None:
    parser = subparsers.add_parser("plugins", help="list plugins, their versions and what each registers")
    parser.set_defaults(handler=lambda args: print(describe(default_registry())))


def describe(registry: Registry) -> str:
    lines = []
    for info in sorted(registry.plugins.values(), key=lambda p: p.name):
        origin = f"{info.distribution} {info.version}" if info.distribution else "(not installed as a package)"
        lines.append(f"{info.name}  [{origin}]  {info.module}")
        for kind, name in info.registers:
            lines.append(f"    {kind}: {name}")
        if not info.registers:
            lines.append("    (registers no components; may add CLI commands)")
    for name, error in sorted(registry.failed.items()):
        lines.append(f"{name}  FAILED: {error}")
    return "\n".join(lines)



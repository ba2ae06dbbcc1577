"""The `hazgate` command line. Exit codes: 0 success, 1 runtime failure, 2 bad usage or config."""

from __future__ import annotations

import argparse
import asyncio
import sys

from agent import __version__
from agent.common.logs import setup_logging
from agent.common.problems import ConfigError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _load(path: str, table_pending: str | None = None):  # noqa: ANN202 - GatewayConfig
    from agent.config.loader import load_config

    return load_config(path, table_pending)


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    points = sum(len(d.points) for d in cfg.devices)
    print(f"{args.config}: valid: {len(cfg.devices)} devices, {points} points")
    for warning in cfg.warnings:  # each `file:line: key: warning: ...`; they leave the config valid
        print(warning)
    return EXIT_OK


def _device(args: argparse.Namespace, command: str, table_pending: bool = False):  # noqa: ANN202 - DeviceSpec | None
    """The device named on the command line, or None after saying which devices exist;
    `table_pending`: its point table need not exist yet (browse writes one)."""
    cfg = _load(args.config, args.device if table_pending else None)
    try:
        return cfg.device(args.device)
    except KeyError as exc:
        print(f"hazgate {command}: {exc.args[0]}", file=sys.stderr)
        return None


def cmd_read(args: argparse.Namespace) -> int:
    from agent.tools.read import read_device

    device = _device(args, "read")
    if device is None:
        return EXIT_USAGE
    return asyncio.run(read_device(device, args.raw))


def cmd_watch(args: argparse.Namespace) -> int:
    import dataclasses

    from agent.tools.watch import Watch, console
    from drivers.base import DeviceError

    device = _device(args, "watch")
    if device is None:
        return EXIT_USAGE
    if args.tag:
        unknown = sorted(set(args.tag) - {p.tag for p in device.points})
        if unknown:
            print(f"hazgate watch: no tag {', '.join(unknown)} on device {device.name!r}; tags: "
                  f"{', '.join(p.tag for p in device.points)}", file=sys.stderr)
            return EXIT_USAGE
        device = dataclasses.replace(device, points=[p for p in device.points if p.tag in args.tag])
    out = console()
    watch = Watch(device, out)
    try:
        asyncio.run(watch.run())
    except DeviceError as exc:
        print(f"hazgate watch: device {device.name!r} unreachable: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        out.print(watch.summary())
    return EXIT_OK


def cmd_scan(args: argparse.Namespace) -> int:
    from agent.tools.scan import scan_device, with_unit
    from drivers.modbus.scan import parse_range

    device = _device(args, "scan")
    if device is None:
        return EXIT_USAGE
    try:
        rng = parse_range(args.range)
        if args.unit is not None:
            device = with_unit(device, args.unit)
    except ValueError as exc:
        print(f"hazgate scan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(scan_device(device, rng))


def cmd_browse(args: argparse.Namespace) -> int:
    from agent.tools.browse import browse_device

    device = _device(args, "browse", table_pending=True)
    if device is None:
        return EXIT_USAGE
    if args.depth < 1 or args.max_nodes < 1:
        print("hazgate browse: --depth and --max-nodes must be 1 or more", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(browse_device(device, args.node, args.depth, args.max_nodes, args.csv))


def cmd_run(args: argparse.Namespace) -> int:
    from agent.service.run import run_service
    from drivers.base import DeviceError

    cfg = _load(args.config)
    try:
        return asyncio.run(run_service(cfg))
    except DeviceError as exc:
        print(f"hazgate run: {exc}", file=sys.stderr)
        return EXIT_USAGE


def cmd_simulate(args: argparse.Namespace) -> int:
    from agent.sim.listen import ServeError
    from agent.sim.serve import serve

    try:
        asyncio.run(serve(args.scenario))
    except KeyboardInterrupt:
        pass
    except ServeError as exc:
        print(f"hazgate simulate: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except OSError as exc:
        print(f"hazgate simulate: cannot serve: {exc}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def _load_or_applied(path: str):  # noqa: ANN202 - GatewayConfig | AppliedConfig
    """The config file, or, when it is broken, the config the running agent applied (its problems
    are printed first); raises the ConfigError when there is nothing to fall back to."""
    from pathlib import Path

    from agent.tools.store_view import applied_config

    try:
        return _load(path)
    except ConfigError as exc:
        applied = applied_config(Path(path))
        if isinstance(applied, str):
            print(f"hazgate: {applied}", file=sys.stderr)
            raise
        for line in exc.problems.lines():
            print(line, file=sys.stderr)
        return applied


def cmd_status(args: argparse.Namespace) -> int:
    from agent.tools.status import status

    return status(_load_or_applied(args.config))


def cmd_buffer(args: argparse.Namespace) -> int:
    from agent.tools.buffer import buffer

    return buffer(_load_or_applied(args.config), args.action, args.format, args.output, args.uplink, args.rejected)


def cmd_declare(args: argparse.Namespace) -> int:
    from agent.tools.declare import declare

    return declare(_load(args.config), args.action, args.subject, args.reason, args.by, args.until, args.note,
                   args.all)


def cmd_registry(args: argparse.Namespace) -> int:
    from agent.tools.registry import registry

    return registry(_load(args.config), args.uplink, args.format, args.output)


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from agent.tools.report import report

    return report(_load(args.config), args.from_, args.to, Path(args.output), Path(args.json) if args.json else None)


def cmd_receive(args: argparse.Namespace) -> int:
    if args.listen is None:
        if args.broker is None:
            print("hazgate receive: give --broker mqtt://HOST:PORT (the MQTT consumer) or --listen URL "
                  "--uplink-config FILE --uplink NAME (a reference platform)", file=sys.stderr)
            return EXIT_USAGE
        from agent.receiver.mqtt import receive

        return receive(args)
    from agent.receiver.platform import Controls, parse_reject, platform_spec, receive_platform

    if args.uplink_config is None or args.uplink is None:
        print("hazgate receive --listen: give --uplink-config FILE and --uplink NAME: the platform "
              "decodes and checks what that uplink of that gateway config sends", file=sys.stderr)
        return EXIT_USAGE
    if args.listen.startswith("hj212:"):
        return _receive_hj212(args)
    try:
        spec = platform_spec(_load(args.uplink_config).uplinks, args.uplink)
        reject = parse_reject(args.reject) if args.reject else None
    except ValueError as exc:
        print(f"hazgate receive: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return receive_platform(args.listen, spec, args.db, Controls(reject, args.delay, args.fail),
                            args.duration, args.idle_exit, args.report, args.fail_on_gaps)


def _receive_hj212(args: argparse.Namespace) -> int:
    from agent.receiver.hj212 import Hj212Controls, hj212_spec, parse_ask, receive_hj212

    try:
        spec = hj212_spec(_load(args.uplink_config).uplinks, args.uplink)
        asks = tuple(parse_ask(text) for text in args.ask)
    except ValueError as exc:
        print(f"hazgate receive: {exc}", file=sys.stderr)
        return EXIT_USAGE
    controls = Hj212Controls(withhold=args.withhold, delay=args.delay, down=args.fail is not None)
    return receive_hj212(args.listen, spec, args.db, controls, args.duration, args.idle_exit, asks)


def cmd_uplink_check(args: argparse.Namespace) -> int:
    from agent.tools.uplink_check import check_uplinks

    cfg = _load(args.config)
    names = [u.name for u in cfg.uplinks]
    if args.uplink is not None and args.uplink not in names:
        print(f"hazgate uplink check: no uplink named {args.uplink!r} in {args.config}; uplinks: "
              f"{', '.join(names)}", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(check_uplinks(cfg, args.uplink))


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo.demo import demo

    return demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hazgate", description="Plant safety data gateway")
    parser.add_argument("--version", action="version", version=f"hazgate {__version__}")
    parser.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"],
                        help="default: info for run and simulate, warning otherwise")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check the config and every point table it names")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="run the agent in the foreground (what systemd starts)")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=cmd_run, log_level_default="info")

    p = sub.add_parser("read", help="read every point of one device once (commissioning)")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("device")
    p.add_argument("--raw", action="store_true", help="also the register words in hex and, for "
                   "multi-register points, the value in each byte order")
    p.set_defaults(func=cmd_read)

    p = sub.add_parser("watch", help="poll one device at its interval with a live table of values and "
                       "raw words (commissioning); Ctrl-C prints a summary")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("device")
    p.add_argument("--tag", action="append", default=[], help="watch only this tag (repeatable)")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("scan", help="read-only scan of a Modbus register range: which addresses answer")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("device")
    p.add_argument("range", help="TABLE:FIRST-LAST, such as hr:0-199 (hr, ir, co, di; zero-based)")
    p.add_argument("--unit", type=int, default=None, help="unit id to scan (default: the device's)")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("browse", help="list an OPC UA server's address space; --csv writes a starter point table")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("device")
    p.add_argument("node", nargs="?", default=None, help="NodeId to start from (default: the Objects folder)")
    p.add_argument("--depth", type=int, default=4, help="levels below NODE to list (default 4)")
    p.add_argument("--max-nodes", type=int, default=5000, help="stop after this many nodes (default 5000)")
    p.add_argument("--csv", default=None, help="write a starter point table of the variables found (a new file)")
    p.set_defaults(func=cmd_browse)

    p = sub.add_parser("status", help="device links, buffer depth, uplink state (agent running or not)")
    p.add_argument("-c", "--config", required=True)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("buffer", help="inspect the local store: stats, export buffered readings or "
                       "set-aside messages, retry set-aside messages")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("action", choices=["stats", "export", "retry"])
    p.add_argument("--uplink", default=None, help="the uplink (default: the first configured)")
    p.add_argument("--rejected", action="store_true", help="export: the messages set aside after refusals")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("-o", "--output", default=None, help="file to write (default: standard output)")
    p.set_defaults(func=cmd_buffer)

    p = sub.add_parser("declare", help="declare a point or interlock stopped on purpose (calibration, a "
                       "bypass permit), restore it, or list the declarations")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("action", choices=["stop", "restore", "list"])
    p.add_argument("subject", nargs="?", default=None, help="stop, restore: a point tag or an interlock id")
    p.add_argument("--reason", default=None, help="stop: why (e.g. the work permit number); required")
    p.add_argument("--by", default=None, help="stop, restore: who declares it; required")
    p.add_argument("--until", default=None, help="stop: when it should be restored: a time with its UTC "
                   "offset or a duration (8h); past it without a restore, the gateway escalates")
    p.add_argument("--note", default=None, help="restore: a note (e.g. calibration passed)")
    p.add_argument("--all", action="store_true", help="list: every declaration, not only the stops in force")
    p.set_defaults(func=cmd_declare)

    p = sub.add_parser("registry", help="the point-registration records an uplink sends ([uplinks.registry]), "
                       "as JSON or as CSV for a platform's spreadsheet")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--uplink", required=True, help="the uplink whose [uplinks.registry] shapes the records")
    p.add_argument("--format", choices=["json", "csv"], default="json", help="csv: UTF-8 with BOM (Excel)")
    p.add_argument("-o", "--output", default=None, help="file to write (default: standard output)")
    p.set_defaults(func=cmd_registry)

    p = sub.add_parser("report", help="the evidence report: interlocks and detectors in service, readings "
                       "stored and delivered, as an HTML page (and JSON)")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--from", dest="from_", required=True, metavar="DATE",
                   help="start: a local day (2026-11-01) or an RFC 3339 time")
    p.add_argument("--to", required=True, metavar="DATE", help="end: a local day (included) or an RFC 3339 time")
    p.add_argument("-o", "--output", required=True, help="the HTML page to write")
    p.add_argument("--json", default=None, help="also the figures as JSON to this file")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("simulate", help="serve a simulated plant from a scenario file")
    p.add_argument("-s", "--scenario", required=True)
    p.set_defaults(func=cmd_simulate, log_level_default="info")
    p = sub.add_parser("receive", help="reference consumer (--broker) or reference platform (--listen): "
                       "decode, validate, store, report gaps and duplicates")
    p.add_argument("--broker", default=None, help="mqtt://host:port: consume hazgate.uplink/1")
    p.add_argument("--listen", default=None, help="http://127.0.0.1:PORT/PATH, tcp://127.0.0.1:PORT or "
                   "hj212://127.0.0.1:PORT: serve as the platform of an http, tcp or hj212 uplink")
    p.add_argument("--uplink-config", default=None, help="with --listen: the gateway config naming the uplink")
    p.add_argument("--uplink", default=None, help="with --listen: the uplink's name")
    p.add_argument("--reject", default=None, help="with --listen: refuse all, data_id=HEX, seq=N or record:KEY=VALUE")
    p.add_argument("--delay", type=float, default=0.0, help="with --listen: seconds before each reply")
    p.add_argument("--fail", type=int, default=None, help="with --listen: answer every message with this "
                   "HTTP status (TCP, HJ 212: close without a reply)")
    p.add_argument("--withhold", action="store_true", help="with --listen hj212://: store uploads, send "
                   "no data response (9014)")
    p.add_argument("--ask", action="append", default=[], help="with --listen hj212://: a request sent once "
                   "the data logger connects, its answer printed, e.g. \"2061 BeginTime=20261127000000 "
                   "EndTime=20261127235959\" (repeatable)")
    p.add_argument("--db", required=True, help="SQLite file for received readings and events")
    p.add_argument("--topic-prefix", default="hazchem")
    p.add_argument("--username", default=None, help="with --broker: the user name the broker expects")
    p.add_argument("--password-file", default=None, help="with --broker: a file holding only the password "
                   "(readable only by its owner: chmod 600)")
    p.add_argument("--ca-file", default=None, help="with an mqtts:// --broker: the CA that signed the broker's "
                   "certificate (default: the system's CAs)")
    p.add_argument("--cert-file", default=None, help="with an mqtts:// --broker: the client certificate (PEM)")
    p.add_argument("--key-file", default=None, help="with --cert-file: its private key (PEM, owner-only)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--idle-exit", type=float, default=None, help="stop after this many seconds without a message")
    p.add_argument("--fail-on-gaps", action="store_true", help="exit 1 if sequence gaps remain")
    p.add_argument("--report", default=None, help="also write the per-gateway report as JSON to this file; "
                   "FILE.html (with --broker): the completeness page per gateway and point from --db instead")
    p.set_defaults(func=cmd_receive, log_level_default="info")

    p = sub.add_parser("uplink", help="uplink commissioning: check connects to the platforms")
    uplink_sub = p.add_subparsers(dest="action", required=True)
    p = uplink_sub.add_parser("check", help="connect to each uplink with the gateway's credentials and "
                              "say per step (address, connection, TLS, login) what works; sends no data")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--uplink", default=None, help="check only this uplink (default: every one)")
    p.set_defaults(func=cmd_uplink_check)

    p = sub.add_parser("demo", help="simulated plant + local broker + agent + receiver with a live view")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=cmd_demo, log_level_default="warning")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level or getattr(args, "log_level_default", "warning"))
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return EXIT_OK
    except ConfigError as exc:
        for line in exc.problems.lines():
            print(line, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

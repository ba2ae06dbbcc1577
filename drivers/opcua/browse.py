"""`hazgate browse` for OPC UA: a server's address space, so a technician can build the point table.

Lists objects and variables below a node (default: the Objects folder) level by level with
batched Browse and Read calls: the NodeId to write in the `address` column (`nsu=` form, which
survives a server renumbering its namespaces), the class, the data type and the name. With
`--csv FILE` it also writes a starter point table of every variable whose data type maps to a
point type; the others are kept as comment lines. It never writes to the server.
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from asyncua import Client, ua

from drivers.base import DeviceError, DeviceSpec

POINT_TYPE = {
    ua.ObjectIds.Boolean: "bool", ua.ObjectIds.SByte: "int16", ua.ObjectIds.Byte: "uint16",
    ua.ObjectIds.Int16: "int16", ua.ObjectIds.UInt16: "uint16", ua.ObjectIds.Int32: "int32",
    ua.ObjectIds.UInt32: "uint32", ua.ObjectIds.Float: "float32", ua.ObjectIds.Double: "float64",
    ua.ObjectIds.Int64: "float64", ua.ObjectIds.UInt64: "float64",
}
OBJECTS = ua.NodeId(ua.ObjectIds.ObjectsFolder)
MASK = int(ua.NodeClass.Object) | int(ua.NodeClass.Variable)
CSV_COLUMNS = ("tag", "name", "address", "type", "unit", "kind", "eng_min", "eng_max", "deadband",
               "hazard_source", "equipment", "target_code", "ll", "l", "h", "hh")


@dataclass
class Found:
    nodeid: ua.NodeId
    address: str  # as the point table wants it
    name: str  # display name
    path: list[str]  # browse names from the start node
    node_class: str
    depth: int
    data_type: str = ""
    point_type: str | None = None
    array: bool = False


def address_of(nid: ua.NodeId, namespaces: list[str]) -> str:
    """`nsu=<uri>;...` for server namespaces, plain `i=...` for the standard namespace 0."""
    text = ua.NodeId(nid.Identifier, nid.NamespaceIndex, nid.NodeIdType).to_string()
    if nid.NamespaceIndex == 0 or nid.NamespaceIndex >= len(namespaces):
        return text
    return f"nsu={namespaces[nid.NamespaceIndex]};" + text.split(";", 1)[1]


def parse_node(text: str, namespaces: list[str]) -> ua.NodeId:
    nid = ua.NodeId.from_string(text)
    uri = getattr(nid, "NamespaceUri", None)
    if uri:
        if uri not in namespaces:
            raise ValueError(f"namespace {uri!r} is not on the server; it has {', '.join(namespaces)}")
        return ua.NodeId(nid.Identifier, namespaces.index(uri), nid.NodeIdType)
    return ua.NodeId(nid.Identifier, nid.NamespaceIndex, nid.NodeIdType)


async def _browse_level(client: Client, parents: list[Found]) -> list[tuple[Found, ua.ReferenceDescription]]:
    out: list[tuple[Found, ua.ReferenceDescription]] = []
    for i in range(0, len(parents), 200):
        part = parents[i : i + 200]
        params = ua.BrowseParameters()
        params.View = ua.ViewDescription()
        params.RequestedMaxReferencesPerNode = 1000
        for f in part:
            d = ua.BrowseDescription()
            d.NodeId = f.nodeid
            d.BrowseDirection = ua.BrowseDirection.Forward
            d.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HierarchicalReferences)
            d.IncludeSubtypes = True
            d.NodeClassMask = MASK
            d.ResultMask = int(ua.BrowseResultMask.All)
            params.NodesToBrowse.append(d)
        results = await client.uaclient.browse(params)
        for f, res in zip(part, results, strict=True):
            refs = list(res.References or [])
            cp = res.ContinuationPoint
            while cp:
                nxt = ua.BrowseNextParameters()
                nxt.ReleaseContinuationPoints = False
                nxt.ContinuationPoints = [cp]
                more = (await client.uaclient.browse_next(nxt))[0]
                refs += more.References or []
                cp = more.ContinuationPoint
            out += [(f, r) for r in refs]
    return out


async def _types(client: Client, found: list[Found]) -> None:
    """Data type and value rank of every variable, in batched Reads."""
    variables = [f for f in found if f.node_class == "Variable"]
    for i in range(0, len(variables), 250):
        part = variables[i : i + 250]
        params = ua.ReadParameters()
        for f in part:
            for attr in (ua.AttributeIds.DataType, ua.AttributeIds.ValueRank):
                rv = ua.ReadValueId()
                rv.NodeId = f.nodeid
                rv.AttributeId = attr
                params.NodesToRead.append(rv)
        values = await client.uaclient.read(params)
        for k, f in enumerate(part):
            dtype, rank = values[2 * k].Value, values[2 * k + 1].Value
            tid = dtype.Value if dtype is not None else None
            if isinstance(tid, ua.NodeId):
                f.data_type = (ua.ObjectIdNames.get(tid.Identifier, tid.to_string()) if tid.NamespaceIndex == 0
                               else tid.to_string())
                f.point_type = POINT_TYPE.get(tid.Identifier) if tid.NamespaceIndex == 0 else None
            f.array = rank is not None and isinstance(rank.Value, int) and rank.Value >= 1


async def walk(client: Client, start: ua.NodeId, depth: int, limit: int) -> tuple[list[Found], list[str]]:
    """Everything below `start` down to `depth` levels (at most `limit` nodes); notes for the user."""
    namespaces = await client.get_namespace_array()
    root = Found(start, address_of(start, namespaces), "", [], "Object", 0)
    found: list[Found] = []
    notes: list[str] = []
    level, seen = [root], {start.to_string()}
    for d in range(1, depth + 1):
        nxt: list[Found] = []
        for parent, ref in await _browse_level(client, level):
            nid = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)
            key = nid.to_string()
            if key in seen:
                continue
            seen.add(key)
            if start == OBJECTS and d == 1 and nid.NamespaceIndex == 0:
                notes.append(f"{ref.DisplayName.Text} ({key}): a standard node of every server, left out; "
                             f"browse it with NODE {key}")
                continue
            f = Found(nid, address_of(nid, namespaces), ref.DisplayName.Text or ref.BrowseName.Name,
                      [*parent.path, ref.BrowseName.Name], ref.NodeClass.name, d)
            found.append(f)
            nxt.append(f)
            if len(found) >= limit:
                notes.append(f"stopped after {limit} nodes; browse a node further down, or raise --max-nodes")
                await _types(client, found)
                return _ordered(found), notes
        level = nxt
        if not level:
            break
    else:
        if level:
            notes.append(f"listed down to depth {depth}; for what lies deeper use --depth or a NODE further down")
    await _types(client, found)
    return _ordered(found), notes


def _ordered(found: list[Found]) -> list[Found]:
    """Depth-first order (each node under its parent) for printing."""
    return sorted(found, key=lambda f: f.path)


def tag_of(f: Found, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.\-]", "_", ".".join(f.path))[:60].strip("._") or "TAG"
    tag, n = base, 2
    while tag in used:
        tag, n = f"{base}_{n}", n + 1
    used.add(tag)
    return tag


def write_csv(path: Path, found: list[Found]) -> tuple[int, int]:
    """The starter point table; returns (points written, variables left out as comments)."""
    used: set[str] = set()
    points = skipped = 0
    with path.open("x", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for f in found:
            if f.node_class != "Variable":
                continue
            if f.point_type is None or f.array:
                why = "an array" if f.array else f"data type {f.data_type or 'unknown'}"
                fh.write(f"# {f.address},{f.name}: {why} is not a point type; left out\n")
                skipped += 1
                continue
            w.writerow([tag_of(f, used), f.name, f.address, f.point_type, "", "other"] + [""] * (len(CSV_COLUMNS) - 6))
            points += 1
    return points, skipped


async def browse_device(device: DeviceSpec, node: str | None, depth: int, limit: int, csv_out: str | None) -> int:
    out = Path(csv_out) if csv_out else None
    if out is not None and out.exists():
        print(f"hazgate browse: --csv {out}: the file exists; valid: a new file name (a starter table never "
              "overwrites one)", file=sys.stderr)
        return 2
    from drivers.opcua.driver import OpcUaDriver

    driver = OpcUaDriver(device)
    try:
        client = await driver.open_session()
    except DeviceError as exc:
        print(f"hazgate browse: device {device.name!r} unreachable: {exc}", file=sys.stderr)
        return 1
    try:
        namespaces = await client.get_namespace_array()
        try:
            start = parse_node(node, namespaces) if node else OBJECTS
        except Exception as exc:  # noqa: BLE001 - asyncua raises several types for bad NodeId text
            print(f"hazgate browse: NODE {node!r}: {exc}; valid: a NodeId such as ns=2;s=Tank1, "
                  "nsu=<namespace URI>;s=Tank1 or i=85", file=sys.stderr)
            return 2
        found, notes = await walk(client, start, depth, limit)
    except (OSError, ua.UaError) as exc:
        print(f"hazgate browse: {driver.describe()}: {driver.explain(exc)}", file=sys.stderr)
        return 1
    finally:
        await driver.end_session(client)
    rows = [("NAME", "CLASS", "DATA TYPE", "NODE ID (address column)")]
    for f in found:
        dtype = f.data_type + ("[]" if f.array else "")
        rows.append(("  " * (f.depth - 1) + f.name, f.node_class, dtype if f.node_class == "Variable" else "", f.address))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    variables = sum(1 for f in found if f.node_class == "Variable")
    print(f"{len(found)} nodes below {address_of(start, namespaces)}, {variables} variables")
    for note in notes:
        print(f"note: {note}")
    if out is not None:
        try:
            points, skipped = write_csv(out, found)
        except OSError as exc:
            print(f"hazgate browse: --csv {out}: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {out}: {points} points" + (f", {skipped} variables left out (see the # lines)" if skipped else "")
              + "; set kind, unit, ranges and limits before use, then: hazgate validate")
    return 0

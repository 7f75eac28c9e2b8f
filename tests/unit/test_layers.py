"""The import rules of docs/ARCHITECTURE.md, read from every module's syntax tree.

Each module of ours sits in a room on a floor; an import may run down a
floor or stay in its room, never up, and ``rendezvous.node`` and
``rendezvous.peer`` never import each other. Lazy imports inside functions
count too.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = {"rendezvous", "relay", "upnp_helper", "bench", "tests"}

# Each room and its floor: a room may import its own modules and those of lower floors.
ROOMS = {
    "rendezvous.stun": 1,
    "rendezvous.wire": 1,
    "relay": 2,
    "upnp_helper": 2,
    "rendezvous.node": 3,
    "rendezvous.peer": 3,
    "rendezvous.cli": 4,
}
# Rooms on one floor that may import each other (the rest on a floor may not).
NEIGHBOURS = {frozenset({"relay", "upnp_helper"}), frozenset({"rendezvous.wire", "rendezvous.stun"})}
# A floor-1 room that must stay below its neighbour: the codec imports nothing else of ours.
ONE_WAY = {("rendezvous.stun", "rendezvous.wire")}


def room_of(module: str) -> str | None:
    """The room a dotted module name lives in, or None for one outside every room."""
    for room in sorted(ROOMS, key=len, reverse=True):
        if module == room or module.startswith(room + "."):
            return room
    return None


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import statement in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # ``from pkg import sub`` may name a submodule: judge pkg.sub where that is a room's module.
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def allowed(importer: str, imported: str) -> bool:
    """Whether a module in room importer may import a module in room imported."""
    if importer == imported:
        return True
    if (importer, imported) in ONE_WAY:
        return False
    if frozenset({importer, imported}) in NEIGHBOURS:
        return True
    return ROOMS[imported] < ROOMS[importer]


def violations(root: Path) -> list[str]:
    """Every import in root's packages (and twisted/plugins) that breaks the rules, as readable lines."""
    found = []
    files = [p for top in ("rendezvous", "relay", "upnp_helper") for p in (root / top).rglob("*.py")]
    for path in sorted(files):
        module = module_name(path, root)
        importer = room_of(module)
        for line, target in imports(path, module):
            if target.split(".")[0] not in OURS:
                continue
            where = f"{path.relative_to(root)}:{line}"
            imported = room_of(target)
            if importer is None:
                if imported is not None:
                    found.append(f"{where}: {module} is in no room but imports {target}")
            elif imported is None:
                found.append(f"{where}: {module} imports {target}, which is in no room")
            elif not allowed(importer, imported):
                found.append(f"{where}: {importer} (floor {ROOMS[importer]}) must not import {target} "
                             f"({imported}, floor {ROOMS[imported]})")
    for path in sorted((root / "twisted" / "plugins").glob("*.py")):
        for line, target in imports(path, module_name(path, root)):
            if target.split(".")[0] in OURS:
                found.append(f"{path.relative_to(root)}:{line}: a plugin names its tap as a string, "
                             f"but imports {target}")
    return found


def test_every_import_runs_down_a_floor_or_stays_in_its_room():
    """No module of ours imports upward, across node and peer, or out of the codec."""
    assert violations(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "twisted" / "plugins").mkdir(parents=True, exist_ok=True)
    return tmp_path


def test_planted_violations_are_each_reported(tmp_path):
    """Upward, node-to-peer, peer-to-node, codec-outward, relay-upward and plugin imports are each caught."""
    root = _tree(tmp_path, {
        "rendezvous/__init__.py": "",
        "rendezvous/stun/__init__.py": "from rendezvous.wire import frames\n",
        "rendezvous/wire/frames.py": "from rendezvous.stun import Message\n",
        "rendezvous/node/signaling.py": "def lazy():\n    from rendezvous.peer import connect\n",
        "rendezvous/peer/ice.py": "from ..node import accounts\n",
        "rendezvous/cli/main.py": "from rendezvous.node import tap\nfrom rendezvous.peer import connect\n",
        "relay/server.py": "import rendezvous.node.metrics\nfrom . import allocation\n",
        "relay/allocation.py": "from rendezvous.stun import Attr\n",
        "upnp_helper/igd.py": "from relay import limits\n",
        "twisted/plugins/x_plugin.py": "from rendezvous.node import tap\n",
    })
    found = violations(root)
    for where in ("rendezvous/stun/__init__.py:1", "rendezvous/node/signaling.py:2", "rendezvous/peer/ice.py:1",
                  "relay/server.py:1", "twisted/plugins/x_plugin.py:1"):
        assert any(line.startswith(where + ":") for line in found), (where, found)
    assert len(found) == 5, found


def test_the_allowed_directions_pass(tmp_path):
    """Downward imports, imports within a room and between floor-2 neighbours are not reported."""
    root = _tree(tmp_path, {
        "rendezvous/wire/frames.py": "from rendezvous.stun import Message\n",
        "rendezvous/node/tap.py": "from relay import server\nfrom upnp_helper import igd\nfrom . import signaling\n",
        "rendezvous/peer/connector.py": "from rendezvous.wire import frames\nfrom .ice import Agent\n",
        "rendezvous/cli/main.py": "from rendezvous.node import tap\nfrom rendezvous.peer import connect\n",
        "relay/client.py": "from .datagrams import Outbox\nfrom upnp_helper import igd\n",
    })
    assert violations(root) == []

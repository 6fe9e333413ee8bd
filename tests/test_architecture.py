"""The project's shape: no import cycle between the package's modules (top-level imports) nor
between its packages (every import, with the edges through each package's ``__init__``), one idea
per file, tools that import the installed package."""
import ast
import os
import os.path as osp

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
PACKAGE = osp.join(ROOT, 'mimiq_mm')
MAX_LINES = 400


def modules(package=PACKAGE):
    """{dotted name: path} of every module of the package (packages by their __init__)."""
    found = {}
    for folder, _, files in os.walk(package):
        for file in files:
            if file.endswith('.py'):
                path = osp.join(folder, file)
                name = osp.relpath(path[:-3], osp.dirname(package)).replace(os.sep, '.')
                found[name[:-len('.__init__')] if name.endswith('.__init__') else name] = path
    return found


def imported_modules(name, path, mods, top_level_only=True):
    """The modules of the package that module ``name`` imports (at its top level, or anywhere)."""
    is_package = path.endswith('__init__.py')
    tree = ast.parse(open(path).read())
    nodes = tree.body if top_level_only else ast.walk(tree)
    targets = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split('.') if is_package else name.split('.')[:-1]
                base = base[:len(base) - node.level + 1]
                source = '.'.join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ''
            for alias in node.names:
                target = f'{source}.{alias.name}'
                targets.add(target if target in mods else source)
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
    return {t for t in targets if t in mods and t != name}


def import_graph(package=PACKAGE):
    """{module: modules of the package it imports at its top level}."""
    mods = modules(package)
    return {name: imported_modules(name, path, mods) for name, path in mods.items()}


def unit_of(module, root):
    """The package (or top-level module) of ``root`` that ``module`` belongs to:
    ``mimiq_mm.synthesis.store`` -> ``mimiq_mm.synthesis``; None for the root package itself."""
    parts = module.split('.')
    return None if len(parts) == 1 else f'{root}.{parts[1]}'


def package_graph(package=PACKAGE):
    """{package: packages it depends on} between the top-level packages of ``package``.

    Every import counts (also those inside functions), and importing any module of a package
    runs that package's ``__init__``, whose imports are the package's own edges: importing
    ``synthesis.store`` from ``datasets`` makes ``datasets`` depend on everything
    ``synthesis/__init__`` imports. The root package's ``__init__`` (which imports everything
    to register the components) is left out.
    """
    root = osp.basename(package)
    mods = modules(package)
    graph = {}
    for name, path in mods.items():
        unit = unit_of(name, root)
        if unit is None:
            continue
        targets = {unit_of(t, root) for t in imported_modules(name, path, mods, top_level_only=False)}
        graph.setdefault(unit, set()).update(t for t in targets if t is not None and t != unit)
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 'open':
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 'done'
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 50 and 'mimiq_mm.engine.loops' in graph['mimiq_mm.engine']
    assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))


def test_no_cycle_between_packages():
    graph = package_graph()
    assert 'mimiq_mm.synthesis' in graph['mimiq_mm.datasets']  # through synthesis/__init__
    assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))


def test_package_graph_sees_edges_through_init(tmp_path):
    """The cycle a module graph misses: a.x imports b.y, b/__init__ imports b.z, b.z imports a."""
    files = {'pkg/__init__.py': '', 'pkg/a/__init__.py': '', 'pkg/a/x.py': 'from ..b.y import Y\n',
             'pkg/a/w.py': 'W = 1\n', 'pkg/b/__init__.py': 'from .z import Z\n', 'pkg/b/y.py': 'Y = 1\n',
             'pkg/b/z.py': 'from ..a.w import W\nZ = W\n'}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    package = str(tmp_path / 'pkg')
    assert find_cycle(import_graph(package)) is None
    assert find_cycle(package_graph(package)) == ['pkg.a', 'pkg.b', 'pkg.a']


def test_find_cycle_finds_one():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']


def python_files(*folders):
    for folder in folders:
        for base, _, files in os.walk(osp.join(ROOT, folder)):
            yield from (osp.join(base, f) for f in files if f.endswith('.py'))


def test_no_module_is_two_ideas():
    """A file that passes 400 lines is two ideas (the project's guide)."""
    long = {osp.relpath(path, ROOT): n for path in python_files('mimiq_mm', 'benchmarks', 'tools', 'configs')
            if (n := len(open(path).readlines())) > MAX_LINES}
    assert not long, long


def test_tools_import_the_installed_package():
    """Tools find mimiq_mm (and the helpers they share, mimiq_mm.apis.cli) through the installed
    package, not by editing sys.path."""
    editing = [osp.relpath(path, ROOT) for path in python_files('tools', 'benchmarks')
               if 'sys.path' in open(path).read()]
    assert not editing, editing

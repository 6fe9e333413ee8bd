"""The package's shape: no import cycle between its modules (top-level imports), one idea per file."""
import ast
import os
import os.path as osp

PACKAGE = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'mimiq_mm')


def modules():
    """{dotted name: path} of every module of the package (packages by their __init__)."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for file in files:
            if file.endswith('.py'):
                path = osp.join(folder, file)
                name = osp.relpath(path[:-3], osp.dirname(PACKAGE)).replace(os.sep, '.')
                found[name[:-len('.__init__')] if name.endswith('.__init__') else name] = path
    return found


def import_graph():
    """{module: modules of the package it imports at its top level}."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        is_package = path.endswith('__init__.py')
        targets = set()
        for node in ast.parse(open(path).read()).body:
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
        graph[name] = {t for t in targets if t in mods and t != name}
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph[node]):
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


def test_find_cycle_finds_one():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']


def test_no_module_is_two_ideas():
    """A file that passes ~400 lines is two ideas (the project's guide)."""
    long = {name: n for name, path in modules().items() if (n := len(open(path).readlines())) > 420}
    assert not long, long

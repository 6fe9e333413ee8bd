"""The scripts of tools/ as modules, so that tests call their main(argv) in-process."""
import importlib.util
import os.path as osp

TOOLS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools')


def load_tool(name):
    """tools/<name>.py as a fresh module named ``tools_<name>`` (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(f'tools_{name}', osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exit_message(excinfo):
    """The text a tool stopped with (``sys.exit('error: ...')``)."""
    return str(excinfo.value.code)

"""Tables for people: rich tables on the console, GitHub markdown in reports."""
import io
from typing import List, Optional, Sequence


def console_table(header: Sequence[str], rows: List[Sequence], title: Optional[str] = None) -> str:
    """``rows`` under ``header`` as a rich table, rendered to text (numbers right-aligned)."""
    from rich.console import Console
    from rich.table import Table
    table = Table(title=title, title_justify='left', show_edge=False, pad_edge=False)
    numeric = [bool(rows) and all(_is_number(row[i]) for row in rows) for i in range(len(header))]
    for name, right in zip(header, numeric):
        table.add_column(str(name), justify='right' if right else 'left', no_wrap=True)
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    buffer = io.StringIO()
    Console(file=buffer, width=240, color_system=None, soft_wrap=True).print(table)
    return buffer.getvalue().rstrip('\n')


def markdown_table(header: Sequence[str], rows: List[Sequence]) -> str:
    """A GitHub markdown table."""
    lines = ['| ' + ' | '.join(str(c) for c in header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def _is_number(text) -> bool:
    try:
        float(str(text).rstrip('x%'))
        return True
    except ValueError:
        return False

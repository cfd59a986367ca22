"""Writing benchmark tables: markdown rows printed as they come, and a header recording the command,
date, machine and versions.

Every benchmark writes where the user asks: ``out`` is a folder (default :data:`RESULTS_DIR`,
``benchmarks/results`` under the current directory) that receives ``<name>.md``, a path ending in
``.md`` (that file), or ``-`` (print only).
"""
from __future__ import annotations

import datetime
import os
import platform

import torch

__all__ = ["RESULTS_DIR", "MarkdownTable", "environment_header", "write_table", "output_path", "write_result",
           "add_out_argument"]

#: default output folder, relative to the current directory
RESULTS_DIR = os.path.join("benchmarks", "results")


class MarkdownTable:
    """A markdown table built row by row; each row is printed as it is added (long benchmarks show
    progress). ``str(table)`` is the table."""

    def __init__(self, *header: str):
        self.lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def add(self, *cells) -> None:
        self.lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        print(self.lines[-1], flush=True)

    def __str__(self) -> str:
        return "\n".join(self.lines)


def environment_header(title: str, command: str) -> str:
    import pyro

    return (f"# {title}\n\n"
            f"- command: `{command}`\n"
            f"- date: {datetime.date.today().isoformat()}\n"
            f"- machine: {platform.platform()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}\n"
            f"- versions: python {platform.python_version()}, torch {torch.__version__}, pyro {pyro.__version__}\n")


def write_table(path: str, title: str, command: str, body: str, notes: str = "") -> str:
    """Write the header, ``body`` and ``notes`` to the file ``path`` (its folder created); returns the text."""
    text = environment_header(title, command) + "\n" + body + "\n" + (f"\n{notes}\n" if notes else "")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    return text


def output_path(out: str | None, name: str) -> str | None:
    """The file a benchmark named ``name`` writes for ``out`` (a folder, a ``.md`` file, ``-``/``""``:
    none; ``None``: :data:`RESULTS_DIR`)."""
    if out is None:
        out = RESULTS_DIR
    if out in ("", "-"):
        return None
    if str(out).endswith(".md"):
        return str(out)
    return os.path.join(str(out), f"{name}.md")


def write_result(out: str | None, name: str, title: str, command: str, body: str, notes: str = "") -> str:
    """:func:`write_table` to :func:`output_path` ``(out, name)``, or only the text when that is none."""
    path = output_path(out, name)
    if path is None:
        return environment_header(title, command) + "\n" + body + "\n" + (f"\n{notes}\n" if notes else "")
    return write_table(path, title, command, body, notes)


def add_out_argument(parser, name: str) -> None:
    """The ``--out`` option of a benchmark writing ``<name>.md``."""
    parser.add_argument("--out", default=RESULTS_DIR,
                        help=f"output folder receiving {name}.md (default {RESULTS_DIR} under the current directory), "
                             "a .md file, or - to print only")

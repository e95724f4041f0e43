"""Which specimen (a patient's slide) each image belongs to.

Three ways, as a lab works: by default an image's folder relative to the input it was found
under (a slide's fields in one folder); ``--specimen-pattern REGEX`` takes the first group of the
file name (e.g. an accession number); ``--specimens MAP.csv`` reads ``path,specimen`` rows as a
laboratory information system exports them. An image the pattern or the map does not place is its
own specimen, named after the file, with a note saying so.

Two different folders (or unplaced files) never share a specimen by their name alone: where inputs hold
folders of one name (``labA/slides``, ``labB/slides``), or an unplaced file is named like a specimen, each
is named with as many of its parent folders as tell them apart (``labA/slides``).
"""

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from allscan.paths import path_text

OWN_BY_PATTERN = "matched no --specimen-pattern: each such image is its own specimen"
OWN_BY_MAP = "not in the specimen map: each such image is its own specimen"


class SpecimenError(ValueError):
    """A specimen pattern or map that cannot be used: the message names the fault (and its line)."""


@dataclass(frozen=True)
class Assignment:
    """An image's specimen, and a note when it was placed in a specimen of its own."""

    specimen: str
    note: str = ""


class Specimens:
    """Assigns images to specimens (see the module docstring).

    Args:
        roots: The inputs images were found under (folders and files).
        pattern: A regular expression searched in each file name; its first group (or the whole
            match) is the specimen.
        mapping: ``{resolved path: specimen}``, from :func:`read_map`.

    Raises:
        SpecimenError: ``pattern`` is empty or not a valid regular expression.
    """

    def __init__(self, roots: Sequence[Path] = (), pattern: str | None = None, mapping: dict[str, str] | None = None):
        self.roots = [Path(r) for r in roots]
        if pattern is not None and not pattern:
            raise SpecimenError("--specimen-pattern is empty: give a regular expression whose first group is the "
                                "specimen, or leave it out to group images by folder")
        try:
            self.pattern = re.compile(pattern) if pattern is not None else None
        except re.error as err:
            raise SpecimenError(f"--specimen-pattern {pattern!r} is not a regular expression: {err}") from None
        self.mapping = mapping
        self._names: dict[_Source, str] = {}
        self._owners: dict[str, _Source | None] = {}

    def with_images(self, images: Sequence[Path]) -> "Specimens":
        """The same assignment with every name of a run's ``images`` settled at once: where two folders (or
        unplaced files) would share a name, both are qualified, whichever is met first."""
        planned = Specimens(self.roots, mapping=self.mapping)
        planned.pattern = self.pattern
        sources = sorted({planned._source(Path(path)) for path in images}, key=lambda s: (s.where is not None, s))
        groups: dict[str, list[_Source]] = {}
        for source in sources:
            groups.setdefault(source.name, []).append(source)
        for name, group in groups.items():
            if len(group) > 1:
                planned._owners[name] = None  # reserved: every folder or file of this name is qualified
        for source in sorted(sources, key=lambda s: len(groups[s.name]) > 1):
            planned._name(source)
        return planned

    def __call__(self, path: Path) -> Assignment:
        """The specimen of the image at ``path``, named as text every output can hold (:func:`path_text`)."""
        source = self._source(Path(path))
        return Assignment(path_text(self._name(source)), source.note)

    def unplaced(self, images: Sequence[Path]) -> tuple[int, str]:
        """How many of ``images`` the pattern or the map does not place (each then its own specimen), and the
        note their rows carry ("" when images are grouped by folder, which places every one)."""
        count = sum(1 for path in images if self._source(Path(path)).note)
        return count, OWN_BY_MAP if self.mapping is not None else OWN_BY_PATTERN if self.pattern is not None else ""

    def _source(self, path: Path) -> "_Source":
        if self.mapping is not None:
            specimen = self.mapping.get(str(path.resolve()))
            return _Source(specimen) if specimen else _Source(path.stem, _own(path), OWN_BY_MAP)
        if self.pattern is not None:
            match = self.pattern.search(path.name)
            if match is None or not (match.group(1) if self.pattern.groups else match.group(0)):
                return _Source(path.stem, _own(path), OWN_BY_PATTERN)
            return _Source(match.group(1) if self.pattern.groups else match.group(0))
        return _Source(self._folder(path), str(path.parent.resolve()))

    def _name(self, source: "_Source") -> str:
        """``source``'s specimen name: its own, or qualified by its folders when another source holds that."""
        if source in self._names:
            return self._names[source]
        if source.where is None or source.name not in self._owners:
            return self._claim(source, source.name)
        parts = Path(source.where).parts
        for count in range(len(Path(source.name).parts) + 1, len(parts) + 1):
            name = "/".join(parts[-count:]).lstrip("/")
            if name not in self._owners:
                return self._claim(source, name)
        return self._claim(source, source.where)

    def _claim(self, source: "_Source", name: str) -> str:
        self._names[source] = name
        self._owners.setdefault(name, source)
        return name

    def _folder(self, path: Path) -> str:
        for root in self.roots:
            try:
                relative = path.parent.relative_to(root)
            except ValueError:
                continue
            return relative.as_posix() if relative.parts else (root.resolve().name or str(root))
        return path.parent.resolve().name or str(path.parent)


@dataclass(frozen=True, order=True)
class _Source:
    """Where an image's specimen comes from: a name, and for a folder or an unplaced file the resolved path
    that is the specimen (None for a name the pattern or the map gave, which all its images share)."""

    name: str
    where: str | None = None
    note: str = ""


def _own(path: Path) -> str:
    """An unplaced image's specimen, which is the file itself: its resolved path with its suffix."""
    return str(path.resolve())


def _delimiter(text: str) -> str:
    """The map's delimiter, from its header line: a comma, or the semicolon or tab that spreadsheets in many
    locales write instead (a header with none of them has one column, and is refused for its columns)."""
    header = text.split("\n", 1)[0]
    return max(",;\t", key=header.count)


def _text(path: Path, data: bytes) -> str:
    """The map's text, UTF-8 with or without a byte-order mark.

    Raises:
        SpecimenError: It is not UTF-8 (a spreadsheet saved it in its locale's encoding): the line and the remedy.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise SpecimenError(f"specimen map {path}, line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save"
                            " the map as CSV UTF-8") from None


def read_map(path: Path) -> dict[str, str]:
    """A specimen map: a CSV with the columns ``path`` and ``specimen`` (a header row; comma, semicolon or tab
    separated; paths absolute or relative to the map's folder), as ``{resolved path: specimen}``.

    Raises:
        SpecimenError: The file cannot be read or is not UTF-8, lacks the columns, or a row names a missing file
            or a folder, repeats a path or has no specimen: the message gives the first such line.
    """
    path = Path(path)
    try:
        text = _text(path, path.read_bytes())
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text)))
    except (OSError, csv.Error) as err:
        raise SpecimenError(f"specimen map {path}: cannot be read ({err})") from None
    header = [cell.strip().lower() for cell in rows[0]] if rows else []
    if "path" not in header or "specimen" not in header:
        raise SpecimenError(f"specimen map {path}, line 1: needs the columns path and specimen")
    at, name_at = header.index("path"), header.index("specimen")
    mapping: dict[str, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        file = row[at].strip() if at < len(row) else ""
        specimen = row[name_at].strip() if name_at < len(row) else ""
        target = (path.parent / file).resolve()
        where = f"specimen map {path}, line {line}"
        if not file or not specimen:
            raise SpecimenError(f"{where}: a row needs both a path and a specimen")
        if target.is_dir():
            raise SpecimenError(f"{where}: {file} is a folder: the map lists image files, one row each")
        if not target.is_file():
            raise SpecimenError(f"{where}: {file} does not exist")
        if str(target) in mapping:
            raise SpecimenError(f"{where}: {file} is listed twice")
        mapping[str(target)] = specimen
    return mapping

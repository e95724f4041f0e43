"""Saving trained models compactly and loading them only after their checksum matches."""

import tempfile
import zipfile
from pathlib import Path

import h5py
import numpy as np

from allscan.fileio import atomic_write
from allscan.models.manifest import Manifest, ManifestError, ModelEntry, sha256_file

_WEIGHTS_MEMBER = "model.weights.h5"


def save_half_precision(model, path: Path) -> None:
    """Save ``model`` as a ``.keras`` file whose float32 weights are stored as float16.

    Keras casts them back to each variable's float32 dtype on load, so the file is
    half the size and loads like any other ``.keras`` file.
    """
    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.keras"
        model.save(full)
        with zipfile.ZipFile(full) as src:
            src.extract(_WEIGHTS_MEMBER, tmp)
            weights = Path(tmp) / _WEIGHTS_MEMBER
            with h5py.File(weights, "r+") as h5:
                _halve(h5)
            packed = Path(tmp) / "packed.h5"
            with h5py.File(weights, "r") as h5, h5py.File(packed, "w") as out:
                for key in h5:
                    h5.copy(key, out)
                for key, value in h5.attrs.items():
                    out.attrs[key] = value

            def write(tmp_path: Path) -> None:
                with zipfile.ZipFile(tmp_path, "w") as dst:
                    for info in src.infolist():
                        if info.filename == _WEIGHTS_MEMBER:
                            dst.write(packed, _WEIGHTS_MEMBER)
                        else:
                            dst.writestr(info, src.read(info.filename))

            atomic_write(Path(path), write)


def _halve(group) -> None:
    for key in list(group):
        item = group[key]
        if isinstance(item, h5py.Group):
            _halve(item)
        elif item.dtype == np.float32:
            data = item[()]
            attrs = dict(item.attrs)
            del group[key]
            group.create_dataset(key, data=data.astype(np.float16))
            for name, value in attrs.items():
                group[key].attrs[name] = value


def check_file(models_dir: Path, entry: ModelEntry) -> Path:
    """The path of a manifest entry's model file, after verifying its sha256.

    Raises:
        ManifestError: The file is missing or does not match the manifest.
    """
    return _checked(Path(models_dir) / entry.file, entry.sha256, "model file")


def check_openvino(models_dir: Path, entry: ModelEntry) -> tuple[Path, Path]:
    """The paths of a manifest entry's OpenVINO ``.xml`` and ``.bin``, after verifying both sha256.

    Raises:
        ManifestError: The entry lists no OpenVINO files, or one is missing or does not match the manifest.
    """
    converted = entry.openvino
    if converted is None:
        raise ManifestError(f"the manifest lists no OpenVINO files for {entry.name}")
    xml = _checked(Path(models_dir) / converted.xml, converted.xml_sha256, f"{entry.name}'s OpenVINO file")
    weights = _checked(Path(models_dir) / converted.bin, converted.bin_sha256, f"{entry.name}'s OpenVINO file")
    return xml, weights


def check_listed_files(models_dir: Path, manifest: Manifest) -> int:
    """Verify every file the manifest lists (each member's ``.keras`` and OpenVINO files, the domain reference)
    against its sha256, as loading would; returns how many were checked.

    Raises:
        ManifestError: The first file that is missing or does not match the manifest.
    """
    listed = {file: sha256 for entry in manifest.models.values() for file, sha256 in entry.files().items()}
    if manifest.domain is not None:
        listed[manifest.domain["file"]] = manifest.domain["sha256"]
    for file, sha256 in listed.items():
        _checked(Path(models_dir) / file, sha256, "listed file", "these models are refused until it is restored")
    return len(listed)


def _checked(path: Path, sha256: str, what: str, outcome: str = "refusing to load it") -> Path:
    if not path.is_file():
        raise ManifestError(f"{what} missing: {path}")
    actual = sha256_file(path)
    if actual != sha256:
        raise ManifestError(
            f"{what} {path} does not match the manifest (sha256 {actual[:12]}…, expected {sha256[:12]}…); {outcome}"
        )
    return path

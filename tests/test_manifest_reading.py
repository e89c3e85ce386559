"""What the upload accepts is what runs: ``model.json`` and ``app.json`` are read by one function.

The upload check (``validate_model_zip``, ``validate_app_zip``; ``aiot model pack`` and
``aiot app pack`` too) and the places the artifact runs (a model replica's ``LoadedModel``, an
app instance's ``load_manifest``) agree on every manifest: a UTF-8 byte-order mark (how some
editors save UTF-8) is accepted by both, and what one refuses the other refuses too, naming the
file. A BOM used to pass the check and crash the replica.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ai_manager.artifact import validate_model_zip
from app_manager.artifact import validate_app_zip
from platform_core.archive import pack_directory
from platform_sdk.app import load_manifest
from platform_sdk.artifacts import APP_MANIFEST, MODEL_MANIFEST
from platform_sdk.errors import PlatformError
from tests.test_model_serving import FUNCTION, endpoint, loaded, write_model

ROOT = Path(__file__).resolve().parents[1]
SMART_HOME = ROOT / "examples" / "apps" / "smart-home"
BOM = b"\xef\xbb\xbf"


def _variants(document: bytes) -> dict[str, bytes]:
    """The manifest as editors and mistakes write it."""
    text = document.decode()
    return {
        "plain": document,
        "utf-8 with a BOM": BOM + document,
        "BOM and CRLF": BOM + text.replace("\n", "\r\n").encode(),
        "utf-16": text.encode("utf-16"),
        "latin-1 bytes": document.replace(b"{", b'{"description": "caf\xe9", ', 1),
        "two BOMs": BOM + BOM + document,
        "trailing text": document + b"\n# done\n",
        "not an object": b"[]",
    }


ACCEPTED = ("plain", "utf-8 with a BOM", "BOM and CRLF")


def _outcome(action: Callable[[], object]) -> str:
    """``accepted``, or the refusal's message without the label of what was read (zip or folder)."""
    try:
        action()
    except PlatformError as exc:
        return "refused: " + exc.message.split(": ", 1)[1]
    return "accepted"


def test_a_model_json_with_a_bom_is_accepted_on_upload_and_served(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "bom", FUNCTION, [endpoint()], entry="double")
    manifest = folder / MODEL_MANIFEST
    manifest.write_bytes(BOM + manifest.read_bytes())
    accepted = validate_model_zip(pack_directory(folder), label="bom.zip")
    assert accepted.manifest.name == "tiny"
    with loaded(folder) as model:
        assert model.manifest == accepted.manifest
        assert list(model.endpoints) == ["predict"]


def test_upload_and_replica_agree_on_every_model_json(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "model", FUNCTION, [endpoint()], entry="double")
    document = json.dumps(json.loads((folder / MODEL_MANIFEST).read_text()), indent=2).encode()
    for name, raw in _variants(document).items():
        (folder / MODEL_MANIFEST).write_bytes(raw)

        def upload() -> None:
            validate_model_zip(pack_directory(folder), label="m.zip")

        def serve() -> None:
            with loaded(folder):
                pass

        at_upload, at_replica = _outcome(upload), _outcome(serve)
        assert at_upload == at_replica, name
        assert (at_upload == "accepted") == (name in ACCEPTED), (name, at_upload)
        if name not in ACCEPTED:
            assert at_upload.startswith(f"refused: {MODEL_MANIFEST}"), (name, at_upload)


def test_upload_and_app_instance_agree_on_every_app_json(tmp_path: Path) -> None:
    folder = tmp_path / "app"
    shutil.copytree(SMART_HOME, folder)
    document = (folder / APP_MANIFEST).read_bytes()
    for name, raw in _variants(document).items():
        (folder / APP_MANIFEST).write_bytes(raw)

        def upload() -> None:
            validate_app_zip(pack_directory(folder), label="a.zip")

        def run() -> None:
            load_manifest(folder)

        at_upload, at_instance = _outcome(upload), _outcome(run)
        assert at_upload == at_instance, name
        assert (at_upload == "accepted") == (name in ACCEPTED), (name, at_upload)
        if name not in ACCEPTED:
            assert at_upload.startswith(f"refused: {APP_MANIFEST}"), (name, at_upload)


@pytest.mark.parametrize("raw", [b"{", BOM + b"{"])
def test_a_broken_model_json_is_refused_the_same_way_on_both_sides(tmp_path: Path, raw: bytes) -> None:
    folder = write_model(tmp_path / "broken", FUNCTION, [endpoint()], entry="double")
    (folder / MODEL_MANIFEST).write_bytes(raw)
    with pytest.raises(PlatformError) as at_upload:
        validate_model_zip(pack_directory(folder), label="b.zip")
    with pytest.raises(PlatformError) as at_replica, loaded(folder):
        pass
    assert "is not valid JSON (line 1 column 2" in at_upload.value.message
    assert at_upload.value.details == at_replica.value.details

"""An image model's file outputs through the gateway: stored, served by signed https URL, read by the
client as FileOutput; and `cogkit call` uploading a file input and downloading the outputs."""

import pytest

from cogkit.cli import main
from models import MODELS

pytestmark = pytest.mark.skipif("image" not in MODELS, reason="no image model in MODELS")

MAGIC = {b"\x89PNG": "png", b"RIFF": "webp", b"\xff\xd8\xff": "jpg"}


def image_kind(data: bytes) -> str | None:
    return next((kind for magic, kind in MAGIC.items() if data.startswith(magic)), None)


def picture_input(**extra) -> dict:
    return {**MODELS["image"].demo_input, **extra}


def test_file_outputs_are_gateway_urls_read_as_file_output(gateway, gateway_client, image_weights):
    from replicate.helpers import FileOutput

    schema = gateway_client.models.get("local/image").latest_version.openapi_schema
    many = "num_outputs" in schema["components"]["schemas"]["Input"]["properties"]
    output = gateway_client.run("local/image", input=picture_input(**({"num_outputs": 2} if many else {})))
    files = output if isinstance(output, list) else [output]
    if gateway.cert:  # the client wraps only https: URLs in FileOutput
        assert files and all(isinstance(f, FileOutput) for f in files)
    files = [f if isinstance(f, FileOutput) else FileOutput(f, gateway_client) for f in files]
    assert all(f.url.startswith(f"{gateway.url}/v1/files/") and "signature=" in f.url for f in files)
    pictures = [f.read() for f in files]
    assert all(image_kind(p) for p in pictures)
    if many:
        assert len(files) == 2 and files[0].url != files[1].url


def test_call_uploads_a_file_input_and_downloads_outputs(gateway, image_weights, tmp_path, monkeypatch, capsys):
    for key, value in gateway.client_env().items():
        monkeypatch.setenv(key, value)
    first = tmp_path / "first"
    args = ["call", "local/image", *[f"-i{k}={v}" for k, v in picture_input().items()], "-o", str(first)]
    assert main(args) == 0, capsys.readouterr().err
    made = sorted(tmp_path.glob("first*"))
    assert made and image_kind(made[0].read_bytes())
    schema_inputs = gateway.client().models.get("local/image").latest_version.openapi_schema[
        "components"]["schemas"]["Input"]["properties"]
    file_inputs = [k for k, v in schema_inputs.items() if v.get("format") == "uri"]
    if not file_inputs:
        return
    second = tmp_path / "out" / "second"
    args = ["call", "local/image", *[f"-i{k}={v}" for k, v in picture_input().items()],
            f"-i{file_inputs[0]}=@{made[0]}", "-o", str(second)]
    assert main(args) == 0, capsys.readouterr().err
    uploaded = gateway.get("/v1/files").json()["results"]
    assert any(f["name"] == made[0].name for f in uploaded)  # the input went up through POST /v1/files
    again = sorted((tmp_path / "out").glob("second*"))
    assert again and image_kind(again[0].read_bytes())

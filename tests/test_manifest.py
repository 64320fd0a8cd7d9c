"""Bundle manifest: round trip, validation errors naming the field, file verification, atomic save."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os

import pytest

import edgebind._io
from edgebind._lazy import is_available
from edgebind.bundle import (
    MANIFEST_SCHEMA,
    Artifact,
    CreatedBy,
    Fidelity,
    LabelBank,
    Manifest,
    TensorSpec,
    TowerRecord,
    load_manifest,
    save_manifest,
    verify_files,
)
from edgebind.bundle.schema import validate_with_jsonschema
from edgebind.errors import ManifestError


def _write(path, data: bytes) -> tuple[str, int]:
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest(), len(data)


def _artifact(tmp_path, name: str, precision: str, form: str, *, data: bool = False) -> Artifact:
    digest, size = _write(tmp_path / name, f"model bytes of {name}".encode())
    extra = {}
    if data:
        ddigest, dsize = _write(tmp_path / f"{name}.data", b"\x00\x01" * 50)
        extra = dict(data_file=f"{name}.data", data_sha256=ddigest, data_size_bytes=dsize)
    return Artifact(
        precision=precision,
        form=form,
        file=name,
        sha256=digest,
        size_bytes=size,
        backends=("onnxruntime-cpu", "tensorrt"),
        quantization={"method": "minmax", "per_channel": True} if precision == "int8" else {},
        fidelity=Fidelity(max_abs_diff=1e-6, min_cosine=0.9999991, mean_cosine=0.9999995, n_samples=4,
                          reference="torch-fp32", top1_agreement=1.0),
        provenance={"opset": 17},
        **extra,
    )


def _tower(artifacts, *, in_name="depth", in_shape=("batch", 1, 224, 224), dtype="float32") -> TowerRecord:
    return TowerRecord(
        input=TensorSpec(name=in_name, shape=in_shape, dtype=dtype),
        output=TensorSpec(name="embedding", shape=("batch", 1024), dtype="float32"),
        logit_scale=5.0,
        preprocess={"size": 224, "mean": [0.0], "nested": {"k": None}},
        artifacts=tuple(artifacts),
    )


@pytest.fixture()
def bundle(tmp_path) -> Manifest:
    depth = _tower([
        _artifact(tmp_path, "m.depth.fp32.onnx", "fp32", "fp32", data=True),
        _artifact(tmp_path, "m.depth.int8-qdq.onnx", "int8", "int8-qdq"),
        _artifact(tmp_path, "m.depth.int8-dynamic.onnx", "int8", "int8-dynamic"),
    ])
    text = _tower([_artifact(tmp_path, "m.text.fp16.onnx", "fp16", "fp16")], in_name="tokens",
                  in_shape=("batch", 77), dtype="int64")
    digest, size = _write(tmp_path / "labels.npz", b"label bank")
    return Manifest(
        model="imagebind_tiny",
        model_config={"embed_dim": 32, "modalities": ["depth", "text"]},
        checkpoint_sha256="random-init",
        seed=0,
        created_by=CreatedBy(edgebind="0.1", torch="2.13.0", onnx="1.0", onnxruntime="1.32.0", opset=17,
                             exporter="torchscript"),
        towers={"depth": depth, "text": text},
        label_bank=LabelBank(file="labels.npz", sha256=digest, size_bytes=size, modality="text", n_labels=3,
                             embed_dim=1024),
    )


def test_round_trip_through_file(bundle, tmp_path):
    path = save_manifest(bundle, tmp_path)
    assert path == tmp_path / "manifest.json"
    again = load_manifest(tmp_path)
    assert again == bundle
    assert load_manifest(path) == bundle
    assert isinstance(again.towers["depth"].input.shape, tuple)
    assert again.artifact("depth", "fp32").data_file == "m.depth.fp32.onnx.data"
    assert json.loads(path.read_text())["schema_version"] == 1


def test_accessors_pick_and_explain(bundle):
    assert bundle.tower("DEPTH").input.name == "depth"
    assert bundle.artifact("depth", "int8", "int8-dynamic").file == "m.depth.int8-dynamic.onnx"
    with pytest.raises(ManifestError, match="several artifacts.*pass form="):
        bundle.artifact("depth", "int8")
    with pytest.raises(ManifestError, match=r"no 'audio' tower; it has \['depth', 'text'\]"):
        bundle.tower("audio")
    with pytest.raises(ManifestError, match="tower 'text': no artifact with precision='fp32'"):
        bundle.artifact("text", "fp32")


def test_with_artifact_replaces_same_precision_and_form(bundle, tmp_path):
    tower = bundle.tower("depth")
    new = dataclasses.replace(tower.artifact("int8", "int8-qdq"), quantization={"method": "entropy"})
    updated = bundle.with_tower("depth", tower.with_artifact(new))
    assert len(updated.tower("depth").artifacts) == 3
    assert updated.artifact("depth", "int8", "int8-qdq").quantization == {"method": "entropy"}
    assert bundle.artifact("depth", "int8", "int8-qdq").quantization["method"] == "minmax"  # original untouched


# Each case: a mutation of the valid document, and the field path the error must name.
BAD_DOCUMENTS = [
    (lambda d: d.pop("model"), "manifest: missing required field(s) ['model']"),
    (lambda d: d["towers"]["depth"].pop("input"), "manifest.towers.depth: missing required field(s) ['input']"),
    (lambda d: d["towers"]["depth"]["artifacts"][0].update(size_bytes="12"),
     "manifest.towers.depth.artifacts[0].size_bytes: expected an integer"),
    (lambda d: d["towers"]["depth"]["artifacts"][1].update(sha256="abc"),
     "manifest.towers.depth.artifacts[1].sha256: expected 64 lowercase hex digits"),
    (lambda d: d["towers"]["depth"].update(logit_scale="hot"), "manifest.towers.depth.logit_scale: expected a number"),
    (lambda d: d["towers"]["depth"].update(logit_scale=-1), "manifest.towers.depth.logit_scale: expected a positive"),
    (lambda d: d.update(schema_version=2), "manifest.schema_version: unsupported version 2"),
    (lambda d: d.pop("schema_version"), "manifest.schema_version: unsupported version None"),
    (lambda d: d["towers"].update(smell=d["towers"]["depth"]), "manifest.towers: unknown modality 'smell'"),
    (lambda d: d["towers"]["text"].update(colour="red"), "manifest.towers.text: unknown field(s) ['colour']"),
    (lambda d: d["towers"]["text"]["input"].update(dtype="float64"),
     "manifest.towers.text.input.dtype: expected one of"),
    (lambda d: d["towers"]["text"]["input"].update(shape=["batch", 0]),
     "manifest.towers.text.input.shape: each dim must be a positive int"),
    (lambda d: d["towers"]["text"]["artifacts"][0].update(precision="int4"),
     "manifest.towers.text.artifacts[0].precision: expected one of ['fp32', 'fp16', 'int8']"),
    (lambda d: d["towers"]["text"]["artifacts"][0].update(file="../outside.onnx"),
     "manifest.towers.text.artifacts[0].file: expected a relative path"),
    (lambda d: d["towers"]["depth"]["artifacts"][0].update(data_sha256=None),
     "manifest.towers.depth.artifacts[0].data_file: data_file, data_sha256 and data_size_bytes must be given together"),
    (lambda d: d["towers"]["depth"]["artifacts"][0]["fidelity"].update(n_samples=0),
     "manifest.towers.depth.artifacts[0].fidelity.n_samples: expected at least 1"),
    (lambda d: d["towers"]["depth"].update(preprocess=[1, 2]),
     "manifest.towers.depth.preprocess: expected a JSON object"),
    (lambda d: d.update(seed=None), "manifest.seed: a random-init bundle must record the seed"),
    (lambda d: d.update(checkpoint_sha256="deadbeef"), "manifest.checkpoint_sha256: expected 64 lowercase hex"),
    (lambda d: d["label_bank"].update(modality="smell"), "manifest.label_bank.modality: unknown modality 'smell'"),
    (lambda d: d["towers"]["text"]["artifacts"][0].update(file="m.depth.fp32.onnx"), "is listed twice"),
    (lambda d: d.update(towers=[]), "manifest.towers: expected an object keyed by modality"),
]


@pytest.mark.parametrize("mutate, needle", BAD_DOCUMENTS, ids=[c[1][:48] for c in BAD_DOCUMENTS])
def test_invalid_documents_name_the_field(bundle, mutate, needle):
    data = copy.deepcopy(bundle.to_dict())
    mutate(data)
    with pytest.raises(ManifestError) as exc:
        Manifest.from_dict(data)
    assert needle in str(exc.value)


def test_load_reports_file_and_field(bundle, tmp_path):
    data = bundle.to_dict()
    data["towers"]["depth"]["artifacts"][0]["size_bytes"] = -3
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="size_bytes"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match=r"manifest.json: not valid JSON \(line 1"):
        load_manifest(tmp_path)
    with pytest.raises(ManifestError, match="no manifest here"):
        load_manifest(tmp_path / "elsewhere")


def test_json_schema_matches_the_dataclasses():
    # The shipped JSON Schema must describe exactly the fields the dataclasses accept and require.
    records = {"created_by": CreatedBy, "tensor": TensorSpec, "fidelity": Fidelity, "artifact": Artifact,
               "tower": TowerRecord, "label_bank": LabelBank}
    for key, cls in [*records.items(), ("(top)", Manifest)]:
        schema = MANIFEST_SCHEMA if key == "(top)" else MANIFEST_SCHEMA["$defs"][key]
        fields = dataclasses.fields(cls)
        required = {f.name for f in fields
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        if cls is Manifest:
            required.add("schema_version")  # defaults in Python, but a document must state it
        assert set(schema["properties"]) == {f.name for f in fields}, key
        assert set(schema["required"]) == required, key
        assert schema["additionalProperties"] is False, key


@pytest.mark.skipif(not is_available("jsonschema"), reason="optional jsonschema package not installed; "
                    "the dataclass validation (tested above) is what always runs")
def test_json_schema_rejects_what_the_dataclasses_reject(bundle):
    assert validate_with_jsonschema(copy.deepcopy(bundle.to_dict())) is True
    # The last two cases are cross-record checks only the dataclasses make (duplicate files, towers type).
    for mutate, needle in BAD_DOCUMENTS[:-2]:
        data = copy.deepcopy(bundle.to_dict())
        mutate(data)
        with pytest.raises(ManifestError):
            validate_with_jsonschema(data)
            pytest.fail(f"the JSON Schema accepts a document the dataclasses reject with {needle!r}")


def test_verify_files_checks_every_file(bundle, tmp_path):
    verified = verify_files(bundle, tmp_path)
    assert {p.name for p in verified} == {"m.depth.fp32.onnx", "m.depth.fp32.onnx.data", "m.depth.int8-qdq.onnx",
                                          "m.depth.int8-dynamic.onnx", "m.text.fp16.onnx", "labels.npz"}
    assert len(verify_files(bundle, tmp_path, modalities=["text"])) == 1

    data = tmp_path / "m.depth.fp32.onnx.data"
    original = data.read_bytes()
    data.write_bytes(b"\xff" + original[1:])  # same size, different content
    with pytest.raises(ManifestError, match=r"m\.depth\.fp32\.onnx\.data: sha256 .* does not match"):
        verify_files(bundle, tmp_path)
    verify_files(bundle, tmp_path, modalities=["text"])  # the damaged tower is not checked
    data.write_bytes(original[:-1])
    with pytest.raises(ManifestError, match="size 99 bytes, manifest says 100"):
        verify_files(bundle, tmp_path)
    data.unlink()
    with pytest.raises(ManifestError, match=r"m\.depth\.fp32\.onnx\.data: listed in the manifest but missing"):
        verify_files(bundle, tmp_path)


def test_save_is_atomic(bundle, tmp_path, monkeypatch):
    save_manifest(bundle, tmp_path)
    before = (tmp_path / "manifest.json").read_bytes()

    # A value JSON cannot hold is refused before anything is written.
    bad = bundle.with_tower("text", dataclasses.replace(bundle.tower("text"), preprocess={"x": float("nan")}))
    with pytest.raises(ManifestError, match="not plain JSON"):
        save_manifest(bad, tmp_path)

    # An interruption at the final rename leaves the old manifest and no temp file.
    def interrupted(src, dst):
        raise KeyboardInterrupt

    smaller = dataclasses.replace(bundle, towers={}, label_bank=None)
    monkeypatch.setattr(edgebind._io.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_manifest(smaller, tmp_path)
    monkeypatch.undo()
    assert (tmp_path / "manifest.json").read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    save_manifest(smaller, tmp_path)
    assert load_manifest(tmp_path).towers == {}

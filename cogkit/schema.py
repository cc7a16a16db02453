"""The OpenAPI schema that `cog build` would bake into an image, generated from a predictor class.

coglet reads `.cog/openapi_schema.json` from its working directory to validate inputs (422 with the
field and the rule) and to allow SSE streaming. The Cog SDK describes the predictor
(`cog._inspector.create_predictor`); this module lays that out the way Cog's CLI does.
"""

import importlib
import inspect
import sys
from pathlib import Path

from cog import _adt as adt
from cog._inspector import create_predictor


def load_predictor_info(ref: str, root: Path) -> adt.PredictorInfo:
    """`ref` is a cog.yaml reference such as `predict.py:LLMRunner`, relative to `root`."""
    file, _, cls = ref.partition(":")
    module = Path(file).with_suffix("").as_posix().replace("/", ".")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    return create_predictor(module, cls)


def _title(name: str) -> str:
    return name.replace("_", " ").title()


def declared_bounds(info: adt.PredictorInfo) -> dict[str, tuple]:
    """(ge, le) of each input as its Input() declares them. The SDK keeps bounds as floats, and
    int(float(2**63 - 1)) is 2**63: integer bounds are taken from the source instead."""
    module = sys.modules.get(info.module_name) or importlib.import_module(info.module_name)
    cls = getattr(module, info.predictor_name, None)
    fn = getattr(cls, "run", None) or getattr(cls, "predict", None)
    if fn is None:
        return {}
    return {name: (getattr(p.default, "ge", None), getattr(p.default, "le", None))
            for name, p in inspect.signature(fn).parameters.items()}


def input_property(field: adt.InputField, enums: dict, bounds: tuple = (None, None)) -> dict:
    prop: dict = {"title": _title(field.name), "x-order": field.order}
    if field.choices is not None:
        # Cog puts each choice list in its own component and refers to it.
        enums[field.name] = {"title": field.name, "description": "An enumeration.",
                             "enum": list(field.choices), **field.type.primitive.json_type()}
        prop["allOf"] = [{"$ref": f"#/components/schemas/{field.name}"}]
    else:
        prop.update(field.type.json_type())
    if field.type.repetition in (adt.Repetition.OPTIONAL, adt.Repetition.OPTIONAL_REPEATED):
        prop["nullable"] = True
    if field.description:
        prop["description"] = field.description
    default = field.default
    if default is not None and not hasattr(default, "default_factory"):
        prop["default"] = field.type.json_encode(default)
    for key, attr in (("minimum", "ge"), ("maximum", "le"), ("minLength", "min_length"),
                      ("maxLength", "max_length"), ("pattern", "regex")):
        value = getattr(field, attr)
        if value is not None:
            if attr in ("ge", "le") and field.type.primitive is adt.PrimitiveType.INTEGER:
                exact = bounds[0 if attr == "ge" else 1]
                value = exact if isinstance(exact, int) else int(value)
            prop[key] = value
    if field.deprecated:
        prop["deprecated"] = True
    return prop


def is_required(field: adt.InputField) -> bool:
    optional = field.type.repetition in (adt.Repetition.OPTIONAL, adt.Repetition.OPTIONAL_REPEATED)
    return field.default is None and not optional


def openapi_schema(info: adt.PredictorInfo) -> dict:
    enums: dict = {}
    fields = sorted(info.inputs.values(), key=lambda f: f.order)
    bounds = declared_bounds(info)
    input_schema = {
        "type": "object",
        "title": "Input",
        "properties": {f.name: input_property(f, enums, bounds.get(f.name, (None, None))) for f in fields},
    }
    required = [f.name for f in fields if is_required(f)]
    if required:
        input_schema["required"] = required
    streaming = info.output.kind in (adt.OutputKind.ITERATOR, adt.OutputKind.CONCAT_ITERATOR)
    prediction_request = {
        "type": "object", "title": "PredictionRequest",
        "properties": {
            "id": {"type": "string", "title": "Id"},
            "input": {"$ref": "#/components/schemas/Input"},
            "webhook": {"type": "string", "format": "uri", "title": "Webhook"},
            "webhook_events_filter": {"type": "array", "items": {"type": "string",
                                      "enum": ["start", "output", "logs", "completed"]}},
        },
    }
    prediction_response = {
        "type": "object", "title": "PredictionResponse",
        "properties": {
            "id": {"type": "string"}, "input": {"$ref": "#/components/schemas/Input"},
            "output": {"$ref": "#/components/schemas/Output"}, "status": {"type": "string"},
            "error": {"type": "string"}, "logs": {"type": "string"}, "metrics": {"type": "object"},
        },
    }
    predict_op = {
        "summary": "Predict",
        "operationId": "predict_predictions_post",
        "requestBody": {"content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/PredictionRequest"}}}},
        "responses": {"200": {"description": "Successful Response", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/PredictionResponse"}}}}},
    }
    if streaming:
        predict_op["x-cog-streaming"] = True
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": "0.1.0"},
        "paths": {"/predictions": {"post": predict_op}},
        "components": {"schemas": {
            "Input": input_schema,
            "Output": info.output.json_type(),
            "PredictionRequest": prediction_request,
            "PredictionResponse": prediction_response,
            **enums,
        }},
    }


def input_schema(schema: dict) -> dict:
    return schema["components"]["schemas"]["Input"]

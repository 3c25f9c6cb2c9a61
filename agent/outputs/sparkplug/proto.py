"""The Sparkplug B payload message, built with the ``protobuf`` package from its definition.

``sparkplug_b.proto`` beside this module is the specification's payload definition
(Sparkplug 3.0.0, section 6.4). No code is generated from it (no ``protoc`` at build
time, no generated module tied to one protobuf release): the same definition is written
below as data, turned into a ``FileDescriptorProto`` and registered in a private
descriptor pool at import. ``tests/test_sparkplug_proto.py`` parses the .proto file and
checks every message, field number, label, type and enum value against this descriptor.

The message classes are dynamic, so mypy sees them as ``Any``; this module and
:mod:`agent.outputs.sparkplug.encoding` are the only ones that touch them.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["DATATYPES", "FILE_NAME", "PACKAGE", "Payload", "file_descriptor"]

FILE_NAME: Final = "sparkplug_b.proto"
PACKAGE: Final = "org.eclipse.tahu.protobuf"

#: the ``DataType`` enum of the specification (6.4.16), by name
DATATYPES: Final[dict[str, int]] = {
    name: number for number, name in enumerate((
        "Unknown", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
        "Float", "Double", "Boolean", "String", "DateTime", "Text", "UUID", "DataSet", "Bytes",
        "File", "Template", "PropertySet", "PropertySetList", "Int8Array", "Int16Array",
        "Int32Array", "Int64Array", "UInt8Array", "UInt16Array", "UInt32Array", "UInt64Array",
        "FloatArray", "DoubleArray", "BooleanArray", "StringArray", "DateTimeArray"))
}

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS: Final[dict[str, int]] = {
    "string": _F.TYPE_STRING, "uint32": _F.TYPE_UINT32, "uint64": _F.TYPE_UINT64,
    "float": _F.TYPE_FLOAT, "double": _F.TYPE_DOUBLE, "bool": _F.TYPE_BOOL, "bytes": _F.TYPE_BYTES,
}
_MAX = 536870912  # "to max": one past the largest field number, as protoc records it

# A message: (name, fields, oneof name or None, nested messages, first extension number).
# A field: (label, type, name, number, in the oneof). Message types are relative to Payload.
Field = tuple[str, str, str, int, bool]
Message = tuple[str, list[Field], str | None, list["Message"], int | None]


def _value_oneof(first: int, extension: str, *, extra: tuple[Field, ...] = ()) -> list[Field]:
    scalars = [("uint32", "int_value"), ("uint64", "long_value"), ("float", "float_value"),
               ("double", "double_value"), ("bool", "boolean_value"), ("string", "string_value")]
    fields: list[Field] = [("optional", t, n, first + i, True) for i, (t, n) in enumerate(scalars)]
    fields += list(extra)
    fields.append(("optional", extension, "extension_value", first + len(fields), True))
    return fields


def _extension_holder(name: str) -> Message:
    return (name, [], None, [], 1)


_PARAMETER: Message = (
    "Parameter",
    [("optional", "string", "name", 1, False), ("optional", "uint32", "type", 2, False),
     *_value_oneof(3, "Payload.Template.Parameter.ParameterValueExtension")],
    "value", [_extension_holder("ParameterValueExtension")], None)
_TEMPLATE: Message = (
    "Template",
    [("optional", "string", "version", 1, False),
     ("repeated", "Payload.Metric", "metrics", 2, False),
     ("repeated", "Payload.Template.Parameter", "parameters", 3, False),
     ("optional", "string", "template_ref", 4, False),
     ("optional", "bool", "is_definition", 5, False)],
    None, [_PARAMETER], 6)
_DATASET: Message = (
    "DataSet",
    [("optional", "uint64", "num_of_columns", 1, False),
     ("repeated", "string", "columns", 2, False),
     ("repeated", "uint32", "types", 3, False),
     ("repeated", "Payload.DataSet.Row", "rows", 4, False)],
    None,
    [("DataSetValue", _value_oneof(1, "Payload.DataSet.DataSetValue.DataSetValueExtension"),
      "value", [_extension_holder("DataSetValueExtension")], None),
     ("Row", [("repeated", "Payload.DataSet.DataSetValue", "elements", 1, False)], None, [], 2)],
    5)
_PROPERTY_VALUE: Message = (
    "PropertyValue",
    [("optional", "uint32", "type", 1, False), ("optional", "bool", "is_null", 2, False),
     *_value_oneof(3, "Payload.PropertyValue.PropertyValueExtension", extra=(
         ("optional", "Payload.PropertySet", "propertyset_value", 9, True),
         ("optional", "Payload.PropertySetList", "propertysets_value", 10, True)))],
    "value", [_extension_holder("PropertyValueExtension")], None)
_PROPERTY_SET: Message = (
    "PropertySet",
    [("repeated", "string", "keys", 1, False),
     ("repeated", "Payload.PropertyValue", "values", 2, False)],
    None, [], 3)
_PROPERTY_SET_LIST: Message = (
    "PropertySetList", [("repeated", "Payload.PropertySet", "propertyset", 1, False)], None, [], 2)
_METADATA: Message = (
    "MetaData",
    [("optional", "bool", "is_multi_part", 1, False), ("optional", "string", "content_type", 2, False),
     ("optional", "uint64", "size", 3, False), ("optional", "uint64", "seq", 4, False),
     ("optional", "string", "file_name", 5, False), ("optional", "string", "file_type", 6, False),
     ("optional", "string", "md5", 7, False), ("optional", "string", "description", 8, False)],
    None, [], 9)
_METRIC: Message = (
    "Metric",
    [("optional", "string", "name", 1, False), ("optional", "uint64", "alias", 2, False),
     ("optional", "uint64", "timestamp", 3, False), ("optional", "uint32", "datatype", 4, False),
     ("optional", "bool", "is_historical", 5, False), ("optional", "bool", "is_transient", 6, False),
     ("optional", "bool", "is_null", 7, False),
     ("optional", "Payload.MetaData", "metadata", 8, False),
     ("optional", "Payload.PropertySet", "properties", 9, False),
     *_value_oneof(10, "Payload.Metric.MetricValueExtension", extra=(
         ("optional", "bytes", "bytes_value", 16, True),
         ("optional", "Payload.DataSet", "dataset_value", 17, True),
         ("optional", "Payload.Template", "template_value", 18, True)))],
    "value", [_extension_holder("MetricValueExtension")], None)
PAYLOAD: Final[Message] = (
    "Payload",
    [("optional", "uint64", "timestamp", 1, False), ("repeated", "Payload.Metric", "metrics", 2, False),
     ("optional", "uint64", "seq", 3, False), ("optional", "string", "uuid", 4, False),
     ("optional", "bytes", "body", 5, False)],
    None,
    [_TEMPLATE, _DATASET, _PROPERTY_VALUE, _PROPERTY_SET, _PROPERTY_SET_LIST, _METADATA, _METRIC],
    6)


def _message(spec: Message) -> descriptor_pb2.DescriptorProto:
    name, fields, oneof, nested, extensions_from = spec
    msg = descriptor_pb2.DescriptorProto(name=name)
    if oneof is not None:
        msg.oneof_decl.add(name=oneof)
    for label, type_, field_name, number, in_oneof in fields:
        field = msg.field.add(name=field_name, number=number,
                              label=_F.LABEL_REPEATED if label == "repeated" else _F.LABEL_OPTIONAL)
        if type_ in _SCALARS:
            field.type = _SCALARS[type_]
        else:
            field.type = _F.TYPE_MESSAGE
            field.type_name = f".{PACKAGE}.{type_}"
        if in_oneof:
            field.oneof_index = 0
    msg.nested_type.extend(_message(n) for n in nested)
    if extensions_from is not None:
        msg.extension_range.add(start=extensions_from, end=_MAX)
    # the specification's generated code reads the oneof's fields in declaration order
    return msg


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The payload definition as a ``FileDescriptorProto`` (what protoc would produce)."""
    fdp = descriptor_pb2.FileDescriptorProto(name=FILE_NAME, package=PACKAGE, syntax="proto2")
    fdp.options.java_package = PACKAGE
    fdp.options.java_outer_classname = "SparkplugBProto"
    enum = fdp.enum_type.add(name="DataType")
    for name, number in DATATYPES.items():
        enum.value.add(name=name, number=number)
    fdp.message_type.append(_message(PAYLOAD))
    return fdp


def _build() -> Any:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_descriptor())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.Payload"))


#: the ``Payload`` message class (``Payload.Metric`` and the other nested types hang off it)
Payload: Any = _build()

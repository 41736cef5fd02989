//! Envoy metadata for Gloo's `cluster_metadata`, `dynamic_metadata` and `host_metadata` template functions. Envoy
//! gives a Wasm filter the properties `xds.cluster_metadata`, `metadata` and `xds.upstream_host_metadata` as a
//! serialized `envoy.config.core.v3.Metadata`, turned into JSON here: `{namespace: {field: value}}`.

use serde_json::{Map, Number, Value};

/// Which metadata a transformation's templates read (each costs a host call per message).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetadataNeeds {
    pub cluster: bool,
    pub dynamic: bool,
    pub host: bool,
}

impl MetadataNeeds {
    /// From the names a template calls or reads.
    pub fn add(&mut self, name: &str) {
        match name {
            "cluster_metadata" | "clusterMetadata" => self.cluster = true,
            "dynamic_metadata" => self.dynamic = true,
            "host_metadata" => self.host = true,
            _ => {}
        }
    }

    pub fn any(self) -> bool {
        self.cluster || self.dynamic || self.host
    }

    pub fn union(self, other: MetadataNeeds) -> MetadataNeeds {
        MetadataNeeds {
            cluster: self.cluster || other.cluster,
            dynamic: self.dynamic || other.dynamic,
            host: self.host || other.host,
        }
    }
}

/// The metadata read for one message; `Value::Null` where Envoy has none (or it was not needed).
#[derive(Debug, Clone, PartialEq)]
pub struct EnvoyMetadata {
    pub cluster: Value,
    pub dynamic: Value,
    pub host: Value,
}

impl Default for EnvoyMetadata {
    fn default() -> Self {
        EnvoyMetadata { cluster: Value::Null, dynamic: Value::Null, host: Value::Null }
    }
}

/// The Envoy property paths.
pub const CLUSTER: [&str; 2] = ["xds", "cluster_metadata"];
pub const DYNAMIC: [&str; 1] = ["metadata"];
pub const HOST: [&str; 2] = ["xds", "upstream_host_metadata"];

/// Decodes a serialized `envoy.config.core.v3.Metadata` into `{namespace: {fields}}` (its `filter_metadata`;
/// `typed_filter_metadata` holds `Any` messages templates cannot read: skipped). Empty bytes are an empty object.
///
/// A small reader of the protobuf wire format instead of prost: the four messages involved (`Metadata`,
/// `google.protobuf.Struct`, `Value`, `ListValue`) cost a few KB here, prost's generated code about 40 KB of the
/// 1 MiB the .wasm must stay under.
pub fn decode(bytes: &[u8]) -> Result<Value, &'static str> {
    let mut namespaces = Map::new();
    let mut reader = Reader(bytes);
    while let Some((field, wire)) = reader.tag()? {
        // map<string, Struct> filter_metadata = 1: entries {1: key, 2: value}.
        if let (1, Wire::Len(entry)) = (field, wire) {
            let (key, value) = map_entry(entry, 0, true)?;
            namespaces.insert(key, value.unwrap_or_else(|| Value::Object(Map::new())));
        }
    }
    Ok(Value::Object(namespaces))
}

/// Deepest nesting of structs and lists read (as prost's recursion limit).
const MAX_DEPTH: usize = 100;

/// One field's payload.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first().ok_or("truncated varint")?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint too long")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if n > self.0.len() {
            return Err("truncated field");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// The next field number and payload, `None` at the end.
    fn tag(&mut self) -> Result<Option<(u64, Wire<'a>)>, &'static str> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                let bytes: [u8; 8] = self.take(8)?.try_into().map_err(|_| "truncated field")?;
                Wire::Fixed64(u64::from_le_bytes(bytes))
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "field too long")?;
                Wire::Len(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Wire::Fixed32
            }
            _ => return Err("unsupported wire type"),
        };
        Ok(Some((key >> 3, wire)))
    }
}

/// A map entry `{1: string key, 2: message value}`: a `Struct` (`is_struct`) or a `Value`.
fn map_entry(bytes: &[u8], depth: usize, is_struct: bool) -> Result<(String, Option<Value>), &'static str> {
    let mut reader = Reader(bytes);
    let (mut key, mut decoded) = (String::new(), None);
    while let Some((field, wire)) = reader.tag()? {
        match (field, wire) {
            (1, Wire::Len(k)) => key = String::from_utf8_lossy(k).into_owned(),
            (2, Wire::Len(v)) if is_struct => decoded = Some(decode_struct(v, depth)?),
            (2, Wire::Len(v)) => decoded = Some(decode_value(v, depth)?),
            _ => {}
        }
    }
    Ok((key, decoded))
}

/// `google.protobuf.Struct`: `map<string, Value> fields = 1`.
fn decode_struct(bytes: &[u8], depth: usize) -> Result<Value, &'static str> {
    if depth > MAX_DEPTH {
        return Err("metadata nested too deep");
    }
    let mut fields = Map::new();
    let mut reader = Reader(bytes);
    while let Some((field, wire)) = reader.tag()? {
        if let (1, Wire::Len(entry)) = (field, wire) {
            let (key, value) = map_entry(entry, depth + 1, false)?;
            // An entry without a value is a Value with no kind: null.
            fields.insert(key, value.unwrap_or(Value::Null));
        }
    }
    Ok(Value::Object(fields))
}

/// `google.protobuf.Value`: the last kind set wins, as protobuf's oneof merging does.
fn decode_value(bytes: &[u8], depth: usize) -> Result<Value, &'static str> {
    let mut value = Value::Null;
    let mut reader = Reader(bytes);
    while let Some((field, wire)) = reader.tag()? {
        value = match (field, wire) {
            (1, Wire::Varint(_)) => Value::Null,
            (2, Wire::Fixed64(bits)) => number(f64::from_bits(bits)),
            (3, Wire::Len(s)) => Value::String(String::from_utf8_lossy(s).into_owned()),
            (4, Wire::Varint(b)) => Value::Bool(b != 0),
            (5, Wire::Len(s)) => decode_struct(s, depth)?,
            (6, Wire::Len(list)) => decode_list(list, depth)?,
            _ => continue,
        };
    }
    Ok(value)
}

/// `google.protobuf.ListValue`: `repeated Value values = 1`.
fn decode_list(bytes: &[u8], depth: usize) -> Result<Value, &'static str> {
    if depth > MAX_DEPTH {
        return Err("metadata nested too deep");
    }
    let mut values = Vec::new();
    let mut reader = Reader(bytes);
    while let Some((field, wire)) = reader.tag()? {
        if let (1, Wire::Len(v)) = (field, wire) {
            values.push(decode_value(v, depth + 1)?);
        }
    }
    Ok(Value::Array(values))
}

/// Integral numbers print without a fraction, as protobuf's JSON does; NaN and infinities (no JSON form) are null.
fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 {
        #[allow(clippy::cast_possible_truncation)]
        return Value::Number(Number::from(n as i64));
    }
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    fn varint(out: &mut Vec<u8>, mut n: u64) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    fn len_field(out: &mut Vec<u8>, field: u64, payload: &[u8]) {
        varint(out, field << 3 | 2);
        varint(out, payload.len() as u64);
        out.extend_from_slice(payload);
    }

    fn entry(key: &str, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        len_field(&mut out, 1, key.as_bytes());
        len_field(&mut out, 2, value);
        out
    }

    fn proto_value(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        match value {
            Value::Null => out.extend([1 << 3, 0]),
            Value::Bool(b) => out.extend([4 << 3, u8::from(*b)]),
            Value::Number(n) => {
                out.push(2 << 3 | 1);
                out.extend(n.as_f64().unwrap().to_le_bytes());
            }
            Value::String(s) => len_field(&mut out, 3, s.as_bytes()),
            Value::Array(a) => {
                let mut list = Vec::new();
                for v in a {
                    len_field(&mut list, 1, &proto_value(v));
                }
                len_field(&mut out, 6, &list);
            }
            Value::Object(o) => len_field(&mut out, 5, &proto_struct(o)),
        }
        out
    }

    fn proto_struct(object: &Map<String, Value>) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in object {
            len_field(&mut out, 1, &entry(k, &proto_value(v)));
        }
        out
    }

    /// Serializes `{namespace: {fields}}` as Envoy gives it (for tests of the filter too).
    pub(crate) fn encode(namespaces: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        for (namespace, fields) in namespaces.as_object().unwrap() {
            len_field(&mut out, 1, &entry(namespace, &proto_struct(fields.as_object().unwrap())));
        }
        out
    }

    #[test]
    fn decodes_every_value_kind() {
        let value = json!({
            "io.solo.transformation": {"a": "text", "n": 3, "f": 1.5, "t": true, "z": null,
                                        "s": {"inner": ["x", 2, {"deep": false}]}},
            "other": {}
        });
        assert_eq!(decode(&encode(&value)).unwrap(), value);
        assert_eq!(decode(&[]).unwrap(), json!({}));
    }

    #[test]
    fn skips_unknown_fields_and_typed_metadata() {
        let mut bytes = encode(&json!({"ns": {"k": "v"}}));
        // typed_filter_metadata (field 2), a varint field 7, a fixed32 field 8.
        len_field(&mut bytes, 2, &entry("typed", b"\x0a\x00"));
        bytes.extend([7 << 3, 150, 1, 8 << 3 | 5, 0, 0, 0, 0]);
        assert_eq!(decode(&bytes).unwrap(), json!({"ns": {"k": "v"}}));
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        for bytes in [&[0x0a, 0x05, 0x01][..], &[0xff; 12], &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f], &[0x0b], &[0x09, 1]]
        {
            assert!(decode(bytes).is_err(), "{bytes:?}");
        }
        // Nested past the depth limit.
        let mut value = json!("leaf");
        for _ in 0..200 {
            value = json!([value]);
        }
        let bytes = encode(&json!({"ns": {"deep": value}}));
        assert!(decode(&bytes).unwrap_err().contains("too deep"));
    }

    #[test]
    fn needs_from_function_names() {
        let mut needs = MetadataNeeds::default();
        assert!(!needs.any());
        for name in ["header", "clusterMetadata", "host_metadata"] {
            needs.add(name);
        }
        assert_eq!(needs, MetadataNeeds { cluster: true, dynamic: false, host: true });
    }
}

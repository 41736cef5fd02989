//! Bodies: `content-encoding` (gzip/deflate) decoding with a bound on the decoded size and re-encoding, and the
//! JSON helpers of the body modes (dotted-name merges).

use std::io::{Read, Write};

use flate2::read::{DeflateDecoder, GzDecoder, ZlibDecoder};
use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use serde_json::{Map, Value};

/// A body's `content-encoding`, as far as the filter understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Deflate,
    /// Anything else (`br`, several codings, ...): the body is transformed as the bytes it is, as Gloo does.
    Other,
}

impl Encoding {
    pub fn from_header(value: Option<&str>) -> Self {
        match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Encoding::Identity,
            Some("gzip") | Some("x-gzip") => Encoding::Gzip,
            Some("deflate") => Encoding::Deflate,
            Some(_) => Encoding::Other,
        }
    }

    /// `true` when the filter decodes and re-encodes bodies of this encoding.
    pub fn is_compressed(self) -> bool {
        matches!(self, Encoding::Gzip | Encoding::Deflate)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The decoded body would be larger than the limit (a zip bomb gets here after `limit + 1` bytes).
    TooLarge,
    Corrupt(String),
}

/// Decodes a gzip or deflate body, reading at most `limit + 1` decoded bytes.
pub fn decode(body: &[u8], encoding: Encoding, limit: usize) -> Result<Vec<u8>, DecodeError> {
    let bound = (limit as u64).saturating_add(1);
    let mut out = Vec::new();
    let result = match encoding {
        Encoding::Gzip => GzDecoder::new(body).take(bound).read_to_end(&mut out),
        Encoding::Deflate => {
            // HTTP's "deflate" is zlib (RFC 1950); some senders use raw deflate (RFC 1951).
            match ZlibDecoder::new(body).take(bound).read_to_end(&mut out) {
                Ok(n) => Ok(n),
                Err(_) => {
                    out.clear();
                    DeflateDecoder::new(body).take(bound).read_to_end(&mut out)
                }
            }
        }
        Encoding::Identity | Encoding::Other => return Ok(body.to_vec()),
    };
    match result {
        Ok(_) if out.len() > limit => Err(DecodeError::TooLarge),
        Ok(_) => Ok(out),
        Err(e) => Err(DecodeError::Corrupt(format!("cannot decode the {} body: {e}", encoding.name()))),
    }
}

/// Encodes a body again.
pub fn encode(body: &[u8], encoding: Encoding) -> Vec<u8> {
    let result = match encoding {
        Encoding::Gzip => {
            let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
            encoder.write_all(body).and_then(|_| encoder.finish())
        }
        Encoding::Deflate => {
            let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
            encoder.write_all(body).and_then(|_| encoder.finish())
        }
        Encoding::Identity | Encoding::Other => return body.to_vec(),
    };
    // Writing into a Vec cannot fail.
    result.unwrap_or_default()
}

impl Encoding {
    fn name(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
            Encoding::Other => "encoded",
        }
    }
}

/// Sets `value` at a dotted name in a JSON document (`a.b.c` -> `{"a": {"b": {"c": value}}}`), creating objects
/// on the way, as Gloo does with `nlohmann::json::operator[]`. A null document or member becomes an object; any
/// other non-object on the way is an error.
pub fn set_dotted(document: &mut Value, name: &str, value: Value) -> Result<(), String> {
    let mut current = document;
    let mut parts = name.split('.').peekable();
    while let Some(part) = parts.next() {
        if current.is_null() {
            *current = Value::Object(Map::new());
        }
        let Value::Object(map) = current else {
            return Err(format!("cannot set {name:?}: the body is not a JSON object there"));
        };
        if parts.peek().is_none() {
            map.insert(part.to_string(), value);
            return Ok(());
        }
        current = map.entry(part.to_string()).or_insert(Value::Null);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encodings_from_headers() {
        assert_eq!(Encoding::from_header(None), Encoding::Identity);
        assert_eq!(Encoding::from_header(Some("GZIP")), Encoding::Gzip);
        assert_eq!(Encoding::from_header(Some("deflate")), Encoding::Deflate);
        assert_eq!(Encoding::from_header(Some("br")), Encoding::Other);
        assert_eq!(Encoding::from_header(Some("gzip, br")), Encoding::Other);
        assert!(Encoding::Gzip.is_compressed() && !Encoding::Other.is_compressed());
    }

    #[test]
    fn gzip_and_deflate_round_trip() {
        for encoding in [Encoding::Gzip, Encoding::Deflate] {
            let encoded = encode(b"hello hello hello", encoding);
            assert_ne!(encoded, b"hello hello hello");
            assert_eq!(decode(&encoded, encoding, 100).unwrap(), b"hello hello hello");
        }
        // Raw deflate is accepted too.
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), Compression::default());
        raw.write_all(b"raw").unwrap();
        assert_eq!(decode(&raw.finish().unwrap(), Encoding::Deflate, 10).unwrap(), b"raw");
        assert_eq!(decode(b"plain", Encoding::Identity, 1).unwrap(), b"plain");
    }

    #[test]
    fn decoded_size_is_bounded() {
        // 10 MB of zeros compress to ~10 KB; decoding stops after limit + 1 bytes.
        let bomb = encode(&vec![0u8; 10 * 1024 * 1024], Encoding::Gzip);
        assert!(bomb.len() < 20 * 1024);
        assert_eq!(decode(&bomb, Encoding::Gzip, 1024 * 1024), Err(DecodeError::TooLarge));
        assert_eq!(decode(&encode(&[7u8; 100], Encoding::Gzip), Encoding::Gzip, 100).unwrap().len(), 100);
        assert_eq!(decode(&encode(&[7u8; 101], Encoding::Gzip), Encoding::Gzip, 100), Err(DecodeError::TooLarge));
    }

    #[test]
    fn corrupt_bodies_are_errors() {
        assert!(matches!(decode(b"not gzip", Encoding::Gzip, 100), Err(DecodeError::Corrupt(m)) if m.contains("gzip")));
        assert!(matches!(decode(b"not deflate", Encoding::Deflate, 100), Err(DecodeError::Corrupt(_))));
    }

    #[test]
    fn dotted_names_nest() {
        let mut doc = Value::Null;
        set_dotted(&mut doc, "a.b", json!("x")).unwrap();
        set_dotted(&mut doc, "a.c", json!(1)).unwrap();
        set_dotted(&mut doc, "d", json!(null)).unwrap();
        assert_eq!(doc, json!({"a": {"b": "x", "c": 1}, "d": null}));
        set_dotted(&mut doc, "d.e", json!(true)).unwrap();
        assert_eq!(doc["d"], json!({"e": true}));
        assert!(set_dotted(&mut doc, "a.b.c", json!(1)).is_err());
        let mut array = json!([1]);
        assert!(set_dotted(&mut array, "a", json!(1)).is_err());
    }
}
